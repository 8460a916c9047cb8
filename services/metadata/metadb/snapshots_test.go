package metadb

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// rebaseSnapshotter keeps snapshots in a map: what the namespaced
// snapshotter asks of a snapshotter process, recorded.
type rebaseSnapshotter struct {
	mu    sync.Mutex
	snaps map[string]snapshots.Info
}

func newRebaseSnapshotter() *rebaseSnapshotter {
	return &rebaseSnapshotter{snaps: map[string]snapshots.Info{}}
}

func (f *rebaseSnapshotter) Stat(_ context.Context, key string) (snapshots.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.snaps[key]
	if !ok {
		return snapshots.Info{}, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	return i, nil
}

func (f *rebaseSnapshotter) Update(_ context.Context, info snapshots.Info, _ ...string) (snapshots.Info, error) {
	return info, nil
}

func (f *rebaseSnapshotter) Usage(context.Context, string) (snapshots.Usage, error) {
	return snapshots.Usage{}, nil
}

func (f *rebaseSnapshotter) Mounts(_ context.Context, key string) ([]mount.Mount, error) {
	return []mount.Mount{{Type: "bind", Source: "/" + key}}, nil
}

func (f *rebaseSnapshotter) create(kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.snaps[key]; ok {
		return nil, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrAlreadyExists)
	}
	if p, ok := f.snaps[parent]; parent != "" && (!ok || p.Kind != snapshots.KindCommitted) {
		return nil, fmt.Errorf("parent %q: %w", parent, errdefs.ErrNotFound)
	}
	f.snaps[key] = snapshots.Info{Name: key, Parent: parent, Kind: kind, Labels: base.Labels}
	return []mount.Mount{{Type: "bind", Source: "/" + key}}, nil
}

func (f *rebaseSnapshotter) Prepare(_ context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return f.create(snapshots.KindActive, key, parent, opts)
}

func (f *rebaseSnapshotter) View(_ context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return f.create(snapshots.KindView, key, parent, opts)
}

func (f *rebaseSnapshotter) Commit(_ context.Context, name, key string, opts ...snapshots.Opt) error {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.snaps[key]
	if !ok {
		return fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	if base.Parent != "" {
		if a.Parent != "" && a.Parent != base.Parent {
			return fmt.Errorf("changing the parent: %w", errdefs.ErrInvalidArgument)
		}
		a.Parent = base.Parent
	}
	delete(f.snaps, key)
	f.snaps[name] = snapshots.Info{Name: name, Parent: a.Parent, Kind: snapshots.KindCommitted, Labels: base.Labels}
	return nil
}

func (f *rebaseSnapshotter) Remove(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.snaps, key)
	return nil
}

func (f *rebaseSnapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, _ ...string) error {
	f.mu.Lock()
	all := make([]snapshots.Info, 0, len(f.snaps))
	for _, i := range f.snaps {
		all = append(all, i)
	}
	f.mu.Unlock()
	for _, i := range all {
		if err := fn(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

func (f *rebaseSnapshotter) Close() error { return nil }

// A layer unpacked without its parent (in parallel with the layers below
// it) is given its parent when committed: the namespace sees the chain,
// and the snapshotter process is told the parent's key of its own.
func TestCommitWithAParentRebasesASnapshotPreparedWithout(t *testing.T) {
	db, _ := newTestDB(t)
	backend := newRebaseSnapshotter()
	db.SetSnapshotters(map[string]snapshots.Snapshotter{"fake": backend})
	sn, err := db.Snapshotter("fake")
	if err != nil {
		t.Fatal(err)
	}
	ctx := nsCtx("rebase")
	if _, err := sn.Prepare(ctx, "base-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "top-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "top", "top-active", snapshots.WithParent("base")); err != nil {
		t.Fatalf("commit with a parent: %v", err)
	}
	info, err := sn.Stat(ctx, "top")
	if err != nil || info.Parent != "base" {
		t.Fatalf("top after its commit: parent %q, %v; want base", info.Parent, err)
	}
	if err := sn.Remove(ctx, "base"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("remove of the new parent: %v; want FailedPrecondition (it has a child)", err)
	}
	// The snapshotter process got the parent's own key.
	var topParent, baseKey string
	_ = backend.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		switch {
		case i.Parent != "":
			topParent = i.Parent
		default:
			baseKey = i.Name
		}
		return nil
	})
	if topParent == "" || topParent != baseKey {
		t.Errorf("snapshotter process has top's parent %q; want base's key %q", topParent, baseKey)
	}
}

func TestCommitWithAParentRefusesToChangeOneOrToUseAnUncommitted(t *testing.T) {
	db, _ := newTestDB(t)
	db.SetSnapshotters(map[string]snapshots.Snapshotter{"fake": newRebaseSnapshotter()})
	sn, _ := db.Snapshotter("fake")
	ctx := nsCtx("rebase")
	for _, k := range []string{"a", "b"} {
		if _, err := sn.Prepare(ctx, k+"-active", ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, k, k+"-active"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sn.Prepare(ctx, "child", "a"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "c", "child", snapshots.WithParent("b")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("commit onto another parent than its own: %v; want InvalidArgument", err)
	}
	if err := sn.Commit(ctx, "c", "child", snapshots.WithParent("a")); err != nil {
		t.Errorf("commit naming its own parent: %v", err)
	}
	if _, err := sn.Prepare(ctx, "loose", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "active-parent", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "x", "loose", snapshots.WithParent("nope")); !errdefs.IsNotFound(err) {
		t.Errorf("commit onto a parent that is not there: %v; want NotFound", err)
	}
	if err := sn.Commit(ctx, "x", "loose", snapshots.WithParent("active-parent")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("commit onto an active snapshot: %v; want InvalidArgument", err)
	}
}
