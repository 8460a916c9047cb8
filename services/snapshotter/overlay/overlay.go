//go:build linux

// Package overlay is the overlayfs snapshotter driver. Each snapshot owns
// snapshots/<id>/fs (its changes: the upperdir while active, a lowerdir once
// committed) and, when active, snapshots/<id>/work (overlayfs's workdir).
// Mounts have exactly the shape containerd's overlay snapshotter returns, so
// any containerd (1.6 included) mounting them through a proxy plugin gets
// what it expects:
//
//   - no parent: a bind mount of the snapshot's own fs directory;
//   - a view of a single committed layer: a read-only bind mount of it;
//   - otherwise: type "overlay", source "overlay", options
//     workdir=,upperdir= (active only), lowerdir=<parent fs dirs, nearest
//     first>, then the driver's mount options (userxattr, index=off, and any
//     configured).
//
// Long lowerdir chains: the kernel takes mount options in one page. Like
// containerd's, this driver leaves that to the mounter: containerd's
// mount.Mount (1.6 and 2.x) changes directory to the lowerdirs' common parent
// and passes relative paths once the options near a page. Snapshot ids are
// short decimal numbers under one directory, so each layer then costs about
// eight bytes ("1234/fs:"), enough for several hundred layers — beyond the
// kernel's own limit of 500 overlay layers.
package overlay

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/userns"
	"golang.org/x/sys/unix"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/snapshotter/driver"
)

// Options configure the driver.
type Options struct {
	// MountOptions are added to every overlay mount (not to bind mounts),
	// like containerd's overlayfs mount_options. "userxattr" and "index"
	// given here replace the driver's own detection.
	MountOptions []string
}

// Snapshotter is the overlayfs driver.
type Snapshotter struct {
	*driver.Snapshotter
	options []string
}

// New opens the overlayfs snapshotter rooted at root, checking first that
// overlayfs works there and deciding which mount options the kernel needs.
func New(ctx context.Context, root string, opts Options) (*Snapshotter, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	ok, err := fs.SupportsDType(root)
	if err != nil {
		return nil, fmt.Errorf("check d_type support of %s: %w", root, err)
	}
	if !ok {
		return nil, fmt.Errorf("%s does not support d_type, which overlayfs needs (an xfs formatted without ftype=1?): use the native driver: %w", root, errdefs.ErrNotImplemented)
	}
	options := append([]string(nil), opts.MountOptions...)
	if !hasOption(options, "userxattr") && needsUserXattr(ctx, root) {
		options = append(options, "userxattr")
	}
	// index=on (some distributions' default) makes a lower layer unusable
	// by a second overlay mount whose upper is elsewhere; containerd turns
	// it off whenever the kernel knows the option. Options are last-wins, so
	// a configured index= is left alone.
	if !hasOption(options, "index") && supportsIndex() {
		options = append(options, "index=off")
	}
	if err := probe(root, options); err != nil {
		return nil, fmt.Errorf("overlayfs is not usable on %s (%w); the native driver works on any filesystem", root, err)
	}
	d, err := driver.New(ctx, root, &layout{options: options})
	if err != nil {
		return nil, err
	}
	logging.G(ctx).Info("overlayfs snapshotter ready", "root", root, "mount_options", options)
	return &Snapshotter{Snapshotter: d, options: options}, nil
}

// MountOptions are the options the driver adds to overlay mounts.
func (s *Snapshotter) MountOptions() []string { return s.options }

type layout struct {
	options []string
}

func (l *layout) UsageDir(dir string) string { return filepath.Join(dir, "fs") }

func (l *layout) Populate(ctx context.Context, dir string, kind snapshots.Kind, parents []string, info snapshots.Info) error {
	upper := filepath.Join(dir, "fs")
	if err := os.Mkdir(upper, 0o755); err != nil {
		return err
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(dir, "work"), 0o711); err != nil {
			return err
		}
	}
	// The root of the new layer takes the owner of the layer below (or the
	// mapped root of a user namespace), or the merged root would change
	// owner as soon as anything is written to it.
	uid, gid := -1, -1
	if v, ok := info.Labels[snapshots.LabelSnapshotUIDMapping]; ok {
		id, err := mappedRoot(v)
		if err != nil {
			return fmt.Errorf("label %s: %w", snapshots.LabelSnapshotUIDMapping, err)
		}
		uid = id
	}
	if v, ok := info.Labels[snapshots.LabelSnapshotGIDMapping]; ok {
		id, err := mappedRoot(v)
		if err != nil {
			return fmt.Errorf("label %s: %w", snapshots.LabelSnapshotGIDMapping, err)
		}
		gid = id
	}
	if (uid == -1 || gid == -1) && len(parents) > 0 {
		st, err := os.Stat(filepath.Join(parents[0], "fs"))
		if err != nil {
			return fmt.Errorf("stat parent: %w", err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if uid == -1 {
			uid = int(sys.Uid)
		}
		if gid == -1 {
			gid = int(sys.Gid)
		}
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(upper, uid, gid); err != nil {
			return fmt.Errorf("chown %s: %w", upper, err)
		}
	}
	return nil
}

func (l *layout) Mounts(dir string, kind snapshots.Kind, parents []string, info snapshots.Info) []mount.Mount {
	if len(parents) == 0 {
		// A single layer: overlayfs needs a lowerdir, so a bind mount.
		mode := "rw"
		if kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: filepath.Join(dir, "fs"), Options: []string{mode, "rbind"}}}
	}
	var options []string
	if kind == snapshots.KindActive {
		options = append(options,
			"workdir="+filepath.Join(dir, "work"),
			"upperdir="+filepath.Join(dir, "fs"),
		)
	} else if len(parents) == 1 {
		return []mount.Mount{{Type: "bind", Source: filepath.Join(parents[0], "fs"), Options: []string{"ro", "rbind"}}}
	}
	lower := make([]string, len(parents))
	for i, p := range parents {
		lower[i] = filepath.Join(p, "fs")
	}
	options = append(options, "lowerdir="+strings.Join(lower, ":"))
	options = append(options, l.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

// mappedRoot returns the host id that id 0 maps to in a containerd id
// mapping label ("container:host:size[,container:host:size...]").
func mappedRoot(label string) (int, error) {
	for _, r := range strings.Split(label, ",") {
		f := strings.Split(r, ":")
		if len(f) != 3 {
			return 0, fmt.Errorf("id mapping %q is not container:host:size: %w", r, errdefs.ErrInvalidArgument)
		}
		var n [3]uint64
		for i, s := range f {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return 0, fmt.Errorf("id mapping %q: %w", r, errdefs.ErrInvalidArgument)
			}
			n[i] = v
		}
		if n[0] == 0 && n[2] > 0 {
			return int(n[1]), nil
		}
	}
	return 0, fmt.Errorf("id mapping %q does not map id 0: %w", label, errdefs.ErrInvalidArgument)
}

func hasOption(options []string, key string) bool {
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}

func supportsIndex() bool {
	_, err := os.Stat("/sys/module/overlay/parameters/index")
	return err == nil
}

// needsUserXattr tells whether overlay mounts need "userxattr": in a user
// namespace the trusted.* xattrs overlayfs keeps its own state in are out of
// reach, and kernels from 5.11 can use user.* instead. tmpfs has no user.*
// xattrs (before 6.6), and a kernel that does not know the option refuses
// the probe mount.
func needsUserXattr(ctx context.Context, root string) bool {
	if !userns.RunningInUserNS() {
		return false
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		return false
	}
	if err := probe(root, []string{"userxattr"}); err != nil {
		logging.G(ctx).Debug("overlayfs does not take userxattr here", "error", err)
		return false
	}
	return true
}

// probe mounts a two-lowerdir overlay with options under root and unmounts
// it, which is what every overlay mount of this driver depends on.
func probe(root string, options []string) error {
	td, err := os.MkdirTemp(root, "overlay-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(td)
	for _, d := range []string{"lower1", "lower2", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(td, d), 0o755); err != nil {
			return err
		}
	}
	m := mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{
		"lowerdir=" + filepath.Join(td, "lower2") + ":" + filepath.Join(td, "lower1"),
		"upperdir=" + filepath.Join(td, "upper"),
		"workdir=" + filepath.Join(td, "work"),
	}, options...)}
	merged := filepath.Join(td, "merged")
	if err := m.Mount(merged); err != nil {
		return err
	}
	return mount.UnmountAll(merged, 0)
}
