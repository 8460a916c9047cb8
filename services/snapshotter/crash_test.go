package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// writeInto mounts mounts on a temp dir, writes name, and unmounts.
func writeInto(t *testing.T, mounts []mount.Mount, name, data string) {
	t.Helper()
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %+v: %v", mounts, err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Fatal(err)
		}
	}()
	if err := os.WriteFile(filepath.Join(target, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFrom(t *testing.T, mounts []mount.Mount, name string) string {
	t.Helper()
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %+v: %v", mounts, err)
	}
	defer mount.UnmountAll(target, 0)
	b, err := os.ReadFile(filepath.Join(target, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestActiveSnapshotSurvivesSIGKILLAndCommits kills the process between a
// Prepare and its Commit: after a restart the snapshot is still active,
// keeps what was written to it, and commits.
func TestActiveSnapshotSurvivesSIGKILLAndCommits(t *testing.T) {
	requireRoot(t)
	for _, driver := range []string{"overlayfs", "native"} {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			root := filepath.Join(t.TempDir(), driver)
			p := startT(t, driver, root)
			conn, sn := client(t, p)

			base, err := sn.Prepare(ctx, "base-active", "")
			if err != nil {
				t.Fatal(err)
			}
			writeInto(t, base, "base", "lower layer")
			if err := sn.Commit(ctx, "base", "base-active"); err != nil {
				t.Fatal(err)
			}
			mounts, err := sn.Prepare(ctx, "work", "base", snapshots.WithLabels(map[string]string{"keep": "me"}))
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]string{"overlayfs": "overlay", "native": "bind"}[driver]; mounts[0].Type != want {
				t.Fatalf("--option driver=%s gave %s mounts, want %s", driver, mounts[0].Type, want)
			}
			writeInto(t, mounts, "top", "written before the crash")

			p.Kill()
			conn.Close()

			p = startT(t, driver, root)
			defer p.Stop()
			conn, sn = client(t, p)
			defer conn.Close()

			info, err := sn.Stat(ctx, "work")
			if err != nil {
				t.Fatalf("active snapshot gone after SIGKILL and restart: %v", err)
			}
			if info.Kind != snapshots.KindActive || info.Parent != "base" || info.Labels["keep"] != "me" {
				t.Fatalf("after restart the snapshot is %+v; want active on base with label keep=me", info)
			}
			again, err := sn.Mounts(ctx, "work")
			if err != nil {
				t.Fatal(err)
			}
			if got := readFrom(t, again, "top"); got != "written before the crash" {
				t.Fatalf("file written before the crash reads %q after restart", got)
			}
			if err := sn.Commit(ctx, "work-committed", "work"); err != nil {
				t.Fatalf("commit after restart: %v", err)
			}
			info, err = sn.Stat(ctx, "work-committed")
			if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != "base" {
				t.Fatalf("committed snapshot after restart is %+v (%v); want committed on base", info, err)
			}
			if _, err := sn.Stat(ctx, "work"); !errdefs.IsNotFound(err) {
				t.Fatalf("active key still there after its commit: %v", err)
			}
			u, err := sn.Usage(ctx, "work-committed")
			if err != nil || u.Size == 0 || u.Inodes == 0 {
				t.Fatalf("usage of the committed snapshot is %+v (%v); want the file written before the crash counted", u, err)
			}
			view, err := sn.View(ctx, "check", "work-committed")
			if err != nil {
				t.Fatal(err)
			}
			if got := readFrom(t, view, "base"); got != "lower layer" {
				t.Fatalf("lower layer file reads %q through a view of the commit", got)
			}
		})
	}
}

// TestRemoveOfParentFailsPrecondition checks the error code a containerd
// client sees through the proxy.
func TestRemoveOfParentFailsPrecondition(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	p := startT(t, "overlayfs", filepath.Join(t.TempDir(), "overlayfs"))
	defer p.Stop()
	conn, sn := client(t, p)
	defer conn.Close()
	if _, err := sn.Prepare(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "A", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "b", "A"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "A"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("removing a snapshot with a child: %v; want FailedPrecondition", err)
	}
	if err := sn.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "A"); err != nil {
		t.Fatalf("removing a snapshot whose child is gone: %v", err)
	}
}

// TestOverlayMountsHaveContainerdShape pins the mounts containerd's overlay
// snapshotter returns, which containerd 1.6 mounts as a proxy plugin.
func TestOverlayMountsHaveContainerdShape(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "overlayfs")
	p := startT(t, "overlayfs", root)
	defer p.Stop()
	conn, sn := client(t, p)
	defer conn.Close()
	fsdir := func(id string) string { return filepath.Join(root, "snapshots", id, "fs") }

	m, err := sn.Prepare(ctx, "l1-active", "")
	if err != nil {
		t.Fatal(err)
	}
	want := mount.Mount{Type: "bind", Source: fsdir("1"), Options: []string{"rw", "rbind"}}
	check(t, "prepare without parent", m, want)
	if err := sn.Commit(ctx, "l1", "l1-active"); err != nil {
		t.Fatal(err)
	}
	m, err = sn.View(ctx, "v1", "l1")
	if err != nil {
		t.Fatal(err)
	}
	check(t, "view of one layer", m, mount.Mount{Type: "bind", Source: fsdir("1"), Options: []string{"ro", "rbind"}})

	if _, err := sn.Prepare(ctx, "l2-active", "l1"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "l2", "l2-active"); err != nil {
		t.Fatal(err)
	}
	extra := []string{}
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
		extra = append(extra, "index=off")
	}
	m, err = sn.Prepare(ctx, "top", "l2")
	if err != nil {
		t.Fatal(err)
	}
	check(t, "prepare on two layers", m, mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{
		"workdir=" + filepath.Join(root, "snapshots", "4", "work"),
		"upperdir=" + fsdir("4"),
		"lowerdir=" + fsdir("3") + ":" + fsdir("1"),
	}, extra...)})
	m, err = sn.View(ctx, "v2", "l2")
	if err != nil {
		t.Fatal(err)
	}
	check(t, "view of two layers", m, mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{
		"lowerdir=" + fsdir("3") + ":" + fsdir("1"),
	}, extra...)})
}

func check(t *testing.T, what string, got []mount.Mount, want mount.Mount) {
	t.Helper()
	if len(got) != 1 || got[0].Type != want.Type || got[0].Source != want.Source || len(got[0].Options) != len(want.Options) {
		t.Fatalf("%s: mounts %+v, want [%+v]", what, got, want)
	}
	for i := range want.Options {
		if got[0].Options[i] != want.Options[i] {
			t.Fatalf("%s: mounts %+v, want [%+v]", what, got, want)
		}
	}
}

func TestUnknownDriverFailsStartWithReason(t *testing.T) {
	_, err := start(t, "zfs", filepath.Join(t.TempDir(), "zfs"))
	if err == nil || !strings.Contains(err.Error(), `snapshotter driver "zfs": want overlayfs or native`) {
		t.Fatalf("start with driver zfs: %v; want a failure naming the driver", err)
	}
}
