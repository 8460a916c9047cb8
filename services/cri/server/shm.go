package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	// shmData sizes a pod's /dev/shm as containerd does: 64 MiB, what
	// Docker and the kubelet's other runtimes give.
	shmData = "mode=1777,size=65536k"
)

// sandboxShm is the tmpfs a pod's containers share as /dev/shm, so that
// POSIX shared memory works between them as the pod's shared IPC
// namespace promises. A pod in the node's IPC namespace uses the node's
// /dev/shm instead.
func (s *Server) sandboxShm(sb *store.Sandbox) string {
	if hostIPC(sb.Config) {
		return spec.DevShm
	}
	return filepath.Join(s.sandboxDir(sb.ID), "shm")
}

func hostIPC(cfg *runtime.PodSandboxConfig) bool {
	return cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc() == runtime.NamespaceMode_NODE
}

// mountSandboxShm mounts the pod's /dev/shm tmpfs; it is released with
// unmountSandboxShm when the pod stops.
func mountSandboxShm(path string) error {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("create sandbox shm: %w", err)
	}
	if err := unix.Mount("shm", path, "tmpfs", uintptr(unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV), shmData); err != nil {
		return fmt.Errorf("mount sandbox shm at %s: %w", path, err)
	}
	return nil
}

// unmountSandboxShm unmounts the pod's /dev/shm (lazily: a process of
// the pod may still be leaving); nothing mounted is not an error.
func unmountSandboxShm(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount sandbox shm %s: %w", path, err)
}
