package sandbox

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

	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/runtimes"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandboxUserns validates a pod's user namespace request and, for mode
// POD, that the pod's runtime handler can run it (what its runtime
// reports, as Status has it): the error is the pod's answer.
func (s *Service) sandboxUserns(ctx context.Context, cfg *runtime.PodSandboxConfig, r *runtimes.Runtime) (*spec.Userns, error) {
	u, err := spec.ParseUserns(cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions())
	if err != nil || !u.Enabled() {
		return u, err
	}
	if err := s.runtimes.UserNamespaces(ctx, s.client.IntrospectionService(), r); err != nil {
		return nil, err
	}
	return u, nil
}

// usernsPin is where a pod's user namespace is pinned.
func (s *Service) usernsPin(id string) string {
	return spec.UsernsPin(s.stateDir, id)
}

// newPodNetNS creates a pod's network namespace: inside the pod's user
// namespace when it has one, so that the pod owns its network.
func (s *Service) newPodNetNS(id string, u *spec.Userns) (string, error) {
	return NewNetNS(s.netnsDir(), id, s.usernsPin(id), u)
}

// releasePodUserns drops the pin of a pod's user namespace, if any.
func (s *Service) releasePodUserns(id string) error {
	return Unpin(s.usernsPin(id))
}
