package diff

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	cdiff "github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// sampleLayer has one of everything a layer carries that works without root.
func sampleLayer(t testing.TB) []byte {
	xattrFile := file("etc/with-xattr", "x", 0o600)
	xattrFile.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.flotilla": "yes"}
	fifo := entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o620}}
	return buildTar(t,
		dir("etc", 0o755),
		file("etc/hostname", "flotilla\n", 0o644),
		file("etc/secret", "s3cr3t", 0o4750),
		xattrFile,
		dir("usr/bin", 0o711),
		file("usr/bin/tool", "#!/bin/sh\necho hi\n", 0o755),
		hardlink("usr/bin/tool-alias", "usr/bin/tool", 0o755),
		symlink("bin", "usr/bin"),
		symlink("etc/abs", "/etc/hostname"),
		fifo,
	)
}

func TestApplyUnpacksEveryCompressionAndMediaType(t *testing.T) {
	layer := sampleLayer(t)
	diffID := digest.FromBytes(layer)
	cases := []struct {
		name, mediaType string
		blob            []byte
	}{
		{"oci tar", ocispec.MediaTypeImageLayer, layer},
		{"oci gzip", ocispec.MediaTypeImageLayerGzip, gzipBytes(t, layer)},
		{"oci zstd", ocispec.MediaTypeImageLayerZstd, zstdBytes(t, layer)},
		{"docker gzip", images.MediaTypeDockerSchema2LayerGzip, gzipBytes(t, layer)},
		{"docker tar", images.MediaTypeDockerSchema2Layer, layer},
		// Old Docker images label plain tars as gzip: the blob decides.
		{"docker gzip that is a tar", images.MediaTypeDockerSchema2LayerGzip, layer},
		{"docker foreign gzip", images.MediaTypeDockerSchema2LayerForeignGzip, gzipBytes(t, layer)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc, cs := newTestService(t)
			desc := cs.add(tc.mediaType, tc.blob)
			root := t.TempDir()
			var progress []int64
			applied, err := svc.Apply(context.Background(), desc, bindMount(root),
				func(_ context.Context, _ ocispec.Descriptor, c *cdiff.ApplyConfig) error {
					c.Progress = func(n int64) { progress = append(progress, n) }
					return nil
				})
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			want := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: diffID, Size: int64(len(layer))}
			if applied.MediaType != want.MediaType || applied.Digest != want.Digest || applied.Size != want.Size {
				t.Errorf("applied descriptor = %+v, want %+v", applied, want)
			}
			if len(progress) == 0 || progress[0] != 0 || progress[len(progress)-1] != desc.Size {
				t.Errorf("progress = %v, want 0 ... %d", progress, desc.Size)
			}
			checkSampleTree(t, root)
		})
	}
}

func checkSampleTree(t *testing.T, root string) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Errorf("read %s: %v", p, err)
		}
		return string(b)
	}
	if got := read("etc/hostname"); got != "flotilla\n" {
		t.Errorf("etc/hostname = %q", got)
	}
	modes := map[string]os.FileMode{
		"etc/hostname":   0o644,
		"etc/secret":     0o750 | os.ModeSetuid,
		"usr/bin":        0o711 | os.ModeDir,
		"usr/bin/tool":   0o755,
		"run/fifo":       0o620 | os.ModeNamedPipe,
		"etc/with-xattr": 0o600,
	}
	for p, want := range modes {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if fi.Mode() != want {
			t.Errorf("%s mode = %v, want %v", p, fi.Mode(), want)
		}
	}
	for link, want := range map[string]string{"bin": "usr/bin", "etc/abs": "/etc/hostname"} {
		if got, err := os.Readlink(filepath.Join(root, link)); err != nil || got != want {
			t.Errorf("symlink %s -> %q (%v), want %q", link, got, err, want)
		}
	}
	a, b := statOf(t, filepath.Join(root, "usr/bin/tool")), statOf(t, filepath.Join(root, "usr/bin/tool-alias"))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard link: inodes %d/%d nlink %d, want one inode with two links", a.Ino, b.Ino, a.Nlink)
	}
	v := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(root, "etc/with-xattr"), "user.flotilla", v); err != nil || string(v[:n]) != "yes" {
		t.Errorf("xattr user.flotilla = %q (%v), want yes", v[:max(n, 0)], err)
	}
	if st := statOf(t, filepath.Join(root, "etc/hostname")); st.Mtim.Sec != 1700000000 {
		t.Errorf("mtime = %d, want the layer's", st.Mtim.Sec)
	}
}

func TestApplyPreservesOwnershipAndDeviceNodes(t *testing.T) {
	requireRoot(t)
	owned := file("home/user/.profile", "x", 0o640)
	owned.hdr.Uid, owned.hdr.Gid = 1234, 5678
	null := entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}
	loop := entry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop9", Mode: 0o660, Devmajor: 7, Devminor: 9}}
	trusted := file("trusted", "x", 0o644)
	trusted.hdr.PAXRecords = map[string]string{"SCHILY.xattr.trusted.flotilla": "t"}
	svc, cs := newTestService(t)
	desc := cs.add(ocispec.MediaTypeImageLayerGzip, gzipBytes(t, buildTar(t, owned, null, loop, trusted)))
	root := t.TempDir()
	if _, err := svc.Apply(context.Background(), desc, bindMount(root)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if st := statOf(t, filepath.Join(root, "home/user/.profile")); st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("owner = %d:%d, want 1234:5678", st.Uid, st.Gid)
	}
	if st := statOf(t, filepath.Join(root, "dev/null")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("dev/null mode %o rdev %d, want char 1:3", st.Mode, st.Rdev)
	}
	if st := statOf(t, filepath.Join(root, "dev/loop9")); st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != unix.Mkdev(7, 9) {
		t.Errorf("dev/loop9 mode %o rdev %d, want block 7:9", st.Mode, st.Rdev)
	}
	// pkg/archive never sets trusted.* attributes from a layer: they
	// steer the kernel (overlayfs among others), not the image.
	if _, err := unix.Lgetxattr(filepath.Join(root, "trusted"), "trusted.flotilla", make([]byte, 8)); err == nil {
		t.Error("trusted.flotilla xattr was set from the layer")
	}
}

func TestApplyWhiteoutsRemoveFilesOnPlainDirectory(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"keep", "gone", "opaque/old", "opaque/sub/older", "dir-gone/x"} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte("lower"), 0o644)
	}
	svc, cs := newTestService(t)
	desc := cs.add(ocispec.MediaTypeImageLayerGzip, gzipBytes(t, buildTar(t,
		file(".wh.gone", "", 0),
		file(".wh.dir-gone", "", 0),
		file("opaque/new", "upper", 0o644),
		file("opaque/.wh..wh..opq", "", 0),
	)))
	if _, err := svc.Apply(context.Background(), desc, bindMount(root)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for p, exists := range map[string]bool{
		"keep": true, "gone": false, "dir-gone": false, "opaque/new": true,
		"opaque/old": false, "opaque/sub": false, ".wh.gone": false, "opaque/.wh..wh..opq": false,
	} {
		if _, err := os.Lstat(filepath.Join(root, p)); (err == nil) != exists {
			t.Errorf("%s exists = %v, want %v", p, err == nil, exists)
		}
	}
}

// overlayFixture is an overlay snapshot as the overlayfs snapshotter lays
// it out: one lower layer, an empty upper and a work directory.
type overlayFixture struct {
	lower, upper, work string
}

func newOverlayFixture(t *testing.T) overlayFixture {
	base := t.TempDir()
	f := overlayFixture{filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work")}
	for _, d := range []string{f.lower, f.upper, f.work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f overlayFixture) mounts() []mount.Mount {
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "workdir=" + f.work, "upperdir=" + f.upper, "lowerdir=" + f.lower,
	}}}
}

func TestApplyOnOverlayWritesOverlayWhiteouts(t *testing.T) {
	requireRoot(t)
	f := newOverlayFixture(t)
	for _, p := range []string{"keep", "gone", "opaque/old", "plain/x"} {
		os.MkdirAll(filepath.Dir(filepath.Join(f.lower, p)), 0o755)
		os.WriteFile(filepath.Join(f.lower, p), []byte("lower"), 0o644)
	}
	os.Chmod(filepath.Join(f.lower, "plain"), 0o700)
	svc, cs := newTestService(t)
	desc := cs.add(ocispec.MediaTypeImageLayerGzip, gzipBytes(t, buildTar(t,
		file(".wh.gone", "", 0),
		file("opaque/.wh..wh..opq", "", 0),
		file("opaque/new", "upper", 0o644),
		file("plain/deeper/y", "upper", 0o644), // parent "plain" only exists below
	)))
	if _, err := svc.Apply(context.Background(), desc, f.mounts()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if st := statOf(t, filepath.Join(f.upper, "gone")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("upper/gone mode %o rdev %d, want a 0/0 character device", st.Mode, st.Rdev)
	}
	v := make([]byte, 4)
	if n, err := unix.Lgetxattr(filepath.Join(f.upper, "opaque"), "trusted.overlay.opaque", v); err != nil || string(v[:n]) != "y" {
		t.Errorf("upper/opaque trusted.overlay.opaque = %q (%v), want y", v[:max(n, 0)], err)
	}
	if fi, err := os.Stat(filepath.Join(f.upper, "plain")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("upper/plain inherits lower's mode: got %v (%v), want 0700", fi.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join(f.upper, ".wh.gone")); err == nil {
		t.Error("the OCI whiteout file itself was written to upper")
	}

	// And the kernel agrees: the merged view shows what the layer says.
	merged := t.TempDir()
	if err := mount.All(f.mounts(), merged); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer mount.UnmountAll(merged, 0)
	for p, exists := range map[string]bool{"keep": true, "gone": false, "opaque/old": false, "opaque/new": true, "plain/x": true, "plain/deeper/y": true} {
		if _, err := os.Lstat(filepath.Join(merged, p)); (err == nil) != exists {
			t.Errorf("merged %s exists = %v, want %v", p, err == nil, exists)
		}
	}
}

func TestApplyThroughTemporaryMount(t *testing.T) {
	requireRoot(t)
	// A read-write bind mount with an option the fast path does not know
	// is mounted for real.
	root := t.TempDir()
	svc, cs := newTestService(t)
	desc := cs.add(ocispec.MediaTypeImageLayerGzip, gzipBytes(t, sampleLayer(t)))
	mounts := []mount.Mount{{Type: "bind", Source: root, Options: []string{"rbind", "rw", "nosuid"}}}
	if _, err := svc.Apply(context.Background(), desc, mounts); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checkSampleTree(t, root)
}

func TestApplyRefusesBlobThatDoesNotMatchItsDigest(t *testing.T) {
	svc, cs := newTestService(t)
	good := gzipBytes(t, sampleLayer(t))
	bad := gzipBytes(t, buildTar(t, file("other", "x", 0o644)))
	claimed := digest.FromBytes(good)
	cs.put(claimed, bad)

	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: claimed, Size: int64(len(bad))}
	_, err := svc.Apply(context.Background(), desc, bindMount(t.TempDir()))
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("digest mismatch: err = %v, want FailedPrecondition", err)
	}
	desc.Size = int64(len(good))
	_, err = svc.Apply(context.Background(), desc, bindMount(t.TempDir()))
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("size mismatch: err = %v, want FailedPrecondition", err)
	}
}

func TestApplyRefusesUnsupportedMediaTypes(t *testing.T) {
	svc, cs := newTestService(t)
	blob := gzipBytes(t, sampleLayer(t))
	for _, mt := range []string{
		ocispec.MediaTypeImageLayerGzip + "+encrypted",
		"application/vnd.oci.image.layer.v1.tar+bzip2",
		ocispec.MediaTypeImageConfig,
		images.MediaTypeDockerSchema2LayerGzip + "+encrypted",
		"",
	} {
		desc := cs.add(mt, blob)
		if _, err := svc.Apply(context.Background(), desc, bindMount(t.TempDir())); !errdefs.IsNotImplemented(err) {
			t.Errorf("media type %q: err = %v, want NotImplemented", mt, err)
		}
	}
}

func TestApplyReportsMissingBlobAndMalformedLayers(t *testing.T) {
	svc, cs := newTestService(t)
	missing := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("nope"), Size: 4}
	if _, err := svc.Apply(context.Background(), missing, bindMount(t.TempDir())); !errdefs.IsNotFound(err) {
		t.Errorf("missing blob: err = %v, want NotFound", err)
	}
	gz := gzipBytes(t, sampleLayer(t))
	corrupt := append([]byte{}, gz...)
	corrupt[len(corrupt)/2] ^= 0xff
	truncated := gz[:len(gz)/2]
	tarTruncated := sampleLayer(t)[:700]
	for name, blob := range map[string][]byte{
		"corrupt gzip":   corrupt,
		"truncated gzip": truncated,
		"truncated tar":  tarTruncated,
		"garbage":        []byte("this is not a layer at all, not even close......................"),
	} {
		desc := cs.add(ocispec.MediaTypeImageLayerGzip, blob)
		if _, err := svc.Apply(context.Background(), desc, bindMount(t.TempDir())); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: err = %v, want InvalidArgument", name, err)
		}
	}
}

// nerdctl passes imgcrypt's payloads with every layer it unpacks; containerd
// hands them to a stream processor for the layer's media type and ignores
// them otherwise. An encrypted layer with no processor to decrypt it is
// refused, naming its media type.
func TestApplyIgnoresPayloadsUnlessTheLayerNeedsAProcessor(t *testing.T) {
	svc, cs := newTestService(t)
	withPayload := func(_ context.Context, _ ocispec.Descriptor, c *cdiff.ApplyConfig) error {
		c.ProcessorPayloads = map[string]typeurl.Any{"io.containerd.ocicrypt.decoder.v1.tar": nil}
		return nil
	}
	plain := cs.add(ocispec.MediaTypeImageLayerGzip, gzipBytes(t, sampleLayer(t)))
	dir := t.TempDir()
	if _, err := svc.Apply(context.Background(), plain, bindMount(dir), withPayload); err != nil {
		t.Fatalf("plain gzip layer with payloads: %v", err)
	}
	checkSampleTree(t, dir)
	encrypted := cs.add(ocispec.MediaTypeImageLayerGzip+"+encrypted", gzipBytes(t, sampleLayer(t)))
	_, err := svc.Apply(context.Background(), encrypted, bindMount(t.TempDir()), withPayload)
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), encrypted.MediaType) {
		t.Errorf("encrypted layer: err = %v, want NotImplemented naming %q", err, encrypted.MediaType)
	}
}

// The layer used by the benchmark-sized test: many files, so that the
// pipeline (read ahead, decompress, write) is exercised past its buffers.
func TestApplyLargeLayerMatchesGNUTar(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	var entries []entry
	for i := range 300 {
		body := make([]byte, 1+i*997%60000)
		for j := range body {
			body[j] = byte(i*31 + j*7)
		}
		entries = append(entries, file(fmt.Sprintf("d/%c/f%d", 'a'+i%26, i), string(body), 0o644))
	}
	layer := buildTar(t, entries...)
	svc, cs := newTestService(t)
	desc := cs.add(ocispec.MediaTypeImageLayerZstd, zstdBytes(t, layer))
	ours := t.TempDir()
	if _, err := svc.Apply(context.Background(), desc, bindMount(ours)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	theirs := t.TempDir()
	tarFile := filepath.Join(t.TempDir(), "layer.tar")
	os.WriteFile(tarFile, layer, 0o644)
	if out, err := exec.Command("tar", "-xpf", tarFile, "-C", theirs).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if d := diffStates(treeState(t, ours, true), treeState(t, theirs, true)); d != "" {
		t.Errorf("Apply and GNU tar disagree:\n%s", d)
	}
}
