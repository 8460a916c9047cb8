package manager

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
}

func newManager(t *testing.T) (*Manager, string) {
	t.Helper()
	state := t.TempDir()
	allowed := t.TempDir()
	m, err := Open(state, allowed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, allowed
}

func nsCtx() context.Context { return namespaces.WithNamespace(context.Background(), "testing") }

// isMountPoint says whether p is mounted on, from the kernel's table.
func isMountPoint(t *testing.T, p string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// source is a directory with a file in a subdirectory, to bind.
func source(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestActivateOfMountsTheCallerCanMakeIsNotImplemented(t *testing.T) {
	m, _ := newManager(t)
	_, err := m.Activate(nsCtx(), "plain", []mount.Mount{{Type: "bind", Source: "/tmp", Options: []string{"rbind"}}})
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("activation of a plain bind: %v, want NotImplemented", err)
	}
	if infos, _ := m.List(nsCtx()); len(infos) != 0 {
		t.Errorf("a refused activation is listed: %v", infos)
	}
	if _, err := m.Activate(nsCtx(), "odd", []mount.Mount{{Type: "frobnicate/bind", Source: "/tmp"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("an unknown transform: %v, want InvalidArgument", err)
	}
	if _, err := m.Activate(context.Background(), "x", []mount.Mount{{Type: "format/bind"}}); !errdefs.IsFailedPrecondition(err) && !errdefs.IsInvalidArgument(err) {
		t.Errorf("an activation without a namespace: %v, want it refused", err)
	}
}

// A mount formatted from the one before it: the manager mounts the first
// and hands back the second, its source pointing into the first's mount.
func TestActivateMountsWhatTheFormattedMountStandsOn(t *testing.T) {
	requireRoot(t)
	m, _ := newManager(t)
	ctx := leases.WithLease(nsCtx(), "lease-1")
	src := source(t)
	info, err := m.Activate(ctx, "a1", []mount.Mount{
		{Type: "bind", Source: src, Options: []string{"rbind", "ro"}},
		{Type: "format/bind", Source: "{{ mount 0 }}/sub", Options: []string{"rbind"}},
	}, mount.WithLabels(map[string]string{"purpose": "test"}))
	if err != nil {
		t.Fatalf("Activate: %v", err)
	}
	if len(info.Active) != 1 || len(info.System) != 1 {
		t.Fatalf("activation = %+v, want one mount made here and one handed back", info)
	}
	mp := info.Active[0].MountPoint
	if !isMountPoint(t, mp) {
		t.Fatalf("%s is not mounted", mp)
	}
	if sys := info.System[0]; sys.Type != "bind" || sys.Source != mp+"/sub" {
		t.Errorf("system mount = %+v, want a bind of %s/sub", sys, mp)
	}
	if b, err := os.ReadFile(filepath.Join(info.System[0].Source, "hello")); err != nil || string(b) != "hi" {
		t.Errorf("the handed-back source does not show the file: %q, %v", b, err)
	}

	if _, err := m.Activate(ctx, "a1", []mount.Mount{{Type: "format/bind", Source: "/tmp"}}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("a second activation of a1: %v, want AlreadyExists", err)
	}
	got, err := m.Info(ctx, "a1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["purpose"] != "test" || len(got.Active) != 1 || got.Active[0].MountPoint != mp || got.Active[0].MountedAt == nil ||
		len(got.System) != 1 || got.System[0].Source != mp+"/sub" {
		t.Errorf("Info = %+v, want what Activate returned", got)
	}
	if _, err := namespaces.NamespaceRequired(ctx); err != nil {
		t.Fatal(err)
	}
	if infos, err := m.List(namespaces.WithNamespace(context.Background(), "other")); err != nil || len(infos) != 0 {
		t.Errorf("another namespace lists %v, %v", infos, err)
	}
	for filter, want := range map[string]int{"": 1, "name==a1": 1, "labels.purpose==test": 1, "name==a2": 0} {
		var fs []string
		if filter != "" {
			fs = []string{filter}
		}
		infos, err := m.List(ctx, fs...)
		if err != nil || len(infos) != want {
			t.Errorf("List(%q) = %d activations, %v; want %d", filter, len(infos), err, want)
		}
	}

	upd, err := m.Update(ctx, mount.ActivationInfo{Name: "a1", Labels: map[string]string{"extra": "x"}}, "labels.extra")
	if err != nil || upd.Labels["extra"] != "x" || upd.Labels["purpose"] != "test" {
		t.Errorf("Update labels.extra = %+v, %v", upd.Labels, err)
	}
	if _, err := m.Update(ctx, mount.ActivationInfo{Name: "a1"}, "system"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Update of system mounts: %v, want InvalidArgument", err)
	}

	if err := m.Deactivate(ctx, "a1"); err != nil {
		t.Fatalf("Deactivate: %v", err)
	}
	if isMountPoint(t, mp) {
		t.Errorf("%s is still mounted after Deactivate", mp)
	}
	if _, err := os.Stat(filepath.Dir(mp)); !os.IsNotExist(err) {
		t.Errorf("the activation's directory is left: %v", err)
	}
	if _, err := m.Info(ctx, "a1"); !errdefs.IsNotFound(err) {
		t.Errorf("Info after Deactivate: %v, want NotFound", err)
	}
	if err := m.Deactivate(ctx, "a1"); !errdefs.IsNotFound(err) {
		t.Errorf("second Deactivate: %v, want NotFound", err)
	}
	if _, err := os.Stat(filepath.Join(src, "sub", "hello")); err != nil {
		t.Errorf("the source lost its file: %v", err)
	}
	m.db.View(func(tx *bolt.Tx) error {
		if b := bucket(tx, bucketV1, []byte("testing"), bucketLeases, []byte("lease-1")); b != nil {
			t.Errorf("the lease still references a deactivated activation")
		}
		return nil
	})
}

// A temporary activation mounts everything itself and hands back one bind.
func TestTemporaryActivationMountsEverything(t *testing.T) {
	requireRoot(t)
	m, _ := newManager(t)
	src := source(t)
	info, err := m.Activate(nsCtx(), "tmp", []mount.Mount{{Type: "bind", Source: src, Options: []string{"rbind", "ro"}}}, mount.WithTemporary)
	if err != nil {
		t.Fatalf("temporary Activate: %v", err)
	}
	if len(info.Active) != 1 || len(info.System) != 1 || info.System[0].Type != "bind" || info.System[0].Source != info.Active[0].MountPoint {
		t.Fatalf("temporary activation = %+v, want the bind mounted and a bind of it handed back", info)
	}
	if _, err := os.Stat(filepath.Join(info.Active[0].MountPoint, "sub", "hello")); err != nil {
		t.Errorf("the mounted tree lacks the file: %v", err)
	}
	if err := m.Deactivate(nsCtx(), "tmp"); err != nil {
		t.Fatal(err)
	}
}

// A failed mount leaves nothing: no record, no mount, no directory.
func TestFailedActivationLeavesNothing(t *testing.T) {
	requireRoot(t)
	m, _ := newManager(t)
	src := source(t)
	_, err := m.Activate(nsCtx(), "bad", []mount.Mount{
		{Type: "bind", Source: src, Options: []string{"rbind"}},
		{Type: "bind", Source: filepath.Join(src, "missing"), Options: []string{"rbind"}},
		{Type: "format/bind", Source: "{{ mount 1 }}"},
	})
	if err == nil {
		t.Fatal("an activation whose second mount cannot be made succeeded")
	}
	if _, err := m.Info(nsCtx(), "bad"); !errdefs.IsNotFound(err) {
		t.Errorf("Info of a failed activation: %v, want NotFound", err)
	}
	entries, _ := os.ReadDir(m.targets)
	if len(entries) != 0 {
		t.Errorf("a failed activation left %v under the targets", entries)
	}
	if _, err := m.Activate(nsCtx(), "range", []mount.Mount{{Type: "format/bind", Source: "{{ mount 3 }}"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a format naming a mount that is not there: %v, want InvalidArgument", err)
	}
}

func TestMkdirTransformMakesDirectoriesOnlyWhereAllowed(t *testing.T) {
	m, allowed := newManager(t)
	dir := filepath.Join(allowed, "a", "b")
	got, err := m.mkdir(context.Background(), mount.Mount{Type: "overlay", Options: []string{"X-containerd.mkdir.path=" + dir + ":0750", "ro"}}, nil)
	if err != nil {
		t.Fatalf("mkdir: %v", err)
	}
	if len(got.Options) != 1 || got.Options[0] != "ro" {
		t.Errorf("options after mkdir = %v, want the others kept", got.Options)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("made %s: %v, %v; want a directory of mode 0750", dir, fi, err)
	}
	outside := filepath.Join(t.TempDir(), "x")
	if _, err := m.mkdir(context.Background(), mount.Mount{Options: []string{"X-containerd.mkdir.path=" + outside}}, nil); !errdefs.IsPermissionDenied(err) {
		t.Errorf("mkdir outside the allowed roots: %v, want PermissionDenied", err)
	}
	if err := os.Symlink("/etc", filepath.Join(allowed, "escape")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.mkdir(context.Background(), mount.Mount{Options: []string{"X-containerd.mkdir.path=" + filepath.Join(allowed, "escape", "flotilla-test")}}, nil); err == nil {
		os.Remove("/etc/flotilla-test")
		t.Errorf("mkdir through a symbolic link out of the allowed root succeeded")
	}
}

// What a crash leaves (a record without its mounts, a mounted directory
// without a record) is undone by Recover.
func TestRecoverUndoesInterruptedActivations(t *testing.T) {
	requireRoot(t)
	state := t.TempDir()
	m, err := Open(state)
	if err != nil {
		t.Fatal(err)
	}
	src := source(t)
	info, err := m.Activate(nsCtx(), "kept", []mount.Mount{{Type: "bind", Source: src, Options: []string{"rbind"}}}, mount.WithTemporary)
	if err != nil {
		t.Fatal(err)
	}
	// An orphan directory with a mount, as if the record were lost.
	orphan := filepath.Join(m.targets, "999", "0")
	if err := os.MkdirAll(orphan, 0o700); err != nil {
		t.Fatal(err)
	}
	bind := mount.Mount{Type: "bind", Source: src, Options: []string{"rbind"}}
	if err := bind.Mount(orphan); err != nil {
		t.Fatal(err)
	}
	// A record an activation never completed.
	if err := m.db.Update(func(tx *bolt.Tx) error {
		b, err := bucket(tx, bucketV1, []byte("testing")).Bucket(bucketMounts).CreateBucket([]byte("interrupted"))
		if err != nil {
			return err
		}
		return b.Put(keyID, []byte{100})
	}); err != nil {
		t.Fatal(err)
	}
	m.Close()

	m, err = Open(state)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Recover(nsCtx()); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if isMountPoint(t, orphan) {
		t.Errorf("the orphan mount is still mounted")
	}
	if _, err := os.Stat(filepath.Dir(orphan)); !os.IsNotExist(err) {
		t.Errorf("the orphan directory is left: %v", err)
	}
	if _, err := m.Info(nsCtx(), "interrupted"); !errdefs.IsNotFound(err) {
		t.Errorf("the interrupted record: %v, want NotFound", err)
	}
	if !isMountPoint(t, info.Active[0].MountPoint) {
		t.Errorf("the complete activation was unmounted by Recover")
	}
	if err := m.Deactivate(nsCtx(), "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "sub", "hello")); err != nil {
		t.Errorf("the source lost its file: %v", err)
	}
}

func TestMkfsTransformMakesAFileSystemImageOnce(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4 (e2fsprogs)")
	}
	m, allowed := newManager(t)
	img := filepath.Join(allowed, "fs.img")
	mt := mount.Mount{Type: "ext4", Source: img, Options: []string{"X-containerd.mkfs.size=16M", "X-containerd.mkfs.fs=ext4", "loop"}}
	got, err := m.mkfs(context.Background(), mt, nil)
	if err != nil {
		t.Fatalf("mkfs: %v", err)
	}
	if len(got.Options) != 1 || got.Options[0] != "loop" {
		t.Errorf("options after mkfs = %v, want loop alone", got.Options)
	}
	b, err := os.ReadFile(img)
	if err != nil || len(b) != 16<<20 {
		t.Fatalf("image: %d bytes, %v; want 16 MiB", len(b), err)
	}
	// ext2/3/4's superblock magic 0xEF53 at byte 1024+56.
	if b[1024+56] != 0x53 || b[1024+57] != 0xEF {
		t.Errorf("the image has no ext4 superblock")
	}
	// Made once: a second activation keeps what is in the image.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("X"), 0)
	f.Close()
	if _, err := m.mkfs(context.Background(), mt, nil); err != nil {
		t.Fatalf("second mkfs: %v", err)
	}
	if b, _ := os.ReadFile(img); len(b) == 0 || b[0] != 'X' {
		t.Errorf("a second mkfs made the file system again")
	}
	if _, err := m.mkfs(context.Background(), mount.Mount{Source: img + "2", Options: []string{"X-containerd.mkfs.fs=ext4"}}, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("mkfs without a size: %v, want InvalidArgument", err)
	}
}

// The collector deactivates what keep lets go, and only that.
func TestCollectDeactivatesWhatNothingHolds(t *testing.T) {
	requireRoot(t)
	m, _ := newManager(t)
	src := source(t)
	for _, name := range []string{"held", "released"} {
		if _, err := m.Activate(leases.WithLease(nsCtx(), "lease-"+name), name, []mount.Mount{{Type: "bind", Source: src, Options: []string{"rbind"}}}, mount.WithTemporary); err != nil {
			t.Fatal(err)
		}
	}
	var asked []string
	n, err := m.Collect(context.Background(), func(_ context.Context, h Held) bool {
		asked = append(asked, h.Namespace+"/"+h.Name+"@"+h.Lease)
		return h.Name == "held"
	})
	if err != nil || n != 1 {
		t.Fatalf("Collect = %d, %v; want one deactivated", n, err)
	}
	if len(asked) != 2 {
		t.Errorf("Collect asked about %v, want both activations", asked)
	}
	if _, err := m.Info(nsCtx(), "released"); !errdefs.IsNotFound(err) {
		t.Errorf("the released activation: %v, want NotFound", err)
	}
	if _, err := m.Info(nsCtx(), "held"); err != nil {
		t.Errorf("the held activation: %v", err)
	}
	if err := m.Deactivate(nsCtx(), "held"); err != nil {
		t.Fatal(err)
	}
}
