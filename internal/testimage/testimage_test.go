package testimage_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/memstore"
	"github.com/flotilla-project/flotilla/internal/testimage"
)

// fakeBusybox stands in for the host binary so that most tests do not depend
// on busybox-static being installed.
func fakeBusybox(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, []byte("#!/not/a/real/busybox\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func build(t *testing.T, opts ...testimage.Option) *testimage.Image {
	t.Helper()
	img, err := testimage.Busybox(opts...)
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	return img
}

// layout is an OCI image layout read back from an archive.
type layout struct {
	files map[string][]byte
	order []string
}

func readLayout(t *testing.T, img *testimage.Image) layout {
	t.Helper()
	r, err := img.Archive()
	if err != nil {
		t.Fatal(err)
	}
	l := layout{files: map[string][]byte{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("archive is not a valid tar: %v", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		l.files[hdr.Name] = b
		l.order = append(l.order, hdr.Name)
	}
	return l
}

// blob reads a blob by descriptor and checks its size and digest.
func (l layout) blob(t *testing.T, d ocispec.Descriptor) []byte {
	t.Helper()
	b, ok := l.files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok {
		t.Fatalf("archive lacks blob %s (%s)", d.Digest, d.MediaType)
	}
	if int64(len(b)) != d.Size {
		t.Fatalf("blob %s is %d bytes, descriptor says %d", d.Digest, len(b), d.Size)
	}
	if got := digest.FromBytes(b); got != d.Digest {
		t.Fatalf("blob stored as %s has digest %s", d.Digest, got)
	}
	return b
}

func uncompressed(t *testing.T, d ocispec.Descriptor, b []byte) []byte {
	t.Helper()
	if d.MediaType != ocispec.MediaTypeImageLayerGzip {
		return b
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("layer %s is not gzip: %v", d.Digest, err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("layer %s: %v", d.Digest, err)
	}
	return out
}

func TestSameOptionsGiveSameBytes(t *testing.T) {
	bb := fakeBusybox(t)
	a := build(t, testimage.WithBusybox(bb), testimage.WithRandomLayer(1<<16, 7))
	b := build(t, testimage.WithBusybox(bb), testimage.WithRandomLayer(1<<16, 7))
	if a.Manifest.Digest != b.Manifest.Digest || a.Index.Digest != b.Index.Digest {
		t.Fatalf("two builds differ: manifest %s vs %s, index %s vs %s", a.Manifest.Digest, b.Manifest.Digest, a.Index.Digest, b.Index.Digest)
	}
	ab, _ := a.ArchiveBytes()
	bbytes, _ := b.ArchiveBytes()
	if !bytes.Equal(ab, bbytes) {
		t.Fatal("two builds with the same options produced different archives")
	}
	c := build(t, testimage.WithBusybox(bb), testimage.WithRandomLayer(1<<16, 8))
	if c.Manifest.Digest == a.Manifest.Digest {
		t.Fatal("a different random seed gave the same image")
	}
}

func TestArchiveIsAConsistentOCILayout(t *testing.T) {
	img := build(t, testimage.WithBusybox(fakeBusybox(t)), testimage.WithRandomLayer(4096, 1))
	l := readLayout(t, img)

	var lay ocispec.ImageLayout
	if err := json.Unmarshal(l.files[ocispec.ImageLayoutFile], &lay); err != nil || lay.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout = %q (%v), want version %s", l.files[ocispec.ImageLayoutFile], err, ocispec.ImageLayoutVersion)
	}
	if last := l.order[len(l.order)-1]; last != ocispec.ImageIndexFile {
		t.Errorf("last file is %s; index.json should come after the blobs it names", last)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(l.files[ocispec.ImageIndexFile], &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json = %+v, want one manifest in a schema 2 OCI index", idx)
	}
	md := idx.Manifests[0]
	if md.Annotations[images.AnnotationImageName] != testimage.DefaultName || md.Annotations[ocispec.AnnotationRefName] != "test" {
		t.Errorf("manifest annotations = %v, want image name %s and ref name test", md.Annotations, testimage.DefaultName)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Errorf("manifest platform = %+v, want linux/%s", md.Platform, runtime.GOARCH)
	}

	var mf ocispec.Manifest
	if err := json.Unmarshal(l.blob(t, md), &mf); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(l.blob(t, mf.Config), &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || strings.Join(cfg.Config.Cmd, " ") != "/bin/sh" {
		t.Errorf("config = %s/%s cmd %v, want linux/%s cmd [/bin/sh]", cfg.OS, cfg.Architecture, cfg.Config.Cmd, runtime.GOARCH)
	}
	if len(mf.Layers) != 2 || len(cfg.RootFS.DiffIDs) != 2 {
		t.Fatalf("manifest has %d layers and config %d diff_ids, want 2 and 2", len(mf.Layers), len(cfg.RootFS.DiffIDs))
	}
	wantTypes := []string{ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayer}
	for i, ld := range mf.Layers {
		if ld.MediaType != wantTypes[i] {
			t.Errorf("layer %d media type %s, want %s", i, ld.MediaType, wantTypes[i])
		}
		if got := digest.FromBytes(uncompressed(t, ld, l.blob(t, ld))); got != cfg.RootFS.DiffIDs[i] {
			t.Errorf("layer %d uncompressed digest %s, config diff_id %s", i, got, cfg.RootFS.DiffIDs[i])
		}
	}
	if len(l.files) != 2+len(mf.Layers)+2 {
		t.Errorf("archive has %d files, want oci-layout, index.json, manifest, config and %d layers", len(l.files), len(mf.Layers))
	}
}

func TestLayerHoldsBusyboxRootfs(t *testing.T) {
	bb := fakeBusybox(t)
	img := build(t, testimage.WithBusybox(bb))
	l := readLayout(t, img)
	want, _ := os.ReadFile(bb)

	tr := tar.NewReader(bytes.NewReader(uncompressed(t, img.Layers[0], l.blob(t, img.Layers[0]))))
	entries := map[string]*tar.Header{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = hdr
		if hdr.Name == "bin/busybox" {
			got, _ := io.ReadAll(tr)
			if !bytes.Equal(got, want) {
				t.Error("bin/busybox in the layer is not the host binary")
			}
		}
	}
	for _, a := range []string{"sh", "echo", "cat", "ls", "sleep", "true", "false", "id", "env"} {
		h := entries["bin/"+a]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s = %+v, want a symlink to busybox", a, h)
		}
	}
	for _, f := range []string{"etc/passwd", "etc/group", "bin/busybox"} {
		if h := entries[f]; h == nil || h.Typeflag != tar.TypeReg {
			t.Errorf("%s missing or not a file", f)
		}
	}
	for dir, mode := range map[string]int64{"proc/": 0o555, "sys/": 0o555, "dev/": 0o755, "tmp/": 0o1777} {
		if h := entries[dir]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != mode {
			t.Errorf("%s = %+v, want a directory with mode %o", dir, h, mode)
		}
	}
	if entries["bin/busybox"].Mode != 0o755 {
		t.Errorf("bin/busybox mode %o, want 755", entries["bin/busybox"].Mode)
	}
}

func TestOptionsNameAndUncompress(t *testing.T) {
	img := build(t, testimage.WithBusybox(fakeBusybox(t)), testimage.WithName("registry.example/a/b:v1"), testimage.WithUncompressed())
	if img.Name != "registry.example/a/b:v1" {
		t.Errorf("Name = %s", img.Name)
	}
	if img.Manifest.Annotations[ocispec.AnnotationRefName] != "v1" || img.Manifest.Annotations[images.AnnotationImageName] != "registry.example/a/b:v1" {
		t.Errorf("annotations = %v", img.Manifest.Annotations)
	}
	if img.Layers[0].MediaType != ocispec.MediaTypeImageLayer || img.DiffIDs[0] != img.Layers[0].Digest {
		t.Errorf("uncompressed layer = %+v, diff_id %s; want a plain tar whose digest is its diff_id", img.Layers[0], img.DiffIDs[0])
	}
	if _, err := testimage.Busybox(testimage.WithBusybox(fakeBusybox(t)), testimage.WithName("Not A Ref")); err == nil {
		t.Error("an invalid image name was accepted")
	}
}

func TestGzipLayersStackInOptionOrder(t *testing.T) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	body := []byte(strings.Repeat("package main\n", 1000))
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "src/main.go", Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	img := build(t, testimage.WithBusybox(fakeBusybox(t)), testimage.WithRandomLayer(1000, 1),
		testimage.WithGzipLayer(tb.Bytes(), gzip.DefaultCompression))
	if len(img.Layers) != 3 {
		t.Fatalf("%d layers, want busybox, the random one, then the gzip one", len(img.Layers))
	}
	if img.Layers[1].MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("second layer is %s, want the random layer (plain tar)", img.Layers[1].MediaType)
	}
	l := img.Layers[2]
	if l.MediaType != ocispec.MediaTypeImageLayerGzip {
		t.Fatalf("third layer is %s, want gzip", l.MediaType)
	}
	blob, ok := img.Blob(l.Digest)
	if !ok || int64(len(blob)) >= int64(tb.Len()) {
		t.Fatalf("gzip layer blob missing or not smaller than its %d-byte tar (%d bytes)", tb.Len(), len(blob))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, tb.Bytes()) {
		t.Error("the gzip layer does not decompress to the tar it was given")
	}
	if img.DiffIDs[2] != digest.FromBytes(tb.Bytes()) {
		t.Errorf("diff_id %s, want the digest of the uncompressed tar", img.DiffIDs[2])
	}
}

func TestMissingBusyboxFailsWithInstallHint(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := testimage.Busybox()
	if err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Fatalf("err = %v, want one naming busybox-static", err)
	}
}

func TestDynamicBusyboxIsRejected(t *testing.T) {
	exe, err := os.Executable() // the test binary: dynamically linked only with cgo
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/bin/ls", "/usr/bin/ls", exe} {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b[:min(len(b), 4096)], []byte("ld-linux")) {
			if _, err := testimage.Busybox(testimage.WithBusybox(p)); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
				t.Fatalf("Busybox(%s) err = %v, want a dynamically linked error", p, err)
			}
			return
		}
	}
	t.Skip("no dynamically linked binary found to test with")
}

// TestContainerdImporterAcceptsArchive feeds the archive to containerd's own
// client-side importer (what `ctr images import` and Client.Import run)
// against an in-memory store, then resolves the image the way an unpack
// would.
func TestContainerdImporterAcceptsArchive(t *testing.T) {
	opts := []testimage.Option{testimage.WithRandomLayer(1<<20, 3)}
	if _, err := testimage.BusyboxPath(); err != nil {
		opts = append(opts, testimage.WithBusybox(fakeBusybox(t)))
	}
	img := build(t, opts...)
	ctx := context.Background()
	store := memstore.New()
	r, err := img.Archive()
	if err != nil {
		t.Fatal(err)
	}
	desc, err := archive.ImportIndex(ctx, store, r)
	if err != nil {
		t.Fatalf("containerd's ImportIndex rejected the archive: %v", err)
	}
	if desc.Digest != img.Index.Digest || desc.MediaType != ocispec.MediaTypeImageIndex {
		t.Fatalf("import returned %+v, want the index %s", desc, img.Index.Digest)
	}

	mf, err := images.Manifest(ctx, store, desc, platforms.Default())
	if err != nil {
		t.Fatalf("resolve manifest for %s: %v", platforms.DefaultString(), err)
	}
	if mf.Config.Digest != img.Config.Digest || len(mf.Layers) != len(img.Layers) {
		t.Fatalf("resolved manifest %+v, want config %s and %d layers", mf, img.Config.Digest, len(img.Layers))
	}
	available, required, _, missing, err := images.Check(ctx, store, desc, platforms.Default())
	if err != nil || !available || len(missing) != 0 || len(required) != 1+len(img.Layers) {
		t.Fatalf("images.Check: available=%v required=%d missing=%v err=%v", available, len(required), missing, err)
	}
	diffIDs, err := images.RootFS(ctx, store, mf.Config)
	if err != nil || len(diffIDs) != len(img.DiffIDs) {
		t.Fatalf("rootfs diff_ids %v (%v), want %v", diffIDs, err, img.DiffIDs)
	}

	// Client.Import names images from the manifest annotations in the
	// index; check they survived the import.
	b, ok := store.Bytes(desc.Digest)
	if !ok {
		t.Fatal("index.json was not stored")
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	if got := idx.Manifests[0].Annotations[images.AnnotationImageName]; got != testimage.DefaultName {
		t.Errorf("imported index names the image %q, want %q", got, testimage.DefaultName)
	}
}

func TestRealBusyboxIsStatic(t *testing.T) {
	if _, err := testimage.BusyboxPath(); err != nil {
		t.Skipf("%v", err)
	}
	img := build(t)
	if len(img.Layers) != 1 || img.Layers[0].Size < 100_000 {
		t.Fatalf("layers = %+v, want one layer holding busybox", img.Layers)
	}
}
