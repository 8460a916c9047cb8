package server

// User namespaces (CRI UsernsOptions), as containerd 2.4's CRI does them:
//
//   - Mode NODE, or no options: the host's user namespace, as before.
//   - Mode POD, with one UID and one GID mapping that maps the pod's root:
//     the pod's network namespace is created inside a new user namespace
//     with those mappings, which is pinned (bind-mounted) beside the
//     network namespaces so that the pause container can join it by path
//     and own its network. Every container of the pod joins the pause
//     container's user namespace (/proc/<pid>/ns/user) and carries the
//     mappings in its spec, as runc wants them.
//   - The root filesystem is the overlayfs snapshot with its lower layers
//     seen through an idmapped mount (the kernel's mount_setattr, made
//     here and dropped once the shim has mounted the overlay) and its
//     upper directory's root owned by the mapped root: the image's files
//     appear owned by root inside and are not chowned on the host.
//   - The pod's files (/etc/hosts, hostname, resolv.conf) and the
//     request's mounts that carry mappings are idmapped bind mounts,
//     which runc (1.2 or later) makes from the spec's mount mappings.
//
// Only a handler whose runc reports user namespaces and idmapped mounts
// in `runc features` (the UserNamespaces feature Status reports of it)
// can do this, on a kernel that makes idmapped mounts; a pod asking for
// mode POD on another is refused before anything is made.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/pkg/sys"
	"github.com/containerd/errdefs"
	"github.com/flotilla-project/flotilla/services/cri/network"
	"github.com/flotilla-project/flotilla/services/cri/runtimes"
	"github.com/flotilla-project/flotilla/services/cri/task"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podUserns is a pod's user namespace request, validated.
type podUserns struct {
	uids, gids []specs.LinuxIDMapping
}

// enabled says whether the pod gets a user namespace of its own.
func (u *podUserns) enabled() bool { return u != nil && len(u.uids) > 0 }

// parseUserns validates UsernsOptions as containerd does: NODE takes no
// mappings; POD needs exactly one UID and one GID mapping, each mapping
// the pod's root (container ID 0) to a non-empty host range; other modes
// are not supported. nil options mean the host's user namespace.
func parseUserns(o *runtime.UserNamespace) (*podUserns, error) {
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
	return &podUserns{uids: uids, gids: gids}, nil
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

// sandboxUserns validates a pod's user namespace request and, for mode
// POD, that the pod's runtime handler can run it (what its runtime
// reports, as Status has it): the error is the pod's answer.
func (s *Server) sandboxUserns(ctx context.Context, cfg *runtime.PodSandboxConfig, r *runtimes.Runtime) (*podUserns, error) {
	u, err := parseUserns(cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions())
	if err != nil || !u.enabled() {
		return u, err
	}
	if err := s.cfg.Runtimes.UserNamespaces(ctx, s.client.IntrospectionService(), r); err != nil {
		return nil, err
	}
	return u, nil
}

// usernsPin is where a pod's user namespace is pinned.
func (s *Server) usernsPin(id string) string {
	return filepath.Join(s.cfg.StateDir, "userns", id)
}

// newNetNSInUserns creates the pod's network namespace owned by a new
// user namespace with the pod's mappings, and pins both: the network at
// <netnsDir>/<name>, the user namespace at pin.
func newNetNSInUserns(netnsDir, name, pin string, u *podUserns) (_ string, retErr error) {
	path := filepath.Join(netnsDir, name)
	for _, p := range []string{path, pin} {
		if err := os.MkdirAll(filepath.Dir(p), 0o711); err != nil {
			return "", fmt.Errorf("create %s: %w", filepath.Dir(p), err)
		}
		f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			return "", fmt.Errorf("create namespace file: %w", err)
		}
		f.Close()
	}
	defer func() {
		if retErr != nil {
			_ = unpinNamespace(path)
			_ = unpinNamespace(pin)
		}
	}()
	err := sys.UnshareAfterEnterUserns(task.MappingString(u.uids), task.MappingString(u.gids), syscall.CLONE_NEWNET, func(pid int) error {
		for ns, dst := range map[string]string{"net": path, "user": pin} {
			if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), dst, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("pin %s namespace at %s: %w", ns, dst, err)
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("create network namespace in a user namespace: %w", err)
	}
	return path, nil
}

// unpinNamespace unmounts and removes a pinned namespace; a missing one
// is no error.
func unpinNamespace(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// newPodNetNS creates a pod's network namespace: inside the pod's user
// namespace when it has one, so that the pod owns its network.
func (s *Server) newPodNetNS(id string, u *podUserns) (string, error) {
	name := "cni-" + id[:32]
	if !u.enabled() {
		return network.NewNetNS(s.netnsDir(), name)
	}
	return newNetNSInUserns(s.netnsDir(), name, s.usernsPin(id), u)
}

// releasePodUserns drops the pin of a pod's user namespace, if any.
func (s *Server) releasePodUserns(id string) error {
	return unpinNamespace(s.usernsPin(id))
}

// usernsSandboxOpts put the pause container in the pod's user namespace:
// the pinned one when the pod has its own network, else a new one.
func (s *Server) usernsSandboxOpts(id string, cfg *runtime.PodSandboxConfig, u *podUserns) []oci.SpecOpts {
	if !u.enabled() {
		return nil
	}
	opts := []oci.SpecOpts{oci.WithUserNamespace(u.uids, u.gids), withoutForeignRlimits}
	if hostNetwork(cfg) {
		opts = append(opts, withSysBind)
	} else {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UserNamespace, Path: s.usernsPin(id)}))
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
	sb, err := parseUserns(sbOpts)
	if err != nil {
		return nil, err
	}
	ctr, err := parseUserns(ctrOpts)
	if err != nil {
		return nil, err
	}
	if !sameUserns(sb, ctr) {
		return nil, fmt.Errorf("user namespace of the container (%v) differs from its sandbox's (%v): %w", ctrOpts, sbOpts, errdefs.ErrInvalidArgument)
	}
	if !ctr.enabled() {
		return nil, nil
	}
	opts := []oci.SpecOpts{
		oci.WithUserNamespace(ctr.uids, ctr.gids),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UserNamespace, Path: fmt.Sprintf("/proc/%d/ns/user", pausePid)}),
		withoutForeignRlimits,
	}
	if hostNetwork(sbCfg) {
		opts = append(opts, withSysBind)
	}
	return opts, nil
}

func sameUserns(a, b *podUserns) bool {
	if !a.enabled() || !b.enabled() {
		return a.enabled() == b.enabled()
	}
	return a.uids[0] == b.uids[0] && a.gids[0] == b.gids[0]
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
	u, err := parseUserns(sbCfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions())
	if err != nil || !u.enabled() {
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
				m.UIDMappings, m.GIDMappings = u.uids, u.gids
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
