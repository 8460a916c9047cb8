package task

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// idmapRootfs makes a task's rootfs mounts fit its user namespace, when
// its spec has one with mappings: an overlay's lower layers are replaced
// by an idmapped read-only mount of their common parent under dir, and
// the upper directory's root (a bind mount's source, for an image without
// layers) is owned by the mapped root. done drops the idmapped mount; it
// is called once the shim has mounted the overlay, which keeps its own
// reference to the layers.
func idmapRootfs(dir string, spec *specs.Spec, mounts []mount.Mount) (_ []mount.Mount, done func(), retErr error) {
	done = func() {}
	if spec == nil || spec.Linux == nil || len(spec.Linux.UIDMappings) == 0 || len(spec.Linux.GIDMappings) == 0 || len(mounts) != 1 {
		return mounts, done, nil
	}
	hasUserns := false
	for _, ns := range spec.Linux.Namespaces {
		hasUserns = hasUserns || ns.Type == specs.UserNamespace
	}
	if !hasUserns {
		return mounts, done, nil
	}
	uid, gid, err := rootPair(spec.Linux.UIDMappings, spec.Linux.GIDMappings)
	if err != nil {
		return nil, nil, err
	}
	m := mounts[0]
	m.Options = append([]string(nil), m.Options...) // the caller's are shared
	switch m.Type {
	case "bind":
		if err := os.Lchown(m.Source, uid, gid); err != nil {
			return nil, nil, fmt.Errorf("own rootfs %s by the pod's root: %w", m.Source, err)
		}
		return []mount.Mount{m}, done, nil
	case "overlay":
	default:
		return nil, nil, fmt.Errorf("rootfs mount of type %s cannot be shifted to a user namespace: %w", m.Type, errdefs.ErrNotImplemented)
	}
	lowerIdx, lowers := -1, []string(nil)
	for i, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lowerIdx, lowers = i, strings.Split(v, ":")
		} else if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			// New files in the upper directory belong to whoever makes
			// them; its root must be the pod's root's.
			if err := os.Lchown(v, uid, gid); err != nil {
				return nil, nil, fmt.Errorf("own rootfs upper directory by the pod's root: %w", err)
			}
		}
	}
	if lowerIdx < 0 {
		return nil, nil, fmt.Errorf("overlay rootfs without lower directories: %w", errdefs.ErrInvalidArgument)
	}
	common := filepath.Dir(lowers[0])
	for _, l := range lowers {
		for !strings.HasPrefix(l, common+"/") && common != "/" {
			common = filepath.Dir(common)
		}
	}
	usernsFd, err := mount.GetUsernsFD(MappingString(spec.Linux.UIDMappings), MappingString(spec.Linux.GIDMappings))
	if err != nil {
		return nil, nil, fmt.Errorf("user namespace for the idmapped rootfs: %w", err)
	}
	defer usernsFd.Close()
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("idmapped layers' mount point: %w", err)
	}
	if err := mount.IDMapMountWithAttrs(common, dir, int(usernsFd.Fd()), unix.MOUNT_ATTR_RDONLY, 0); err != nil {
		_ = os.Remove(dir)
		return nil, nil, fmt.Errorf("idmapped mount of the image's layers: %w", err)
	}
	for i, l := range lowers {
		lowers[i] = filepath.Join(dir, strings.TrimPrefix(l, common))
	}
	m.Options[lowerIdx] = "lowerdir=" + strings.Join(lowers, ":")
	return []mount.Mount{m}, func() {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		_ = os.Remove(dir)
	}, nil
}

// rootPair is the host UID and GID of the container's root.
func rootPair(uids, gids []specs.LinuxIDMapping) (int, int, error) {
	find := func(ms []specs.LinuxIDMapping) (int, bool) {
		for _, m := range ms {
			if m.ContainerID == 0 && m.Size > 0 {
				return int(m.HostID), true
			}
		}
		return 0, false
	}
	uid, ok1 := find(uids)
	gid, ok2 := find(gids)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("the user namespace maps no root (container ID 0): %w", errdefs.ErrInvalidArgument)
	}
	return uid, gid, nil
}

// MappingString is a mapping as "container:host:size[,...]".
func MappingString(m []specs.LinuxIDMapping) string {
	parts := make([]string, 0, len(m))
	for _, x := range m {
		parts = append(parts, fmt.Sprintf("%d:%d:%d", x.ContainerID, x.HostID, x.Size))
	}
	return strings.Join(parts, ",")
}

// KernelIDMapSupported says whether the kernel can make idmapped mounts,
// tried once.
var KernelIDMapSupported = sync.OnceValue(probeKernelIDMap)

// probeKernelIDMap tries an idmapped clone of a directory of this
// process's own (never attached anywhere).
func probeKernelIDMap() error {
	dir, err := os.MkdirTemp("", "flotilla-idmap-probe")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	fd, err := unix.OpenTree(-int(unix.EBADF), dir, uint(unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC))
	if err != nil {
		return fmt.Errorf("open_tree: %w", err)
	}
	defer unix.Close(fd)
	userns, err := mount.GetUsernsFD("0:"+strconv.Itoa(1<<20)+":65536", "0:"+strconv.Itoa(1<<20)+":65536")
	if err != nil {
		return err
	}
	defer userns.Close()
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("mount_setattr: %w", err)
	}
	return nil
}
