package diff

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	cdiff "github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
}

// makeLower fills dir with a base filesystem.
func makeLower(t testing.TB, dir string) {
	t.Helper()
	w := func(p, body string, mode os.FileMode) {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, p), []byte(body), mode))
	}
	w("etc/hostname", "lower\n", 0o644)
	w("etc/passwd", "root:x:0:0\n", 0o644)
	w("bin/tool", "tool v1", 0o755)
	w("var/lib/state/a", "a", 0o600)
	w("var/lib/state/b", "b", 0o600)
	w("to-become-dir", "file", 0o644)
	w("opt/app/data", "data", 0o644)
	must(t, os.Symlink("bin", filepath.Join(dir, "sbin")))
	must(t, os.Link(filepath.Join(dir, "bin/tool"), filepath.Join(dir, "bin/tool2")))
	must(t, unix.Mkfifo(filepath.Join(dir, "etc/fifo"), 0o600))
	must(t, unix.Mknod(filepath.Join(dir, "etc/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, os.Chown(filepath.Join(dir, "opt/app/data"), 1000, 1000))
	// Of all xattrs, containerd's diff writer carries file capabilities
	// only (as containerd does); set cap_net_bind_service on a file that
	// changes.
	must(t, unix.Lsetxattr(filepath.Join(dir, "bin/tool"), "security.capability", netBindCap, 0))
}

// netBindCap is a VFS_CAP_REVISION_2 security.capability value with
// cap_net_bind_service permitted and effective.
var netBindCap = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// changeUpper makes one of each kind of change in a tree built by makeLower.
func changeUpper(t testing.TB, dir string) {
	t.Helper()
	j := func(p string) string { return filepath.Join(dir, p) }
	must(t, os.WriteFile(j("etc/hostname"), []byte("upper\n"), 0o644))
	must(t, os.WriteFile(j("etc/new"), []byte("new"), 0o640))
	must(t, os.Remove(j("etc/fifo")))
	must(t, os.RemoveAll(j("var/lib/state")))
	must(t, os.Chmod(j("bin/tool"), 0o700))
	must(t, os.Chown(j("etc/passwd"), 0, 42))
	must(t, os.Remove(j("to-become-dir")))
	must(t, os.MkdirAll(j("to-become-dir/inside"), 0o750))
	must(t, os.Symlink("/etc/hostname", j("hostname-link")))
	must(t, os.RemoveAll(j("opt/app")))
	must(t, os.MkdirAll(j("opt/app"), 0o755)) // recreated empty: an opaque directory
	must(t, os.WriteFile(j("opt/app/fresh"), []byte("fresh"), 0o644))
	// Times are part of what a layer carries.
	must(t, os.Chtimes(j("etc/new"), time.Unix(1600000000, 0), time.Unix(1600000000, 0)))
}

func TestCompareThenApplyReproducesUpper(t *testing.T) {
	requireRoot(t)
	for _, mt := range []string{"", ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerZstd, ocispec.MediaTypeImageLayer} {
		name := mt
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			lower, upper, target := t.TempDir(), t.TempDir(), t.TempDir()
			makeLower(t, lower)
			copyTree(t, lower, upper)
			changeUpper(t, upper)
			copyTree(t, lower, target)

			svc, cs := newTestService(t)
			var opts []cdiff.Opt
			if mt != "" {
				opts = append(opts, cdiff.WithMediaType(mt))
			}
			opts = append(opts, cdiff.WithLabels(map[string]string{"test": "yes"}))
			desc, err := svc.Compare(context.Background(), bindMount(lower), bindMount(upper), opts...)
			if err != nil {
				t.Fatalf("Compare: %v", err)
			}
			wantMT := mt
			if mt == "" {
				wantMT = ocispec.MediaTypeImageLayerGzip
			}
			if desc.MediaType != wantMT {
				t.Errorf("media type = %q, want %q", desc.MediaType, wantMT)
			}
			info, err := cs.Info(context.Background(), desc.Digest)
			if err != nil {
				t.Fatalf("diff not in the content store: %v", err)
			}
			if info.Size != desc.Size || info.Labels["test"] != "yes" {
				t.Errorf("stored blob: size %d (descriptor %d), labels %v", info.Size, desc.Size, info.Labels)
			}

			applied, err := svc.Apply(context.Background(), desc, bindMount(target))
			if err != nil {
				t.Fatalf("Apply of the diff: %v", err)
			}
			wantLabel := ""
			if wantMT != ocispec.MediaTypeImageLayer {
				wantLabel = applied.Digest.String()
			}
			if got := info.Labels[labels.LabelUncompressed]; got != wantLabel {
				t.Errorf("%s label = %q, want the diff ID %q", labels.LabelUncompressed, got, wantLabel)
			}
			if d := diffStates(treeState(t, upper, true), treeState(t, target, true)); d != "" {
				t.Errorf("lower + Compare(lower, upper) differs from upper:\n%s", d)
			}
		})
	}
}

func TestCompareOverlaySnapshotThenApplyReproducesMergedView(t *testing.T) {
	requireRoot(t)
	f := newOverlayFixture(t)
	makeLower(t, f.lower)
	merged := t.TempDir()
	must(t, mount.All(f.mounts(), merged))
	changeUpper(t, merged)
	// Overlayfs reports a lower file's link count even after one of its
	// names was copied up (and so unlinked from the other): ignore nlink.
	want := withoutNlink(treeState(t, merged, true))
	must(t, mount.UnmountAll(merged, 0))

	svc, _ := newTestService(t)
	desc, err := svc.Compare(context.Background(), bindMount(f.lower), f.mounts())
	if err != nil {
		t.Fatalf("Compare: %v", err)
	}
	target := t.TempDir()
	copyTree(t, f.lower, target)
	if _, err := svc.Apply(context.Background(), desc, bindMount(target)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if d := diffStates(want, withoutNlink(treeState(t, target, true))); d != "" {
		t.Errorf("lower + Compare(lower, overlay) differs from the overlay's merged view:\n%s", d)
	}

	// The same diff applied as the overlayfs snapshotter would: into a
	// fresh upper directory over the same lower.
	g := overlayFixture{lower: f.lower, upper: t.TempDir(), work: t.TempDir()}
	if _, err := svc.Apply(context.Background(), desc, g.mounts()); err != nil {
		t.Fatalf("Apply onto overlay: %v", err)
	}
	must(t, mount.All(g.mounts(), merged))
	defer mount.UnmountAll(merged, 0)
	if d := diffStates(want, withoutNlink(treeState(t, merged, true))); d != "" {
		t.Errorf("overlay apply of the diff differs from the original merged view:\n%s", d)
	}
}

func TestCompareOfExistingLayerRestoresUncompressedLabel(t *testing.T) {
	requireRoot(t)
	lower, upper := t.TempDir(), t.TempDir()
	makeLower(t, lower)
	copyTree(t, lower, upper)
	changeUpper(t, upper)
	svc, cs := newTestService(t)
	// A fixed epoch makes both diffs byte-identical.
	epoch := time.Unix(1700000000, 0)
	first, err := svc.Compare(context.Background(), bindMount(lower), bindMount(upper), cdiff.WithSourceDateEpoch(&epoch))
	if err != nil {
		t.Fatal(err)
	}
	cs.mu.Lock()
	delete(cs.labels[first.Digest], labels.LabelUncompressed)
	cs.mu.Unlock()
	second, err := svc.Compare(context.Background(), bindMount(lower), bindMount(upper), cdiff.WithSourceDateEpoch(&epoch))
	if err != nil {
		t.Fatalf("second Compare of the same change: %v", err)
	}
	if second.Digest != first.Digest {
		t.Fatalf("the same change gave two layers: %s and %s", first.Digest, second.Digest)
	}
	info, _ := cs.Info(context.Background(), first.Digest)
	if info.Labels[labels.LabelUncompressed] == "" {
		t.Error("the existing layer did not get its uncompressed label back")
	}
}

func TestCompareRefusesUnknownMediaType(t *testing.T) {
	svc, _ := newTestService(t)
	_, err := svc.Compare(context.Background(), nil, nil, cdiff.WithMediaType("application/x-bzip2"))
	if !errdefs.IsNotImplemented(err) {
		t.Errorf("err = %v, want NotImplemented", err)
	}
}

// writeDiff is the part of Compare after mounting; it needs no root.
func TestWriteDiffOfDirectoriesIsAGzipLayer(t *testing.T) {
	lower, upper := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(upper, "hello"), []byte("world"), 0o644))
	svc, cs := newTestService(t)
	desc, err := svc.writeDiff(context.Background(), lower, upper, cdiff.Config{MediaType: ocispec.MediaTypeImageLayerGzip})
	if err != nil {
		t.Fatal(err)
	}
	blob := cs.blobs[desc.Digest]
	if !bytes.HasPrefix(blob, gzipMagic) || digest.FromBytes(blob) != desc.Digest || int64(len(blob)) != desc.Size {
		t.Fatalf("descriptor %+v does not describe a gzip blob of %d bytes", desc, len(blob))
	}
	target := t.TempDir()
	if _, err := svc.Apply(context.Background(), desc, bindMount(target)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "hello")); string(b) != "world" {
		t.Errorf("hello = %q", b)
	}
}

var nlinkField = regexp.MustCompile(` nlink=\d+`)

func withoutNlink(state map[string]string) map[string]string {
	out := make(map[string]string, len(state))
	for k, v := range state {
		out[k] = nlinkField.ReplaceAllString(v, "")
	}
	return out
}
