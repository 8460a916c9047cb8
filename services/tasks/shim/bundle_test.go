package shim

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestNewBundleLaysOutSpecRootfsAndWorkLink(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	spec := []byte(`{"ociVersion":"1.2.0","root":{"path":"rootfs"}}`)
	b, err := NewBundle(root, state, "team-a", "web", spec)
	if err != nil {
		t.Fatal(err)
	}
	if b.Path != filepath.Join(state, "team-a", "web") || b.Work != filepath.Join(root, "team-a", "web") {
		t.Fatalf("bundle paths: %+v", b)
	}
	got, err := os.ReadFile(filepath.Join(b.Path, "config.json"))
	if err != nil || string(got) != string(spec) {
		t.Fatalf("config.json = %q, %v; want the container's spec verbatim", got, err)
	}
	if fi, err := os.Stat(filepath.Join(b.Path, "rootfs")); err != nil || !fi.IsDir() {
		t.Fatalf("rootfs directory missing: %v", err)
	}
	if dst, err := os.Readlink(filepath.Join(b.Path, "work")); err != nil || dst != b.Work {
		t.Fatalf("work link = %q, %v; want %q", dst, err, b.Work)
	}
}

func TestNewBundleRefusesATaskThatExists(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	if _, err := NewBundle(root, state, "ns", "id", nil); err != nil {
		t.Fatal(err)
	}
	_, err := NewBundle(root, state, "ns", "id", nil)
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second bundle of one task: %v, want AlreadyExists", err)
	}
	// The refused create must not have removed the first bundle.
	if _, err := os.Stat(filepath.Join(state, "ns", "id", "rootfs")); err != nil {
		t.Fatalf("existing bundle damaged: %v", err)
	}
}

func TestNewBundleRefusesPathLikeNames(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	for _, c := range []struct{ ns, id string }{
		{"ns", "../escape"}, {"ns", "a/b"}, {"../x", "id"}, {"ns", ""}, {"", "id"}, {"ns", ".hidden"},
	} {
		if _, err := NewBundle(root, state, c.ns, c.id, nil); !errdefs.IsInvalidArgument(err) {
			t.Errorf("NewBundle(%q, %q) = %v, want InvalidArgument", c.ns, c.id, err)
		}
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Fatalf("refused names left %d entries in the state directory", len(entries))
	}
}

func TestNewBundleRefusesASpecThatIsNotJSON(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	_, err := NewBundle(root, state, "ns", "id", []byte("not json"))
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad spec: %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(filepath.Join(state, "ns", "id")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed create left its bundle: %v", err)
	}
}

func TestNewBundleLetsTheRemappedRootGroupIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	root, state := t.TempDir(), t.TempDir()
	spec := []byte(`{"linux":{"gidMappings":[{"containerID":0,"hostID":100000,"size":65536}]}}`)
	b, err := NewBundle(root, state, "ns", "id", spec)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o710 {
		t.Fatalf("bundle mode %v, want 0710 for the remapped group", fi.Mode().Perm())
	}
}

func TestBundleDeleteRemovesBundleAndWorkDir(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	b, err := NewBundle(root, state, "ns", "id", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.Work, "data"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{b.Path, b.Work} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Delete: %v", p, err)
		}
	}
	// Deleting again (a retried delete) is no error.
	if err := b.Delete(); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

func TestNewBundleStartsFromAnEmptyWorkDir(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	stale := filepath.Join(root, "ns", "id")
	if err := os.MkdirAll(stale, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "old"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewBundle(root, state, "ns", "id", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(stale, "old")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale work file survived: %v", err)
	}
}
