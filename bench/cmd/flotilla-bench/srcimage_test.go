package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// fakeGoroot is a small Go tree: src, pkg and test with files of several
// sizes, a symlink and an executable.
func fakeGoroot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"src/fmt/print.go":            strings.Repeat("package fmt\n", 4000),
		"src/fmt/testdata/x.txt":      "hello\n",
		"src/net/http/server.go":      strings.Repeat("package http\n", 9000),
		"src/runtime/asm.s":           strings.Repeat("TEXT ·x(SB)\n", 3000),
		"pkg/tool/linux_amd64/vet":    strings.Repeat("\x7fELF binary ", 5000),
		"pkg/include/textflag.h":      "#define NOSPLIT 4\n",
		"test/fixedbugs/issue1.go":    strings.Repeat("// run\n", 2000),
		"test/ken/chan.go":            "package main\n",
		"src/cmd/go/testdata/empty.x": "",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "pkg/tool/linux_amd64/vet"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("print.go", filepath.Join(root, "src/fmt/link.go")); err != nil {
		t.Fatal(err)
	}
	return root
}

// unpackLayers extracts the image's tree layers (all but busybox) in order
// into dir, as a snapshotter would stack them (no whiteouts in them).
func unpackLayers(t *testing.T, img *testimage.Image, dir string) {
	t.Helper()
	for _, l := range img.Layers[1:] {
		if l.MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Fatalf("layer %s is %s, want gzip", l.Digest, l.MediaType)
		}
		blob, _ := img.Blob(l.Digest)
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, h.Name)
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(p, os.FileMode(h.Mode)); err != nil {
					t.Fatal(err)
				}
			case tar.TypeSymlink:
				if err := os.Symlink(h.Linkname, p); err != nil {
					t.Fatal(err)
				}
			case tar.TypeReg:
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, b, os.FileMode(h.Mode)); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("unexpected entry %s of type %c", h.Name, h.Typeflag)
			}
		}
	}
}

func TestRealisticImageCutsTheTreesIntoGzipLayersThatVerify(t *testing.T) {
	root := fakeGoroot(t)
	src, err := buildSrcImage(root, 3, testimage.WithBusybox(fakeBusybox(t)))
	if err != nil {
		t.Fatal(err)
	}
	if len(src.img.Layers) != 4 || len(src.layerBytes) != 3 {
		t.Fatalf("%d layers (%d tree layers), want busybox + 3", len(src.img.Layers), len(src.layerBytes))
	}
	for i, n := range src.layerBytes {
		if n < 10<<10 {
			t.Errorf("tree layer %d has only %d bytes: the trees are not spread over the layers", i, n)
		}
	}
	if want := "usr/local/go/src/fmt/link.go"; src.files[want].link != "print.go" {
		t.Errorf("symlink %s not recorded: %+v", want, src.files[want])
	}
	dir := t.TempDir()
	unpackLayers(t, src.img, dir)
	if err := src.verify(dir); err != nil {
		t.Fatalf("the layers, unpacked, do not verify: %v", err)
	}

	// Each kind of damage is caught.
	vet := filepath.Join(dir, "usr/local/go/pkg/tool/linux_amd64/vet")
	if err := os.Chmod(vet, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := src.verify(dir); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("a lost executable bit: %v, want a mode error", err)
	}
	_ = os.Chmod(vet, 0o755)
	f := filepath.Join(dir, "usr/local/go/src/net/http/server.go")
	b, _ := os.ReadFile(f)
	b[100] ^= 1
	_ = os.WriteFile(f, b, 0o644)
	if err := src.verify(dir); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Errorf("a changed byte: %v, want a content error", err)
	}
	b[100] ^= 1
	_ = os.WriteFile(f, b, 0o644)
	if err := os.Remove(filepath.Join(dir, "usr/local/go/test/ken/chan.go")); err != nil {
		t.Fatal(err)
	}
	if err := src.verify(dir); err == nil || !strings.Contains(err.Error(), "found") {
		t.Errorf("a missing file: %v, want a count error", err)
	}
}

func TestRealisticImageIsTheSameEveryBuild(t *testing.T) {
	root := fakeGoroot(t)
	bb := testimage.WithBusybox(fakeBusybox(t))
	a, err := buildSrcImage(root, 2, bb)
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildSrcImage(root, 2, bb)
	if err != nil {
		t.Fatal(err)
	}
	if a.img.Manifest.Digest != b.img.Manifest.Digest {
		t.Fatalf("two builds of the same trees differ: %s, %s", a.img.Manifest.Digest, b.img.Manifest.Digest)
	}
}

func fakeBusybox(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, []byte("#!/not/a/real/busybox\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
