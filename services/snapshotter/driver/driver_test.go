package driver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/services/snapshotter/driver"
	"github.com/flotilla-project/flotilla/services/snapshotter/native"
)

// These tests use the native layout: it needs no privilege.

func open(t *testing.T, root string) *driver.Snapshotter {
	t.Helper()
	s, err := native.New(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// TestStaleDirectoryOfUncommittedCreationIsReplaced recreates what a crash
// between moving a new snapshot's directory into place and committing its
// record leaves: a directory under the id the sequence hands out next.
func TestStaleDirectoryOfUncommittedCreationIsReplaced(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	if _, err := s.Prepare(ctx, "first", ""); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "snapshots", "2", "stale"), "from before the crash")

	m, err := s.Prepare(ctx, "second", "")
	if err != nil {
		t.Fatalf("prepare over a stale directory: %v", err)
	}
	if m[0].Source != filepath.Join(root, "snapshots", "2") {
		t.Fatalf("second snapshot mounted from %s; the test expects id 2", m[0].Source)
	}
	if exists(filepath.Join(m[0].Source, "stale")) {
		t.Fatal("a new snapshot contains a file of a creation that never committed")
	}
}

func TestOpenRemovesInterruptedCreations(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	s.Close()
	tmp := filepath.Join(root, "snapshots", "new-123")
	write(t, filepath.Join(tmp, "half-copied"), "x")
	open(t, root)
	if exists(tmp) {
		t.Fatal("temporary directory of an interrupted creation survived a restart")
	}
}

func TestCleanupRemovesOnlyOrphans(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	m, err := s.Prepare(ctx, "live", "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(m[0].Source, "keep"), "live data")
	orphans := []string{"99", "rm-7", "new-abc"}
	for _, o := range orphans {
		write(t, filepath.Join(root, "snapshots", o, "junk"), "orphan")
	}
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, o := range orphans {
		if exists(filepath.Join(root, "snapshots", o)) {
			t.Errorf("orphan %s survived Cleanup", o)
		}
	}
	if exists(filepath.Join(root, "snapshots", "rm-99")) {
		t.Error("orphan 99 was set aside but not removed")
	}
	if !exists(filepath.Join(m[0].Source, "keep")) {
		t.Fatal("Cleanup removed a live snapshot's data")
	}
}

func TestRemoveDeletesDirectoryAndRefusesParents(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	m, err := s.Prepare(ctx, "a", "")
	if err != nil {
		t.Fatal(err)
	}
	dir := m[0].Source
	if err := s.Commit(ctx, "A", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, "b", "A"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "A"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("remove of a parent: %v, want FailedPrecondition", err)
	}
	if err := s.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	if exists(dir) {
		t.Fatalf("directory %s of a removed snapshot is still there", dir)
	}
}

func TestUsageMeasuresActiveAndRemembersCommitted(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	m, err := s.Prepare(ctx, "a", "")
	if err != nil {
		t.Fatal(err)
	}
	u0, err := s.Usage(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(m[0].Source, "f"), string(make([]byte, 64<<10)))
	u1, err := s.Usage(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if u1.Size < u0.Size+64<<10 || u1.Inodes != u0.Inodes+1 {
		t.Fatalf("usage went from %+v to %+v after writing one 64 KiB file", u0, u1)
	}
	if err := s.Commit(ctx, "A", "a"); err != nil {
		t.Fatal(err)
	}
	// What is measured at commit stays, whatever happens to the directory.
	write(t, filepath.Join(m[0].Source, "g"), string(make([]byte, 64<<10)))
	u2, err := s.Usage(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if u2 != u1 {
		t.Fatalf("committed usage %+v, want %+v as measured at commit", u2, u1)
	}
}

func TestNativeViewSharesParentAndPrepareCopiesIt(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	m, err := s.Prepare(ctx, "a", "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(m[0].Source, "f"), "parent")
	if err := s.Commit(ctx, "A", "a"); err != nil {
		t.Fatal(err)
	}
	v, err := s.View(ctx, "v", "A")
	if err != nil {
		t.Fatal(err)
	}
	if v[0].Source != m[0].Source || v[0].Options[len(v[0].Options)-1] != "ro" {
		t.Fatalf("view mounts %+v; want a read-only bind of the parent %s", v, m[0].Source)
	}
	p, err := s.Prepare(ctx, "b", "A")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(p[0].Source, "f"))
	if err != nil || string(b) != "parent" {
		t.Fatalf("prepared snapshot has %q (%v) where the parent has %q", b, err, "parent")
	}
	info, err := s.Stat(ctx, "b")
	if err != nil || info.Kind != snapshots.KindActive || info.Parent != "A" {
		t.Fatalf("stat b: %+v %v", info, err)
	}
	if _, err := s.Prepare(ctx, "c", "b"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("prepare on an active parent: %v, want InvalidArgument", err)
	}
	if _, err := s.Prepare(ctx, "b", "A"); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("prepare of an existing key: %v, want AlreadyExists", err)
	}
}

// A Cleanup running beside creations takes none of their directories for an
// orphan: a snapshot prepared while the snapshotter cleans up is whole.
func TestCleanupBesideCreationsLeavesThemWhole(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			if err := s.Cleanup(ctx); err != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
		}
	}()
	for i := 0; i < 100; i++ {
		key := fmt.Sprintf("active-%d", i)
		if _, err := s.Prepare(ctx, key, ""); err != nil {
			t.Fatalf("prepare %s beside a cleanup: %v", key, err)
		}
		if err := s.Commit(ctx, fmt.Sprintf("layer-%d", i), key); err != nil {
			t.Fatalf("commit %s beside a cleanup: %v", key, err)
		}
	}
	<-done
}
