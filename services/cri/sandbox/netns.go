package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/pkg/sys"
	"golang.org/x/sys/unix"

	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/network"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// NewNetNS creates a pod's network namespace under netnsDir: inside the
// pod's user namespace u when it has one, so that the pod owns its
// network, that user namespace pinned at pin.
func NewNetNS(netnsDir, id, pin string, u *spec.Userns) (string, error) {
	name := "cni-" + id[:32]
	if !u.Enabled() {
		return network.NewNetNS(netnsDir, name)
	}
	return newNetNSInUserns(netnsDir, name, pin, u)
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
			_ = Unpin(path)
			_ = Unpin(pin)
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

// Unpin unmounts and removes a pinned namespace; a missing one
// is no error.
func Unpin(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}
