package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/container/spec"
)

const (
	// shmData sizes a pod's /dev/shm as containerd does: 64 MiB, what
	// Docker and the kubelet's other runtimes give.
	shmData = "mode=1777,size=65536k"
)

// ShmPath is the tmpfs a pod's containers share as /dev/shm, so that
// POSIX shared memory works between them as the pod's shared IPC
// namespace promises: shm in the pod's directory dir. A pod in the
// node's IPC namespace uses the node's /dev/shm instead.
func ShmPath(dir string, cfg *runtime.PodSandboxConfig) string {
	if HostIPC(cfg) {
		return spec.DevShm
	}
	return filepath.Join(dir, "shm")
}

// HostIPC says whether a pod is in the node's IPC namespace.
func HostIPC(cfg *runtime.PodSandboxConfig) bool {
	return cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc() == runtime.NamespaceMode_NODE
}

// MountShm mounts the pod's /dev/shm tmpfs at path; it is released with
// UnmountShm when the pod stops.
func MountShm(path string) error {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("create sandbox shm: %w", err)
	}
	if err := unix.Mount("shm", path, "tmpfs", uintptr(unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV), shmData); err != nil {
		return fmt.Errorf("mount sandbox shm at %s: %w", path, err)
	}
	return nil
}

// UnmountShm unmounts the pod's /dev/shm (lazily: a process of
// the pod may still be leaving); nothing mounted is not an error.
func UnmountShm(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount sandbox shm %s: %w", path, err)
}
