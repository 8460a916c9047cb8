package spec

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Userns is a pod's user namespace request, validated.
type Userns struct {
	UIDs, GIDs []specs.LinuxIDMapping
}

// Enabled says whether the pod gets a user namespace of its own.
func (u *Userns) Enabled() bool { return u != nil && len(u.UIDs) > 0 }

// ParseUserns validates UsernsOptions as containerd does: NODE takes no
// mappings; POD needs exactly one UID and one GID mapping, each mapping
// the pod's root (container ID 0) to a non-empty host range; other modes
// are not supported. nil options mean the host's user namespace.
func ParseUserns(o *runtime.UserNamespace) (*Userns, error) {
	if o == nil {
		return nil, nil
	}
	switch o.GetMode() {
	case runtime.NamespaceMode_NODE:
		if len(o.GetUids()) != 0 || len(o.GetGids()) != 0 {
			return nil, fmt.Errorf("user namespace mode NODE takes no mappings, got %d UID and %d GID mappings: %w",
				len(o.GetUids()), len(o.GetGids()), errdefs.ErrInvalidArgument)
		}
		return nil, nil
	case runtime.NamespaceMode_POD:
	default:
		return nil, fmt.Errorf("user namespace mode %s is not supported (only NODE and POD): %w", o.GetMode(), errdefs.ErrInvalidArgument)
	}
	uids, err := parseIDMapping("UID", o.GetUids())
	if err != nil {
		return nil, err
	}
	gids, err := parseIDMapping("GID", o.GetGids())
	if err != nil {
		return nil, err
	}
	return &Userns{UIDs: uids, GIDs: gids}, nil
}

func parseIDMapping(kind string, in []*runtime.IDMapping) ([]specs.LinuxIDMapping, error) {
	if len(in) != 1 || in[0] == nil {
		return nil, fmt.Errorf("user namespace mode POD needs exactly one %s mapping, got %d: %w", kind, len(in), errdefs.ErrInvalidArgument)
	}
	m := in[0]
	if m.GetLength() == 0 {
		return nil, fmt.Errorf("%s mapping of length 0: %w", kind, errdefs.ErrInvalidArgument)
	}
	// The pod's root must be someone: the rootfs and the pod's files
	// are shifted to the host ID of container ID 0.
	if m.GetContainerId() != 0 {
		return nil, fmt.Errorf("%s mapping must map container ID 0 (the pod's root), it starts at %d: %w", kind, m.GetContainerId(), errdefs.ErrInvalidArgument)
	}
	if uint64(m.GetHostId())+uint64(m.GetLength()) > 1<<32-1 {
		return nil, fmt.Errorf("%s mapping %d+%d is beyond the ID range: %w", kind, m.GetHostId(), m.GetLength(), errdefs.ErrInvalidArgument)
	}
	return []specs.LinuxIDMapping{{ContainerID: m.GetContainerId(), HostID: m.GetHostId(), Size: m.GetLength()}}, nil
}

// UsernsPin is where a pod's user namespace is pinned, under the
// service's state directory.
func UsernsPin(stateDir, id string) string {
	return filepath.Join(stateDir, "userns", id)
}

// usernsSandboxOpts puts the pause container in the pod's user namespace:
// the one pinned at pin when the pod has its own network, else a new one.
func usernsSandboxOpts(pin string, cfg *runtime.PodSandboxConfig, u *Userns) []oci.SpecOpts {
	if !u.Enabled() {
		return nil
	}
	opts := []oci.SpecOpts{oci.WithUserNamespace(u.UIDs, u.GIDs), withoutForeignRlimits}
	if HostNetwork(cfg) {
		opts = append(opts, withSysBind)
	} else {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UserNamespace, Path: pin}))
	}
	return opts
}

// usernsContainerOpts put a container in its pod's user namespace, and
// check that it asks for the pod's: containerd refuses a container whose
// user namespace request differs from its pod's.
func usernsContainerOpts(sbCfg *runtime.PodSandboxConfig, cfg *runtime.ContainerConfig, pausePid uint32) ([]oci.SpecOpts, error) {
	sbOpts := sbCfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	ctrOpts := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	if ctrOpts == nil {
		// The pod's, as a container that says nothing of it is in
		// the pod's namespaces.
		ctrOpts = sbOpts
	}
	sb, err := ParseUserns(sbOpts)
	if err != nil {
		return nil, err
	}
	ctr, err := ParseUserns(ctrOpts)
	if err != nil {
		return nil, err
	}
	if !sameUserns(sb, ctr) {
		return nil, fmt.Errorf("user namespace of the container (%v) differs from its sandbox's (%v): %w", ctrOpts, sbOpts, errdefs.ErrInvalidArgument)
	}
	if !ctr.Enabled() {
		return nil, nil
	}
	opts := []oci.SpecOpts{
		oci.WithUserNamespace(ctr.UIDs, ctr.GIDs),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UserNamespace, Path: fmt.Sprintf("/proc/%d/ns/user", pausePid)}),
		withoutForeignRlimits,
	}
	if HostNetwork(sbCfg) {
		opts = append(opts, withSysBind)
	}
	return opts, nil
}

func sameUserns(a, b *Userns) bool {
	if !a.Enabled() || !b.Enabled() {
		return a.Enabled() == b.Enabled()
	}
	return a.UIDs[0] == b.UIDs[0] && a.GIDs[0] == b.GIDs[0]
}

// withoutForeignRlimits drops the spec's rlimits when this process lacks
// CAP_SYS_RESOURCE (a host that withholds it from root): runc sets them
// from outside on the container's first process, which in a joined user
// namespace runs as another host user, and prlimit on another user's
// process needs that capability. The process keeps the shim's limits,
// as a lowered oom_score_adj is raised to the daemon's own.
func withoutForeignRlimits(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Process != nil && !hasCapSysResource() {
		s.Process.Rlimits = nil
	}
	return nil
}

// withSysBind binds the host's /sys read-only instead of mounting sysfs,
// which a user namespace that does not own the network namespace (the
// host's) may not do.
func withSysBind(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
	return oci.Compose(
		oci.WithoutMounts("/sys"),
		oci.WithMounts([]specs.Mount{{Source: "/sys", Destination: "/sys", Type: "bind", Options: []string{"rbind", "rro", "nosuid", "nodev", "noexec"}}}),
	)(ctx, c, ctr, s)
}

// idmapContainerMounts gives a container's bind mounts their ID
// mappings when its pod has a user namespace: the pod's files (under the
// sandbox's directory) get the pod's, a request's mount those the
// request names (the kubelet sets them on volumes), as in containerd.
func idmapContainerMounts(mounts []specs.Mount, sandboxDir string, cfg *runtime.ContainerConfig, sbCfg *runtime.PodSandboxConfig) []specs.Mount {
	u, err := ParseUserns(sbCfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions())
	if err != nil || !u.Enabled() {
		return mounts
	}
	byPath := map[string]*runtime.Mount{}
	for _, m := range cfg.GetMounts() {
		byPath[filepath.Clean(m.GetContainerPath())] = m
	}
	out := make([]specs.Mount, 0, len(mounts))
	for _, m := range mounts {
		if m.Type == "bind" {
			if req, ok := byPath[filepath.Clean(m.Destination)]; ok {
				if len(req.GetUidMappings()) > 0 && len(req.GetGidMappings()) > 0 {
					m.UIDMappings, m.GIDMappings = specMappings(req.GetUidMappings()), specMappings(req.GetGidMappings())
				}
			} else if filepath.Dir(m.Source) == sandboxDir && filepath.Base(m.Source) != "shm" {
				m.UIDMappings, m.GIDMappings = u.UIDs, u.GIDs
			}
		}
		out = append(out, m)
	}
	return out
}

func specMappings(in []*runtime.IDMapping) []specs.LinuxIDMapping {
	out := make([]specs.LinuxIDMapping, 0, len(in))
	for _, m := range in {
		out = append(out, specs.LinuxIDMapping{ContainerID: m.GetContainerId(), HostID: m.GetHostId(), Size: m.GetLength()})
	}
	return out
}
