package spec

import (
	"context"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandboxOOMScoreAdj keeps the pause container alive under memory
// pressure, as containerd's CRI does.
const sandboxOOMScoreAdj = -998

// SandboxRequest is what a pause container's spec is made of: the pod's
// config and what was made for it before its container.
type SandboxRequest struct {
	ID     string
	Config *runtime.PodSandboxConfig
	// NetNS is the pod's network namespace (none with the node's
	// network); Hostname the pod's hostname; Shm its /dev/shm.
	NetNS, Hostname, Shm string
	// Image is the pause image.
	Image oci.Image
	// Userns is the pod's user namespace, pinned at UsernsPin.
	Userns    *Userns
	UsernsPin string
	// RestrictOOMScoreAdj is containerd's restrict_oom_score_adj: an
	// oom_score_adj below the daemon's own is raised to it.
	RestrictOOMScoreAdj bool
}

// Sandbox is the spec of a pod's pause container, which holds the pod's
// namespaces: the pod's network, hostname, IPC and PID modes, sysctls,
// user namespace and seccomp profile, and /dev/shm read-only. The
// runtime's pass-through annotations are the caller's to add.
func Sandbox(r SandboxRequest) ([]oci.SpecOpts, error) {
	id, cfg, md := r.ID, r.Config, r.Config.GetMetadata()
	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(r.Image),
		oci.WithAnnotations(map[string]string{
			annContainerType:    containerTypeSandbox,
			annSandboxID:        id,
			annSandboxName:      md.GetName(),
			annSandboxNamespace: md.GetNamespace(),
			annSandboxUID:       md.GetUid(),
			annSandboxLogDir:    cfg.GetLogDirectory(),
		}),
		oci.WithCgroup(cgroupsPath(cfg.GetLinux().GetCgroupParent(), id)),
		oomScoreAdj(sandboxOOMScoreAdj, r.RestrictOOMScoreAdj),
		withShm(r.Shm, true),
	}
	if HostNetwork(cfg) {
		specOpts = append(specOpts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostNamespace(specs.UTSNamespace))
	} else {
		specOpts = append(specOpts,
			oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: r.NetNS}),
			oci.WithHostname(r.Hostname))
	}
	nsOpts := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	if nsOpts.GetPid() == runtime.NamespaceMode_NODE {
		specOpts = append(specOpts, oci.WithHostNamespace(specs.PIDNamespace))
	}
	if nsOpts.GetIpc() == runtime.NamespaceMode_NODE {
		specOpts = append(specOpts, oci.WithHostNamespace(specs.IPCNamespace))
	}
	if sysctls := cfg.GetLinux().GetSysctls(); len(sysctls) > 0 {
		specOpts = append(specOpts, withSysctls(sysctls))
	}
	specOpts = append(specOpts, usernsSandboxOpts(r.UsernsPin, cfg, r.Userns)...)
	seccomp, err := sandboxSeccompOpt(cfg.GetLinux().GetSecurityContext())
	if err != nil {
		return nil, err
	}
	if seccomp != nil {
		specOpts = append(specOpts, seccomp)
	}

	return specOpts, nil
}

// withSysctls sets the pod's namespaced kernel parameters.
func withSysctls(sysctls map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		for k, v := range sysctls {
			s.Linux.Sysctl[k] = v
		}
		return nil
	}
}

// withShm replaces the default /dev/shm mount with a bind of src.
func withShm(src string, readonly bool) oci.SpecOpts {
	opts := []string{"rbind", "rprivate", "nosuid", "nodev", "noexec"}
	if readonly {
		opts = append(opts, "ro")
	} else {
		opts = append(opts, "rw")
	}
	return oci.Compose(
		oci.WithoutMounts(DevShm),
		oci.WithMounts([]specs.Mount{{Destination: DevShm, Type: "bind", Source: src, Options: opts}}),
	)
}
