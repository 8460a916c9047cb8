// Package testimage builds small OCI image archives for tests and benchmarks,
// deterministically and without network: the same options give the same
// bytes, so the same digests, on every run with the same host busybox and Go
// toolchain.
//
// The archive is an OCI image layout in a tar stream (oci-layout, index.json,
// blobs/sha256/...), which `ctr images import` and the containerd client's
// Import accept. The root filesystem is the host's static busybox with a
// handful of applet symlinks and the files a container expects (/etc/passwd,
// /tmp, mount points), enough to run `/bin/sh -c ...` in a container.
package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // go-digest's sha256 needs the hash registered
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultName is the image name used when WithName is not given.
const DefaultName = "docker.io/flotilla/busybox:test"

// Applets are the busybox applets linked into /bin.
var Applets = []string{
	"sh", "ash", "echo", "cat", "ls", "sleep", "true", "false", "id", "env",
	"mkdir", "rm", "cp", "mv", "ln", "touch", "chmod", "pwd", "ps", "kill",
	"hostname", "uname", "grep", "sed", "head", "tail", "wc", "test", "[",
	"printf", "date", "stat", "mount", "umount", "ip", "ifconfig", "nc",
	"wget", "dd", "sync", "whoami", "which", "seq", "xargs", "top", "df",
}

// epoch is every timestamp in the image: fixed so that digests do not depend
// on when the image was built.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Image is a built image: its descriptors and the blobs behind them.
type Image struct {
	// Name is the image name recorded in index.json.
	Name string
	// Index describes index.json itself (not stored as a blob in the layout,
	// but what containerd's importer returns for the archive).
	Index ocispec.Descriptor
	// Manifest is the image manifest, as listed in index.json (with platform
	// and name annotations).
	Manifest ocispec.Descriptor
	// Config is the image config.
	Config ocispec.Descriptor
	// Layers are the layer blobs, bottom first.
	Layers []ocispec.Descriptor
	// DiffIDs are the digests of the uncompressed layers, as in the config.
	DiffIDs []digest.Digest

	index []byte
	blobs map[digest.Digest][]byte

	archiveOnce sync.Once
	archive     []byte
	archiveErr  error
}

type options struct {
	name         string
	uncompressed bool
	layers       []extraLayer // above busybox, in the order of the options
	busybox      string
}

// extraLayer is a layer above busybox: size bytes of random data from seed,
// or, when tar is set, that tar gzipped at gzipLevel.
type extraLayer struct {
	size, seed int64
	tar        []byte
	gzipLevel  int
}

// Option changes what Busybox builds.
type Option func(*options)

// WithName names the image: index.json carries the full name in the
// io.containerd.image.name annotation and the tag in
// org.opencontainers.image.ref.name, as containerd's exporter writes them.
func WithName(ref string) Option {
	return func(o *options) { o.name = ref }
}

// WithRandomLayer adds a layer holding one file of size bytes of
// pseudo-random data drawn from seed: incompressible, so it stays an
// uncompressed tar, for benchmarks that need volume.
func WithRandomLayer(size, seed int64) Option {
	return func(o *options) { o.layers = append(o.layers, extraLayer{size: size, seed: seed}) }
}

// WithGzipLayer adds a layer made of a tar stream the caller built (ordinary
// files, say), gzip-compressed at level (compress/gzip's levels:
// gzip.DefaultCompression is what image builders use): a layer as a
// registry holds one. Layers are stacked in the order of the options.
func WithGzipLayer(tar []byte, level int) Option {
	return func(o *options) { o.layers = append(o.layers, extraLayer{tar: tar, gzipLevel: level}) }
}

// WithUncompressed stores the busybox layer as a plain tar instead of gzip.
func WithUncompressed() Option {
	return func(o *options) { o.uncompressed = true }
}

// WithBusybox uses the static busybox binary at path instead of the one
// found on $PATH.
func WithBusybox(path string) Option {
	return func(o *options) { o.busybox = path }
}

// BusyboxPath finds the host's busybox, which must be statically linked to
// run inside an image that has no libc.
func BusyboxPath() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("testimage: busybox not found on PATH (install Debian's busybox-static, e.g. `make test-deps`): %w", err)
	}
	return p, nil
}

// Busybox builds a busybox image.
func Busybox(opts ...Option) (*Image, error) {
	o := options{name: DefaultName}
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := reference.Parse(o.name); err != nil {
		return nil, fmt.Errorf("testimage: image name %q: %w", o.name, err)
	}
	if o.busybox == "" {
		p, err := BusyboxPath()
		if err != nil {
			return nil, err
		}
		o.busybox = p
	}
	bb, err := os.ReadFile(o.busybox)
	if err != nil {
		return nil, fmt.Errorf("testimage: read busybox: %w", err)
	}
	if isDynamicELF(bb) {
		return nil, fmt.Errorf("testimage: %s is dynamically linked; the image needs a static busybox (Debian's busybox-static)", o.busybox)
	}

	img := &Image{Name: o.name, blobs: map[digest.Digest][]byte{}}

	rootfs, err := busyboxTar(bb)
	if err != nil {
		return nil, err
	}
	level := gzip.BestSpeed
	if o.uncompressed {
		level = noGzip
	}
	if err := img.addLayer(rootfs, level); err != nil {
		return nil, err
	}
	for _, l := range o.layers {
		if l.tar != nil {
			if err := img.addLayer(l.tar, l.gzipLevel); err != nil {
				return nil, err
			}
			continue
		}
		t, err := randomTar(l.size, l.seed)
		if err != nil {
			return nil, err
		}
		if err := img.addLayer(t, noGzip); err != nil {
			return nil, err
		}
	}

	platform := platforms.DefaultSpec()
	platform.OS = "linux"
	platform.OSVersion, platform.OSFeatures = "", nil
	created := epoch
	cfg := ocispec.Image{
		Created:  &created,
		Platform: platform,
		Config: ocispec.ImageConfig{
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd:        []string{"/bin/sh"},
			WorkingDir: "/",
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: img.DiffIDs},
	}
	if img.Config, err = img.addJSON(ocispec.MediaTypeImageConfig, cfg); err != nil {
		return nil, err
	}

	mf := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    img.Config,
		Layers:    img.Layers,
	}
	if img.Manifest, err = img.addJSON(ocispec.MediaTypeImageManifest, mf); err != nil {
		return nil, err
	}
	img.Manifest.Platform = &platform
	img.Manifest.Annotations = map[string]string{
		images.AnnotationImageName: o.name,
		ocispec.AnnotationRefName:  refName(o.name),
	}

	idx := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{img.Manifest},
	}
	if img.index, err = json.Marshal(idx); err != nil {
		return nil, fmt.Errorf("testimage: marshal index: %w", err)
	}
	img.Index = ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageIndex,
		Digest:    digest.FromBytes(img.index),
		Size:      int64(len(img.index)),
	}
	return img, nil
}

// Blob returns the content of a blob of the image (config, manifest or
// layer), or false if the image has no such blob.
func (img *Image) Blob(d digest.Digest) ([]byte, bool) {
	b, ok := img.blobs[d]
	return b, ok
}

// Blobs lists the digests of every blob in the layout: layers, config and
// manifest.
func (img *Image) Blobs() []ocispec.Descriptor {
	out := append([]ocispec.Descriptor{}, img.Layers...)
	cfg, mf := img.Config, img.Manifest
	mf.Platform, mf.Annotations = nil, nil
	return append(out, cfg, mf)
}

// IndexJSON is the content of index.json.
func (img *Image) IndexJSON() []byte { return img.index }

// Archive returns the image as an OCI layout tar stream. The archive is built
// once and kept, so repeated imports (benchmarks) measure the import, not the
// build.
func (img *Image) Archive() (io.Reader, error) {
	b, err := img.ArchiveBytes()
	if err != nil {
		return nil, err
	}
	return bytes.NewReader(b), nil
}

// ArchiveBytes is Archive as one byte slice, shared: do not modify it.
func (img *Image) ArchiveBytes() ([]byte, error) {
	img.archiveOnce.Do(func() {
		var buf bytes.Buffer
		img.archiveErr = img.WriteArchive(&buf)
		img.archive = buf.Bytes()
	})
	return img.archive, img.archiveErr
}

// WriteArchive writes the image as an OCI layout tar stream to w.
func (img *Image) WriteArchive(w io.Writer) error {
	tw := tar.NewWriter(w)
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
			return fmt.Errorf("testimage: write archive: %w", err)
		}
	}
	// Blobs first, index last: an importer streaming the tar sees every
	// blob before the index that points at them.
	for _, d := range img.Blobs() {
		if err := writeFile(tw, "blobs/sha256/"+d.Digest.Encoded(), 0o644, img.blobs[d.Digest]); err != nil {
			return err
		}
	}
	if err := writeFile(tw, ocispec.ImageLayoutFile, 0o644, layout); err != nil {
		return err
	}
	if err := writeFile(tw, ocispec.ImageIndexFile, 0o644, img.index); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("testimage: write archive: %w", err)
	}
	return nil
}

// noGzip is addLayer's level for a layer stored as a plain tar.
const noGzip = -100

// addLayer stores a layer tar, gzip-compressed at level unless level is
// noGzip.
func (img *Image) addLayer(t []byte, level int) error {
	diffID := digest.FromBytes(t)
	blob, mediaType := t, ocispec.MediaTypeImageLayer
	if level != noGzip {
		var buf bytes.Buffer
		// The gzip header is left at its zero values (no name, no mtime,
		// OS "unknown") so that it does not vary between builds.
		zw, err := gzip.NewWriterLevel(&buf, level)
		if err != nil {
			return err
		}
		if _, err := zw.Write(t); err != nil {
			return fmt.Errorf("testimage: compress layer: %w", err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("testimage: compress layer: %w", err)
		}
		blob, mediaType = buf.Bytes(), ocispec.MediaTypeImageLayerGzip
	}
	d := digest.FromBytes(blob)
	img.blobs[d] = blob
	img.Layers = append(img.Layers, ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(blob))})
	img.DiffIDs = append(img.DiffIDs, diffID)
	return nil
}

func (img *Image) addJSON(mediaType string, v any) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("testimage: marshal %s: %w", mediaType, err)
	}
	d := digest.FromBytes(b)
	img.blobs[d] = b
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}, nil
}

// busyboxTar is the root filesystem layer.
func busyboxTar(bb []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatUSTAR})
	}
	steps := []func() error{
		func() error { return dir("bin", 0o755) },
		func() error { return writeFile(tw, "bin/busybox", 0o755, bb) },
	}
	for _, a := range Applets {
		steps = append(steps, func() error {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: epoch, Format: tar.FormatUSTAR})
		})
	}
	steps = append(steps,
		func() error { return dir("dev", 0o755) },
		func() error { return dir("etc", 0o755) },
		func() error {
			return writeFile(tw, "etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
		},
		func() error { return writeFile(tw, "etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")) },
		func() error { return writeFile(tw, "etc/hostname", 0o644, []byte("busybox\n")) },
		func() error { return dir("proc", 0o555) },
		func() error { return dir("root", 0o700) },
		func() error { return dir("sys", 0o555) },
		// 01777: world-writable with the sticky bit, as /tmp must be.
		func() error { return dir("tmp", 0o1777) },
		func() error { return dir("var", 0o755) },
	)
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, fmt.Errorf("testimage: build rootfs: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("testimage: build rootfs: %w", err)
	}
	return buf.Bytes(), nil
}

// randomTar is a layer with one file of pseudo-random bytes.
func randomTar(size, seed int64) ([]byte, error) {
	if size < 0 {
		return nil, errors.New("testimage: negative random layer size")
	}
	var buf bytes.Buffer
	buf.Grow(int(size) + 4096)
	tw := tar.NewWriter(&buf)
	name := fmt.Sprintf("random-%d.bin", seed)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return nil, fmt.Errorf("testimage: random layer: %w", err)
	}
	if _, err := io.CopyN(tw, RandomReader(seed), size); err != nil {
		return nil, fmt.Errorf("testimage: random layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("testimage: random layer: %w", err)
	}
	return buf.Bytes(), nil
}

// RandomReader is an endless stream of pseudo-random bytes drawn from seed,
// the same for the same seed.
func RandomReader(seed int64) io.Reader {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(uint64(seed) >> (8 * i))
	}
	return rand.NewChaCha8(key)
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return fmt.Errorf("testimage: write %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("testimage: write %s: %w", name, err)
	}
	return nil
}

// refName is the OCI ref.name annotation: the tag alone, as the OCI layout
// spec suggests and containerd's exporter writes, or the full name when the
// reference has no tag.
func refName(name string) string {
	if spec, err := reference.Parse(name); err == nil && spec.Object != "" && !strings.HasPrefix(spec.Object, "@") {
		return spec.Object
	}
	return name
}

// isDynamicELF reports whether b is an ELF executable with a program
// interpreter, i.e. one that needs a dynamic loader and a libc the image does
// not have.
func isDynamicELF(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}
