// Package spec builds the OCI runtime specs of the CRI's containers and
// pause containers from the CRI's requests and records, as containerd's
// CRI does: the image's config merged with the request, the pod's
// namespaces and files, security context (capabilities, devices, user,
// seccomp, AppArmor), mounts, resources, user namespaces and CDI
// devices. What it reads of the host is what a spec depends on (kernel
// features, profiles, device nodes, CDI spec files); it creates nothing
// but a missing bind mount source directory, as the kubelet's runtimes do.
package spec

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/store"
)

// Annotations containerd's CRI puts in the OCI spec; runtimes and hooks
// read them.
const (
	annContainerType      = "io.kubernetes.cri.container-type"
	annSandboxID          = "io.kubernetes.cri.sandbox-id"
	annSandboxName        = "io.kubernetes.cri.sandbox-name"
	annSandboxNamespace   = "io.kubernetes.cri.sandbox-namespace"
	annSandboxUID         = "io.kubernetes.cri.sandbox-uid"
	annSandboxLogDir      = "io.kubernetes.cri.sandbox-log-directory"
	annContainerName      = "io.kubernetes.cri.container-name"
	annImageName          = "io.kubernetes.cri.image-name"
	containerTypeSandbox  = "sandbox"
	containerTypeWorkload = "container"
)

// HostNetwork says whether a pod is in the node's network namespace.
func HostNetwork(cfg *runtime.PodSandboxConfig) bool {
	return cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtime.NamespaceMode_NODE
}

// cgroupsPath puts a container under the pod's cgroup parent (cgroupfs
// driver; the systemd driver's "slice:prefix:name" form is not done yet).
func cgroupsPath(parent, id string) string {
	if parent == "" {
		return filepath.Join("/", store.Namespace, id)
	}
	return filepath.Join(parent, id)
}

// containerArgs merges the image's entrypoint and command with the
// request's, as Kubernetes defines: command replaces the entrypoint (and
// drops the image's command), args replace the command.
func containerArgs(cfg *runtime.ContainerConfig, entrypoint, cmd []string) []string {
	command, args := cfg.GetCommand(), cfg.GetArgs()
	if len(command) == 0 {
		command = entrypoint
		if len(args) == 0 {
			args = cmd
		}
	}
	return append(append([]string(nil), command...), args...)
}

// Request is what a container's spec is made of: the CRI's request, its
// pod's record and files, its image and the image volumes mounted for it.
type Request struct {
	ID      string
	Config  *runtime.ContainerConfig
	Sandbox *store.Sandbox
	// PausePid is the pod's pause process, whose namespaces the
	// container joins.
	PausePid uint32
	// SandboxDir holds the pod's hostname, hosts and resolv.conf; Shm
	// is the pod's /dev/shm.
	SandboxDir, Shm string
	// Image is the container's image, ImageConfig its configuration
	// (entrypoint, command, user).
	Image       oci.Image
	ImageConfig ocispec.ImageConfig
	// ImageMounts are the image volumes, mounted already, by container
	// path.
	ImageMounts map[string]specs.Mount
	// RestrictOOMScoreAdj is containerd's restrict_oom_score_adj: an
	// oom_score_adj below the daemon's own is raised to it.
	RestrictOOMScoreAdj bool
}

// Container is the spec of a container as the CRI asks for it: the
// image's config merged with the request, in the pod's namespaces, with
// the pod's files, its security context, mounts and resources. CDI
// devices and the runtime's pass-through annotations are the caller's
// to add after these.
func Container(r Request) ([]oci.SpecOpts, error) {
	sb, pausePid, cfg, id := r.Sandbox, r.PausePid, r.Config, r.ID
	args := containerArgs(cfg, r.ImageConfig.Entrypoint, r.ImageConfig.Cmd)
	if len(args) == 0 {
		return nil, fmt.Errorf("container %s has no command: %w", cfg.GetMetadata().GetName(), errdefs.ErrInvalidArgument)
	}
	sbMD := sb.Config.GetMetadata()
	annotations := map[string]string{}
	for k, v := range cfg.GetAnnotations() {
		annotations[k] = v
	}
	for k, v := range map[string]string{
		annContainerType:    containerTypeWorkload,
		annContainerName:    cfg.GetMetadata().GetName(),
		annSandboxID:        sb.ID,
		annSandboxName:      sbMD.GetName(),
		annSandboxNamespace: sbMD.GetNamespace(),
		annSandboxUID:       sbMD.GetUid(),
		annImageName:        cfg.GetImage().GetImage(),
	} {
		annotations[k] = v
	}
	var env []string
	for _, kv := range cfg.GetEnvs() {
		env = append(env, kv.GetKey()+"="+string(kv.GetValue()))
	}
	opts := []oci.SpecOpts{
		oci.WithImageConfig(r.Image),
		oci.WithProcessArgs(args...),
		oci.WithEnv(env),
		oci.WithAnnotations(annotations),
		oci.WithCgroup(cgroupsPath(sb.Config.GetLinux().GetCgroupParent(), id)),
	}
	if cfg.GetWorkingDir() != "" {
		opts = append(opts, oci.WithProcessCwd(cfg.GetWorkingDir()))
	}
	if cfg.GetTty() {
		opts = append(opts, oci.WithTTY)
	}

	// Namespaces: the pod's network (by path, so that it outlives the
	// pause process), IPC and UTS joined through the pause process, PID
	// per container unless the pod or node one is asked for.
	pause := func(ns string) string { return fmt.Sprintf("/proc/%d/ns/%s", pausePid, ns) }
	if HostNetwork(sb.Config) {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostNamespace(specs.UTSNamespace))
	} else {
		opts = append(opts,
			oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: sb.NetNS}),
			oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UTSNamespace, Path: pause("uts")}))
	}
	sbNS := sb.Config.GetLinux().GetSecurityContext().GetNamespaceOptions()
	if sbNS.GetIpc() == runtime.NamespaceMode_NODE {
		opts = append(opts, oci.WithHostNamespace(specs.IPCNamespace))
	} else {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.IPCNamespace, Path: pause("ipc")}))
	}
	switch cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid() {
	case runtime.NamespaceMode_NODE:
		opts = append(opts, oci.WithHostNamespace(specs.PIDNamespace))
	case runtime.NamespaceMode_POD:
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.PIDNamespace, Path: pause("pid")}))
	}

	usernsOpts, err := usernsContainerOpts(sb.Config, cfg, pausePid)
	if err != nil {
		return nil, err
	}
	opts = append(opts, usernsOpts...)

	mounts, propagation, err := containerMounts(r)
	if err != nil {
		return nil, err
	}
	mounts = idmapContainerMounts(mounts, r.SandboxDir, cfg, sb.Config)
	if propagation != "" {
		opts = append(opts, withRootfsPropagation(propagation))
	}
	dests := make([]string, 0, len(mounts))
	for _, m := range mounts {
		dests = append(dests, m.Destination)
	}
	// The request's mounts (and the pod's files) replace the default
	// spec's mounts at the same place, /dev/shm among them.
	opts = append(opts, oci.WithoutMounts(dests...), oci.WithMounts(mounts))

	secOpts, err := securityOpts(sb, cfg, r.ImageConfig.User)
	if err != nil {
		return nil, err
	}
	opts = append(opts, secOpts...)
	if res := cfg.GetLinux().GetResources(); res != nil {
		opts = append(opts, withResources(res))
		if res.GetOomScoreAdj() != 0 {
			opts = append(opts, oomScoreAdj(int(res.GetOomScoreAdj()), r.RestrictOOMScoreAdj))
		}
	}
	return opts, nil
}

// capNames turns the CRI's capability names ("NET_ADMIN", or "ALL")
// into the OCI spec's ("CAP_NET_ADMIN").
func capNames(in []string) []string {
	var out []string
	for _, c := range in {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		out = append(out, c)
	}
	return out
}

func withRootfsPropagation(p string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		s.Linux.RootfsPropagation = p
		return nil
	}
}

// withAdditionalGIDs adds supplementary groups not listed yet.
func withAdditionalGIDs(groups []int64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		for _, g := range groups {
			if !slices.Contains(s.Process.User.AdditionalGids, uint32(g)) {
				s.Process.User.AdditionalGids = append(s.Process.User.AdditionalGids, uint32(g))
			}
		}
		return nil
	}
}
