// Package driver is what every Flotilla snapshotter driver shares: the
// snapshots.Snapshotter bookkeeping over a storage.Store, and the on-disk
// protocol that keeps the metadata and the snapshot directories consistent
// across crashes. A driver (overlay, native) supplies a Layout: how a new
// snapshot's directory is filled, where its own bytes are, how it is mounted.
//
// Directory layout under the root:
//
//	metadata.db          storage.Store
//	snapshots/<id>/      one directory per snapshot id, contents per Layout
//	snapshots/new-*      a snapshot being created, not yet in metadata.db
//	snapshots/rm-*       an orphan Cleanup is removing
//
// Crash safety follows from two orderings. A snapshot directory is filled
// under a temporary name and renamed to its id inside the write transaction
// that records it, so a crash leaves either no record (and an orphan
// directory that Cleanup or the next user of the id removes) or a record with
// a complete directory. A removal deletes the record first and the directory
// after, so a crash leaves only an orphan directory. Commit changes nothing
// on disk: it is one transaction, so a snapshot is either still active or
// committed, never in between.
package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/snapshotter/storage"
)

const (
	tempPrefix     = "new-"
	removingPrefix = "rm-"
)

// Layout is a driver's view of one snapshot directory.
type Layout interface {
	// Populate fills dir, the directory of a snapshot being created. dir
	// already exists with mode 0755. parents holds the directories of the
	// parent chain, nearest first; info carries the new snapshot's labels.
	Populate(ctx context.Context, dir string, kind snapshots.Kind, parents []string, info snapshots.Info) error
	// UsageDir is the part of a snapshot directory that holds the
	// snapshot's own bytes, walked for the usage of active snapshots.
	UsageDir(dir string) string
	// Mounts tells how to mount an active or view snapshot, given its
	// directory and those of its parent chain (nearest first).
	Mounts(dir string, kind snapshots.Kind, parents []string, info snapshots.Info) []mount.Mount
}

// Snapshotter is a snapshots.Snapshotter (and snapshots.Cleaner) over a root
// directory and a Layout.
type Snapshotter struct {
	root   string
	layout Layout
	store  *storage.Store

	// creating holds the temporary directories of creations in flight, so
	// that Cleanup removes only those a crash left behind.
	mu       sync.Mutex
	creating map[string]struct{}
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens the snapshotter rooted at root. Temporary directories of
// creations a crash interrupted are removed now: nothing can be using them.
func New(ctx context.Context, root string, layout Layout) (*Snapshotter, error) {
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root: %w", err)
	}
	spreadSubdirs(filepath.Join(root, "snapshots"))
	store, err := storage.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	s := &Snapshotter{root: root, layout: layout, store: store, creating: map[string]struct{}{}}
	entries, err := os.ReadDir(s.snapshotsDir())
	if err != nil {
		store.Close()
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			s.removeDir(ctx, filepath.Join(s.snapshotsDir(), e.Name()))
		}
	}
	return s, nil
}

func (s *Snapshotter) snapshotsDir() string { return filepath.Join(s.root, "snapshots") }

func (s *Snapshotter) dir(id string) string { return filepath.Join(s.root, "snapshots", id) }

func (s *Snapshotter) dirs(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = s.dir(id)
	}
	return out
}

func (s *Snapshotter) removeDir(ctx context.Context, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		logging.G(ctx).Warn("remove snapshot directory; Cleanup will retry", "path", dir, "error", err)
	}
}

// Stat returns the info of any snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.store.View(func(tx *storage.Tx) error {
		_, info, _, err = tx.Info(key)
		return err
	})
	return info, err
}

// Update changes the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (out snapshots.Info, err error) {
	err = s.store.Update(func(tx *storage.Tx) error {
		out, err = tx.UpdateInfo(info, fieldpaths...)
		return err
	})
	return out, err
}

// Usage measures an active snapshot now and returns what was measured at
// commit for a committed one.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.store.View(func(tx *storage.Tx) (err error) {
		id, info, usage, err = tx.Info(key)
		return err
	}); err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.layout.UsageDir(s.dir(id)))
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("measure snapshot %q: %w", key, err)
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		snap storage.Snapshot
		info snapshots.Info
	)
	if err := s.store.View(func(tx *storage.Tx) (err error) {
		if snap, err = tx.Get(key); err != nil {
			return err
		}
		_, info, _, err = tx.Info(key)
		return err
	}); err != nil {
		return nil, err
	}
	return s.layout.Mounts(s.dir(snap.ID), snap.Kind, s.dirs(snap.ParentIDs), info), nil
}

// Prepare creates an active snapshot on parent.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

// create fills the new directory outside the write transaction (a copying
// driver may take long, and every other writer would wait), then records
// the snapshot and moves the directory into place in one transaction,
// checking that the parent chain it was filled from is still the same.
func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, retErr error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	if key == "" {
		return nil, fmt.Errorf("snapshot key must not be empty: %w", errdefs.ErrInvalidArgument)
	}

	// Early checks, so that a doomed request copies nothing.
	var parentIDs []string
	if err := s.store.View(func(tx *storage.Tx) error {
		if _, _, _, err := tx.Info(key); err == nil {
			return fmt.Errorf("snapshot %q: %w", key, errdefs.ErrAlreadyExists)
		}
		if parent == "" {
			return nil
		}
		id, pinfo, _, err := tx.Info(parent)
		if err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if pinfo.Kind != snapshots.KindCommitted {
			return fmt.Errorf("parent %q is not a committed snapshot: %w", parent, errdefs.ErrInvalidArgument)
		}
		parentIDs, err = s.chainOf(tx, id, pinfo)
		return err
	}); err != nil {
		return nil, err
	}

	// Made and registered under the lock Cleanup lists the directory
	// under: otherwise it could find the new directory not yet
	// registered, take it for an orphan, and remove it while it is
	// populated (or, renamed into place, as a snapshot).
	s.mu.Lock()
	tmp, err := os.MkdirTemp(s.snapshotsDir(), tempPrefix)
	if err == nil {
		s.creating[tmp] = struct{}{}
	}
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("create snapshot directory: %w", err)
	}
	defer func() {
		s.mu.Lock()
		delete(s.creating, tmp)
		s.mu.Unlock()
		if tmp != "" {
			s.removeDir(ctx, tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	info := snapshots.Info{Name: key, Parent: parent, Kind: kind, Labels: base.Labels}
	if err := s.layout.Populate(ctx, tmp, kind, s.dirs(parentIDs), info); err != nil {
		if parent != "" {
			// A parent removed while it was being copied shows up as a
			// copy error; report it as what it is.
			if _, err2 := s.Stat(ctx, parent); errdefs.IsNotFound(err2) {
				return nil, fmt.Errorf("parent %q was removed: %w", parent, errdefs.ErrNotFound)
			}
		}
		return nil, fmt.Errorf("populate snapshot %q: %w", key, err)
	}

	var snap storage.Snapshot
	err = s.store.Update(func(tx *storage.Tx) (err error) {
		snap, err = tx.Create(kind, key, parent, base.Labels)
		if err != nil {
			return err
		}
		if !equal(snap.ParentIDs, parentIDs) {
			return fmt.Errorf("parent %q changed while snapshot %q was created: %w", parent, key, errdefs.ErrConflict)
		}
		dst := s.dir(snap.ID)
		// The id is new, so anything at dst is an orphan of a creation a
		// crash interrupted before its transaction committed.
		if err := os.RemoveAll(dst); err != nil {
			return fmt.Errorf("remove stale directory %s: %w", dst, err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return fmt.Errorf("move snapshot directory into place: %w", err)
		}
		s.mu.Lock()
		delete(s.creating, tmp)
		s.mu.Unlock()
		tmp = ""
		return nil
	})
	if err != nil {
		if tmp == "" && snap.ID != "" {
			// Renamed, but the transaction did not commit: the directory
			// belongs to no snapshot.
			s.removeDir(ctx, s.dir(snap.ID))
		}
		return nil, err
	}
	return s.layout.Mounts(s.dir(snap.ID), kind, s.dirs(snap.ParentIDs), info), nil
}

func (s *Snapshotter) chainOf(tx *storage.Tx, id string, info snapshots.Info) ([]string, error) {
	ids := []string{id}
	for info.Parent != "" {
		pid, pinfo, _, err := tx.Info(info.Parent)
		if err != nil {
			return nil, fmt.Errorf("parent chain of %q: %w", info.Name, err)
		}
		ids = append(ids, pid)
		info = pinfo
	}
	return ids, nil
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Commit makes the active snapshot key the committed snapshot name. Its
// usage is measured first, outside the write transaction.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	var (
		id   string
		info snapshots.Info
	)
	if err := s.store.View(func(tx *storage.Tx) (err error) {
		id, info, _, err = tx.Info(key)
		return err
	}); err != nil {
		return err
	}
	if info.Kind != snapshots.KindActive {
		return fmt.Errorf("snapshot %q is not active: %w", key, errdefs.ErrFailedPrecondition)
	}
	du, err := fs.DiskUsage(ctx, s.layout.UsageDir(s.dir(id)))
	if err != nil {
		return fmt.Errorf("measure snapshot %q: %w", key, err)
	}
	return s.store.Update(func(tx *storage.Tx) error {
		now, _, _, err := tx.Info(key)
		if err != nil {
			return err
		}
		if now != id {
			return fmt.Errorf("snapshot %q was replaced during commit: %w", key, errdefs.ErrConflict)
		}
		if _, err := tx.Commit(key, name, base.Parent, base.Labels, snapshots.Usage(du)); err != nil {
			return fmt.Errorf("commit %q as %q: %w", key, name, err)
		}
		return nil
	})
}

// Remove deletes a snapshot that has no children, then its directory.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var id string
	if err := s.store.Update(func(tx *storage.Tx) (err error) {
		id, _, err = tx.Remove(key)
		return err
	}); err != nil {
		return err
	}
	s.removeDir(ctx, s.dir(id))
	return nil
}

// Walk calls fn for each snapshot matching any of the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.store.View(func(tx *storage.Tx) error { return tx.Walk(ctx, fn, filters...) })
}

// Cleanup removes directories no snapshot owns: those of removals and
// creations a crash interrupted. Orphans are found and renamed out of the
// id namespace in a write transaction, so that no creation can take an
// orphan's id (a crash may have left a directory under an id the sequence
// hands out again) between the scan and the removal.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var orphans []string
	if err := s.store.Update(func(tx *storage.Tx) error {
		ids := tx.IDs()
		// Listed under the lock a creation registers its directory
		// under, so every directory listed is either registered or an
		// orphan.
		s.mu.Lock()
		defer s.mu.Unlock()
		entries, err := os.ReadDir(s.snapshotsDir())
		if err != nil {
			return err
		}
		for _, e := range entries {
			name := e.Name()
			p := filepath.Join(s.snapshotsDir(), name)
			if _, ok := ids[name]; ok {
				continue
			}
			if _, ok := s.creating[p]; ok {
				continue
			}
			if !strings.HasPrefix(name, tempPrefix) && !strings.HasPrefix(name, removingPrefix) {
				q := filepath.Join(s.snapshotsDir(), removingPrefix+name)
				// Left by a Cleanup that a crash interrupted.
				if err := os.RemoveAll(q); err != nil {
					return err
				}
				if err := os.Rename(p, q); err != nil {
					return fmt.Errorf("set orphan %s aside: %w", p, err)
				}
				p = q
			}
			orphans = append(orphans, p)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, p := range orphans {
		logging.G(ctx).Debug("removing orphan snapshot directory", "path", p)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove orphan %s: %w", p, err)
		}
	}
	return nil
}

// Close closes the metadata; closing twice is harmless.
func (s *Snapshotter) Close() error { return s.store.Close() }
