package metadb

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/services/metadata/gc"
)

// fakeSnapshotter keeps snapshots in a map and counts Cleanup calls, as a
// remote snapshotter reached through containerd's proxy client would see
// them.
type fakeSnapshotter struct {
	snapshots.Snapshotter // methods the collector does not call panic

	mu       sync.Mutex
	snaps    map[string]snapshots.Info
	cleanups int
	noClean  bool
}

func newFakeSnapshotter() *fakeSnapshotter {
	return &fakeSnapshotter{snaps: map[string]snapshots.Info{}}
}

func (f *fakeSnapshotter) Prepare(_ context.Context, key, parent string, _ ...snapshots.Opt) ([]mount.Mount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snaps[key] = snapshots.Info{Name: key, Parent: parent, Kind: snapshots.KindActive}
	return nil, nil
}

func (f *fakeSnapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, _ ...string) error {
	f.mu.Lock()
	infos := make([]snapshots.Info, 0, len(f.snaps))
	for _, i := range f.snaps {
		infos = append(infos, i)
	}
	f.mu.Unlock()
	for _, i := range infos {
		if err := fn(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeSnapshotter) Remove(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.snaps, key)
	return nil
}

func (f *fakeSnapshotter) Cleanup(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noClean {
		return errdefs.ErrNotImplemented
	}
	f.cleanups++
	return nil
}

func (f *fakeSnapshotter) counts() (snaps, cleanups int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.snaps), f.cleanups
}

// waitCounts polls until the sweep, which a collection waits for only
// briefly, has got as far as want.
func (f *fakeSnapshotter) waitCounts(t *testing.T, wantSnaps, wantCleanups int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, c := f.counts()
		if s == wantSnaps && c == wantCleanups {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshotter holds %d snapshots after %d cleanups, want %d after %d", s, c, wantSnaps, wantCleanups)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// As containerd's collector, Flotilla's asks a snapshotter to clean up after
// a sweep (a remote snapshotter's directories and FUSE mounts outlive the
// snapshots removed): after its first sweep, and after each that removed a
// snapshot, not after every collection.
func TestGCCleansUpASnapshotterAfterASweepThatRemovedSomething(t *testing.T) {
	db, _ := newTestDB(t)
	remote := newFakeSnapshotter()
	db.SetSnapshotters(map[string]snapshots.Snapshotter{"remote": remote})
	ctx := nsCtx("ns1")
	sn, err := db.Snapshotter("remote")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"kept", "dropped"} {
		if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{labelGCRoot: "x"})); err != nil {
			t.Fatal(err)
		}
	}

	collect := func() {
		t.Helper()
		if _, err := db.GarbageCollect(ctx); err != nil {
			t.Fatalf("garbage collection: %v", err)
		}
	}
	collect()
	remote.waitCounts(t, 2, 1) // the first sweep finds what a crash left
	collect()
	remote.waitCounts(t, 2, 1) // nothing removed: no cleanup
	if err := sn.Remove(ctx, "dropped"); err != nil {
		t.Fatal(err)
	}
	collect()
	remote.waitCounts(t, 1, 2)
}

func TestGCTakesNotImplementedCleanupAsNoFailure(t *testing.T) {
	db, _ := newTestDB(t)
	remote := newFakeSnapshotter()
	remote.noClean = true
	db.SetSnapshotters(map[string]snapshots.Snapshotter{"remote": remote})
	ctx := nsCtx("ns1")
	sn, _ := db.Snapshotter("remote")
	if _, err := sn.Prepare(ctx, "dropped", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "dropped"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatalf("garbage collection with a snapshotter without Cleanup: %v", err)
	}
	remote.waitCounts(t, 0, 0)
}

// slowSnapshotter's Remove waits until release is closed, as the removal of
// a large layer's directory takes its time.
type slowSnapshotter struct {
	*fakeSnapshotter
	release chan struct{}
}

func (s *slowSnapshotter) Remove(ctx context.Context, key string) error {
	<-s.release
	return s.fakeSnapshotter.Remove(ctx, key)
}

// A removal whose caller waits for the collection (images.SynchronousDelete,
// as the CRI's RemoveImage and ctr's rmi --sync ask) returns once the
// snapshotters' sweeps have removed what it freed, as containerd's does: not
// after the short wait a background collection gives them, which left a
// sweep holding the snapshotter's lock (and its disk) into the caller's next
// pull. A background collection still returns after that short wait.
func TestSynchronousGCWaitsForTheSnapshotterSweep(t *testing.T) {
	defer func(w time.Duration) { sweepWait = w }(sweepWait)
	sweepWait = 20 * time.Millisecond
	db, _ := newTestDB(t)
	remote := &slowSnapshotter{fakeSnapshotter: newFakeSnapshotter(), release: make(chan struct{})}
	db.SetSnapshotters(map[string]snapshots.Snapshotter{"remote": remote})
	ctx := nsCtx("ns1")
	sn, err := db.Snapshotter("remote")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"a", "b"} {
		if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{labelGCRoot: "x"})); err != nil {
			t.Fatal(err)
		}
	}
	sched := gc.NewScheduler(ctx, func(ctx context.Context) error {
		_, err := db.GarbageCollect(ctx)
		return err
	}, time.Hour)

	// A background collection: its sweep of "a" waits on Remove, and
	// the collection returns without it.
	if err := sn.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := sched.RunNow(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := remote.counts(); n != 2 {
		t.Fatalf("snapshotter holds %d snapshots while its sweep is held up, want 2", n)
	}

	// A synchronous one, with that sweep still running: it waits for it
	// and sweeps "b" too before it returns.
	if err := sn.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sched.Trigger(true); close(done) }()
	select {
	case <-done:
		t.Fatal("synchronous collection returned while the snapshotter's sweep was still removing")
	case <-time.After(20 * sweepWait):
	}
	close(remote.release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("synchronous collection did not return after the sweep ended")
	}
	if n, _ := remote.counts(); n != 0 {
		t.Fatalf("snapshotter holds %d snapshots after a synchronous collection, want 0", n)
	}
}
