// Package native is the copy-based snapshotter driver: an active snapshot is
// a full copy of its parent in snapshots/<id>, mounted with a bind mount. It
// needs nothing of the filesystem beyond what a copy needs, so it works
// where overlayfs does not (overlay-on-overlay, some network filesystems).
// Mounts have the shape containerd's native snapshotter returns: a bind
// mount ("rbind" plus "rw" or "ro") of the snapshot's directory, or of the
// parent's for a view, which needs no copy.
package native

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/fs"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/snapshotter/driver"
)

// New opens the native snapshotter rooted at root.
func New(ctx context.Context, root string) (*driver.Snapshotter, error) {
	return driver.New(ctx, root, &layout{})
}

type layout struct{}

func (l *layout) UsageDir(dir string) string { return dir }

func (l *layout) Populate(ctx context.Context, dir string, kind snapshots.Kind, parents []string, info snapshots.Info) error {
	if kind != snapshots.KindActive || len(parents) == 0 {
		return nil
	}
	// Xattrs the filesystem under the root cannot hold (security.* on
	// some, trusted.* without privilege) must not make the copy fail, as
	// they do not in containerd's native snapshotter either.
	skipXattr := func(dst, src, key string, err error) error {
		logging.G(ctx).Debug("xattr not copied", "path", dst, "xattr", key, "error", err)
		return nil
	}
	if err := fs.CopyDir(dir, parents[0], fs.WithXAttrErrorHandler(skipXattr)); err != nil {
		return fmt.Errorf("copy parent: %w", err)
	}
	return nil
}

func (l *layout) Mounts(dir string, kind snapshots.Kind, parents []string, info snapshots.Info) []mount.Mount {
	mode, source := "rw", dir
	if kind == snapshots.KindView {
		mode = "ro"
		if len(parents) > 0 {
			source = parents[0]
		}
	}
	return []mount.Mount{{Type: "bind", Source: source, Options: []string{"rbind", mode}}}
}
