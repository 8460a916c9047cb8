package diff

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// escapeFixture is a target directory with a sentinel directory next to
// it; no layer may change anything in the sentinel or add anything beside
// the two.
type escapeFixture struct {
	base, target, sentinel string
	before                 map[string]string
}

func newEscapeFixture(t *testing.T) *escapeFixture {
	base := t.TempDir()
	f := &escapeFixture{base: base, target: filepath.Join(base, "target"), sentinel: filepath.Join(base, "sentinel")}
	for _, d := range []string{f.target, filepath.Join(f.sentinel, "dir")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"file", "dir/inner"} {
		if err := os.WriteFile(filepath.Join(f.sentinel, p), []byte("original"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f.before = treeState(t, f.sentinel, true)
	return f
}

// check fails the test if anything outside the target changed.
func (f *escapeFixture) check(t testing.TB) {
	t.Helper()
	if d := diffStates(f.before, treeState(t, f.sentinel, true)); d != "" {
		t.Errorf("the layer changed the sentinel directory outside the target:\n%s", d)
	}
	names, err := os.ReadDir(f.base)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range names {
		got = append(got, n.Name())
	}
	if !slices.Equal(got, []string{"sentinel", "target"}) && !slices.Equal(got, []string{"lower", "sentinel", "target", "work"}) {
		t.Errorf("the layer created files beside the target: %v", got)
	}
}

func TestApplyNeverWritesOutsideTheTarget(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(t *testing.T, f *escapeFixture)
		layer   func(f *escapeFixture) []entry
		refused bool // else the layer is legitimate and applies
	}{
		{name: "dot-dot path to an existing file", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{file("../sentinel/file", "pwned", 0o644)} }},
		{name: "dot-dot path hidden in the middle", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{file("a/b/../../../sentinel/file", "pwned", 0o644)} }},
		{name: "dot-dot path to a new file", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{file("../evil", "pwned", 0o644)} }},
		{name: "absolute path to an existing file", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{file(filepath.Join(f.sentinel, "file"), "pwned", 0o644)}
			}},
		{name: "absolute path to a new file", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{file(filepath.Join(f.base, "evil"), "pwned", 0o644)} }},
		{name: "absolute symlink then a write through it", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", f.sentinel), file("escape/file", "pwned", 0o644)}
			}},
		{name: "relative symlink then a write through it", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", "../sentinel"), file("escape/file", "pwned", 0o644)}
			}},
		{name: "symlink then a directory through it", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", "../sentinel"), dir("escape/newdir", 0o755)}
			}},
		{name: "symlink then a symlink through it", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", "../sentinel"), symlink("escape/file", "/etc/passwd")}
			}},
		{name: "chain of symlinks then a write", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("a", "b"), symlink("b", "../sentinel"), file("a/dir/inner", "pwned", 0o644)}
			}},
		{name: "symlink then a whiteout through it", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", "../sentinel"), file("escape/.wh.file", "", 0)}
			}},
		{name: "symlink then an opaque marker through it", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", "../sentinel"), file("escape/.wh..wh..opq", "", 0)}
			}},
		{name: "symlink already in the snapshot then a write through it", refused: true,
			setup: func(t *testing.T, f *escapeFixture) {
				if err := os.Symlink(f.sentinel, filepath.Join(f.target, "old")); err != nil {
					t.Fatal(err)
				}
			},
			layer: func(f *escapeFixture) []entry { return []entry{file("old/file", "pwned", 0o644)} }},
		{name: "directory replaced by a symlink mid-layer", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{dir("d", 0o755), file("d/ok", "fine", 0o644), symlink("d", "../sentinel"), file("d/file", "pwned", 0o644)}
			}},
		{name: "hard link to a file outside by dot-dot", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{hardlink("link", "../sentinel/file", 0o644)} }},
		{name: "hard link to a file outside by absolute path", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{hardlink("link", filepath.Join(f.sentinel, "file"), 0o644)}
			}},
		{name: "hard link through a symlink", refused: true,
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("escape", "../sentinel"), hardlink("link", "escape/file", 0o644)}
			}},
		{name: "hard link to the root", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{hardlink("link", "./", 0o755)} }},
		{name: "whiteout of dot-dot", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{dir("d", 0o755), file("d/.wh...", "", 0)} }},
		{name: "whiteout of dot", refused: true,
			layer: func(f *escapeFixture) []entry { return []entry{dir("d", 0o755), file("d/.wh..", "", 0)} }},
		// Legitimate layers that merely look alarming.
		{name: "symlink pointing outside is just data",
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("abs", filepath.Join(f.sentinel, "file")), symlink("rel", "../../sentinel/file")}
			}},
		{name: "file replacing a symlink pointing outside",
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("f", filepath.Join(f.sentinel, "file")), file("f", "replaced", 0o644)}
			}},
		{name: "hard link to a symlink pointing outside",
			layer: func(f *escapeFixture) []entry {
				return []entry{symlink("s", "../sentinel/file"), hardlink("h", "s", 0o777)}
			}},
		{name: "dot-dot that stays inside",
			layer: func(f *escapeFixture) []entry { return []entry{dir("a", 0o755), file("a/../b", "fine", 0o644)} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newEscapeFixture(t)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			svc, cs := newTestService(t)
			desc := cs.add(ocispec.MediaTypeImageLayer, buildTar(t, tc.layer(f)...))
			_, err := svc.Apply(context.Background(), desc, bindMount(f.target))
			switch {
			case tc.refused && !errdefs.IsInvalidArgument(err):
				t.Errorf("Apply = %v, want an InvalidArgument refusal", err)
			case tc.refused && !strings.Contains(err.Error(), "layer entry"):
				t.Errorf("refusal %q does not name the entry", err)
			case !tc.refused && err != nil:
				t.Errorf("Apply of a legitimate layer: %v", err)
			}
			f.check(t)
		})
	}
}

// On an overlay snapshot the layer is written into the upper directory,
// but a symlink in a lower layer is just as much in the way.
func TestApplyOnOverlayRefusesWritesThroughLowerSymlinks(t *testing.T) {
	requireRoot(t)
	f := newEscapeFixture(t)
	lower, work := filepath.Join(f.base, "lower"), filepath.Join(f.base, "work")
	for _, d := range []string{lower, work, filepath.Join(lower, "opaque")} {
		os.MkdirAll(d, 0o755)
	}
	os.Symlink(f.sentinel, filepath.Join(lower, "etc"))
	os.Symlink("../../sentinel", filepath.Join(lower, "opaque", "s"))
	mounts := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"workdir=" + work, "upperdir=" + f.target, "lowerdir=" + lower,
	}}}
	svc, cs := newTestService(t)

	refused := cs.add(ocispec.MediaTypeImageLayer, buildTar(t, file("etc/file", "pwned", 0o644)))
	if _, err := svc.Apply(context.Background(), refused, mounts); !errdefs.IsInvalidArgument(err) {
		t.Errorf("write through a lower layer's symlink: err = %v, want InvalidArgument", err)
	}
	f.check(t)

	// Once the layer makes the directory opaque, the lower symlink is
	// gone from the merged view and the name is free to use.
	allowed := cs.add(ocispec.MediaTypeImageLayer, buildTar(t,
		file("opaque/.wh..wh..opq", "", 0), file("opaque/s/file", "fine", 0o644)))
	if _, err := svc.Apply(context.Background(), allowed, mounts); err != nil {
		t.Errorf("write below an opaque directory: %v", err)
	}
	f.check(t)
}

func TestApplyRefusesUnknownEntryTypes(t *testing.T) {
	svc, cs := newTestService(t)
	odd := entry{hdr: tar.Header{Typeflag: 'Z', Name: "odd", Mode: 0o644}}
	desc := cs.add(ocispec.MediaTypeImageLayer, buildTar(t, odd))
	if _, err := svc.Apply(context.Background(), desc, bindMount(t.TempDir())); !errdefs.IsInvalidArgument(err) {
		t.Errorf("entry type 'Z': err = %v, want InvalidArgument", err)
	}
}
