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

	"github.com/containerd/containerd/v2/pkg/sys"
	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/network"
	"github.com/flotilla-project/flotilla/services/cri/runtimes"
	"github.com/flotilla-project/flotilla/services/cri/task"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandboxUserns validates a pod's user namespace request and, for mode
// POD, that the pod's runtime handler can run it (what its runtime
// reports, as Status has it): the error is the pod's answer.
func (s *Server) sandboxUserns(ctx context.Context, cfg *runtime.PodSandboxConfig, r *runtimes.Runtime) (*spec.Userns, error) {
	u, err := spec.ParseUserns(cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions())
	if err != nil || !u.Enabled() {
		return u, err
	}
	if err := s.cfg.Runtimes.UserNamespaces(ctx, s.client.IntrospectionService(), r); err != nil {
		return nil, err
	}
	return u, nil
}

// usernsPin is where a pod's user namespace is pinned.
func (s *Server) usernsPin(id string) string {
	return spec.UsernsPin(s.cfg.StateDir, id)
}

// newNetNSInUserns creates the pod's network namespace owned by a new
// user namespace with the pod's mappings, and pins both: the network at
// <netnsDir>/<name>, the user namespace at pin.
func newNetNSInUserns(netnsDir, name, pin string, u *spec.Userns) (_ string, retErr error) {
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
	err := sys.UnshareAfterEnterUserns(task.MappingString(u.UIDs), task.MappingString(u.GIDs), syscall.CLONE_NEWNET, func(pid int) error {
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
func (s *Server) newPodNetNS(id string, u *spec.Userns) (string, error) {
	name := "cni-" + id[:32]
	if !u.Enabled() {
		return network.NewNetNS(s.netnsDir(), name)
	}
	return newNetNSInUserns(s.netnsDir(), name, s.usernsPin(id), u)
}

// releasePodUserns drops the pin of a pod's user namespace, if any.
func (s *Server) releasePodUserns(id string) error {
	return unpinNamespace(s.usernsPin(id))
}
