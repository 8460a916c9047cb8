package spec

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/runtimes"
)

// DevShm is where a container's shared memory is mounted.
const DevShm = "/dev/shm"

// containerMounts are the pod's files (unless the request mounts its own
// over them) and the request's mounts, and the propagation the root mount
// needs for theirs to work: rshared for a bidirectional mount, else
// rslave for a host-to-container one, as in containerd. Image volumes
// come mounted already (r.ImageMounts, by container path).
func containerMounts(r Request) ([]specs.Mount, string, error) {
	cfg, imageMounts := r.Config, r.ImageMounts
	taken := map[string]bool{}
	var out []specs.Mount
	var propagation string
	for _, m := range cfg.GetMounts() {
		if m.GetImage().GetImage() != "" {
			im, ok := imageMounts[m.GetContainerPath()]
			if !ok {
				return nil, "", fmt.Errorf("image volume %s at %s is not mounted: %w", m.GetImage().GetImage(), m.GetContainerPath(), errdefs.ErrFailedPrecondition)
			}
			out = append(out, im)
			taken[filepath.Clean(m.GetContainerPath())] = true
			continue
		}
		if m.GetContainerPath() == "" || m.GetHostPath() == "" {
			return nil, "", fmt.Errorf("mount needs a host and a container path: %w", errdefs.ErrInvalidArgument)
		}
		src := m.GetHostPath()
		// A missing host path is created as a directory, as the
		// kubelet's runtimes do.
		if _, err := os.Stat(src); os.IsNotExist(err) {
			if err := os.MkdirAll(src, 0o755); err != nil {
				return nil, "", fmt.Errorf("create mount source %s: %w", src, err)
			}
		}
		opts := []string{"rbind"}
		switch m.GetPropagation() {
		case runtime.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			opts = append(opts, "rshared")
			propagation = "rshared"
		case runtime.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			opts = append(opts, "rslave")
			if propagation == "" {
				propagation = "rslave"
			}
		default:
			opts = append(opts, "rprivate")
		}
		switch {
		case m.GetRecursiveReadOnly():
			// Read-only all the way down, submounts too (runc's rro,
			// mount_setattr on Linux 5.12+); only meaningful, and only
			// allowed, for a read-only private mount.
			if !m.GetReadonly() || m.GetPropagation() != runtime.MountPropagation_PROPAGATION_PRIVATE {
				return nil, "", fmt.Errorf("recursive read-only mount %s needs readonly and private propagation: %w", m.GetContainerPath(), errdefs.ErrInvalidArgument)
			}
			if !runtimes.RecursiveReadOnlySupported() {
				return nil, "", fmt.Errorf("recursive read-only mount %s: the kernel is older than 5.12: %w", m.GetContainerPath(), errdefs.ErrNotImplemented)
			}
			opts = append(opts, "rro")
		case m.GetReadonly():
			opts = append(opts, "ro")
		default:
			opts = append(opts, "rw")
		}
		out = append(out, specs.Mount{Destination: m.GetContainerPath(), Source: src, Type: "bind", Options: opts})
		taken[filepath.Clean(m.GetContainerPath())] = true
	}
	// The pod's /dev/shm, shared by its containers; a pod made before
	// pods had one keeps the container's own.
	if shm := r.Shm; !taken[DevShm] {
		if _, err := os.Stat(shm); err == nil {
			out = append(out, specs.Mount{Destination: DevShm, Type: "bind", Source: shm,
				Options: []string{"rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"}})
		}
	}
	dir := r.SandboxDir
	for _, f := range []string{"hostname", "hosts", "resolv.conf"} {
		dst := "/etc/" + f
		if taken[dst] {
			continue
		}
		opt := "rw"
		if cfg.GetLinux().GetSecurityContext().GetReadonlyRootfs() {
			opt = "ro"
		}
		out = append(out, specs.Mount{Destination: dst, Source: filepath.Join(dir, f), Type: "bind", Options: []string{"rbind", "rprivate", opt}})
	}
	return out, propagation, nil
}
