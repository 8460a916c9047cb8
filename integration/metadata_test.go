package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// imageArchive builds the busybox test image and writes its archive to a
// file for ctr.
func imageArchive(t *testing.T, opts ...testimage.Option) (*testimage.Image, string) {
	t.Helper()
	img, err := testimage.Busybox(opts...)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := img.WriteArchive(f); err != nil {
		t.Fatal(err)
	}
	return img, p
}

// archiveBlobs lists the digests of the blobs in an OCI archive.
func archiveBlobs(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if dir, hexd := filepath.Split(h.Name); h.Typeflag == tar.TypeReg && strings.HasSuffix(filepath.Clean(dir), "blobs/sha256") {
			sum := sha256.New()
			if _, err := io.Copy(sum, tr); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(sum.Sum(nil)); got != hexd {
				t.Fatalf("blob %s in %s holds data of digest %s", hexd, path, got)
			}
			out = append(out, "sha256:"+hexd)
		}
	}
	sort.Strings(out)
	return out
}

// diskBlobs lists the blobs in the content service's root.
func (d *daemon) diskBlobs() []string {
	entries, _ := os.ReadDir(filepath.Join(d.root, "content", "blobs", "sha256"))
	var out []string
	for _, e := range entries {
		out = append(out, "sha256:"+e.Name())
	}
	return out
}

// contentDigests is the DIGEST column of `ctr content ls`.
func contentDigests(out string) []string {
	var ds []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			ds = append(ds, f[0])
		}
	}
	sort.Strings(ds)
	return ds
}

func TestCtrNamespacesLifecycle(t *testing.T) {
	d := newDaemon(t).start()
	d.mustCtr("namespaces", "create", "team-a", "owner=alice")
	if out := d.mustCtr("namespaces", "ls"); !strings.Contains(out, "team-a") || !strings.Contains(out, "owner=alice") {
		t.Fatalf("ctr namespaces ls does not show the new namespace with its label:\n%s", out)
	}
	d.mustCtr("namespaces", "label", "team-a", "owner=bob", "tier=gold")
	if out := d.mustCtr("namespaces", "ls"); !strings.Contains(out, "owner=bob") || !strings.Contains(out, "tier=gold") {
		t.Fatalf("labels not updated:\n%s", out)
	}
	if out, err := d.ctr("namespaces", "create", "team-a"); err == nil || !strings.Contains(out, "already exists") {
		t.Fatalf("creating an existing namespace: err=%v\n%s", err, out)
	}

	// A namespace that holds something cannot go.
	d.ctrStdinMust(strings.NewReader("some bytes"), "-n", "team-a", "content", "ingest", "held")
	out, err := d.ctr("namespaces", "rm", "team-a")
	if err == nil || !strings.Contains(out, "failed precondition") || !strings.Contains(out, "blobs") {
		t.Fatalf("removing a non-empty namespace: err=%v, want FailedPrecondition naming blobs\n%s", err, out)
	}
	dgst := digest.FromString("some bytes").String()
	d.mustCtr("-n", "team-a", "content", "rm", dgst)
	d.mustCtr("namespaces", "rm", "team-a")
	if out := d.mustCtr("namespaces", "ls"); strings.Contains(out, "team-a") {
		t.Fatalf("namespace still listed after rm:\n%s", out)
	}
}

func TestCtrImageImportListExportRemove(t *testing.T) {
	d := newDaemon(t).start()
	img, archive := imageArchive(t)
	want := archiveBlobs(t, archive)

	d.mustCtr("images", "import", "--no-unpack", archive)
	if out := d.mustCtr("images", "ls"); !strings.Contains(out, img.Name) || !strings.Contains(out, img.Manifest.Digest.String()) {
		t.Fatalf("ctr images ls does not show %s at %s:\n%s", img.Name, img.Manifest.Digest, out)
	}
	have := contentDigests(d.mustCtr("content", "ls"))
	for _, b := range want {
		if !contains(have, b) {
			t.Errorf("blob %s of the archive is not in ctr content ls: %v", b, have)
		}
	}
	out := d.mustCtr("content", "ls")
	if !strings.Contains(out, "containerd.io/gc.ref.content.l.0="+img.Layers[0].Digest.String()) {
		t.Errorf("the manifest does not carry its gc reference labels:\n%s", out)
	}

	exported := filepath.Join(t.TempDir(), "export.tar")
	d.mustCtr("images", "export", exported, img.Name)
	got := archiveBlobs(t, exported)
	for _, b := range []string{img.Manifest.Digest.String(), img.Config.Digest.String(), img.Layers[0].Digest.String()} {
		if !contains(got, b) {
			t.Errorf("exported archive lacks blob %s (has %v)", b, got)
		}
	}

	d.mustCtr("images", "rm", img.Name)
	waitFor(t, 5*time.Second, "the image's blobs to be collected", func() bool {
		return len(d.diskBlobs()) == 0
	})
	if out := d.mustCtr("content", "ls"); len(contentDigests(out)) != 0 {
		t.Fatalf("content still listed after the image was removed and collected:\n%s", out)
	}
	if out := d.mustCtr("images", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("image still listed after rm:\n%s", out)
	}
}

func TestImageInOneNamespaceIsInvisibleFromAnother(t *testing.T) {
	d := newDaemon(t).start()
	img, archive := imageArchive(t)
	d.mustCtr("-n", "a", "images", "import", "--no-unpack", archive)

	if out := d.mustCtr("-n", "b", "images", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("namespace b lists namespace a's image:\n%s", out)
	}
	if out := d.mustCtr("-n", "b", "content", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("namespace b lists namespace a's content:\n%s", out)
	}
	out, err := d.ctr("-n", "b", "content", "get", img.Manifest.Digest.String())
	if err == nil || !strings.Contains(out, "not found") {
		t.Fatalf("namespace b read namespace a's manifest: err=%v\n%s", err, out)
	}
	// Namespace b writing the same bytes (in a lease, so no collection can
	// take them before it references them) sees them as its own, and
	// removing them there leaves a's copy intact.
	manifest := d.mustCtr("-n", "a", "content", "get", img.Manifest.Digest.String())
	client := d.client()
	bctx := namespaces.WithNamespace(context.Background(), "b")
	l, err := client.LeasesService().Create(bctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	if err := content.WriteBlob(leases.WithLease(bctx, l.ID), client.ContentStore(), "m", strings.NewReader(manifest), img.Manifest); err != nil {
		t.Fatalf("namespace b writing bytes namespace a holds: %v", err)
	}
	if out := d.mustCtr("-n", "b", "content", "ls", "-q"); !strings.Contains(out, img.Manifest.Digest.String()) {
		t.Fatalf("namespace b does not see the bytes it wrote:\n%s", out)
	}
	d.mustCtr("-n", "b", "content", "rm", img.Manifest.Digest.String())
	if err := client.LeasesService().Delete(bctx, l, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
	if got := d.mustCtr("-n", "a", "content", "get", img.Manifest.Digest.String()); got != manifest {
		t.Fatal("namespace a's manifest changed after namespace b removed its copy")
	}
}

func TestHundredMegabyteBlobRoundTrip(t *testing.T) {
	d := newDaemon(t).start()
	const size = 100 << 20
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(data)
	want := digest.FromBytes(data)

	start := time.Now()
	d.ctrStdinMust(bytes.NewReader(data), "content", "ingest", "--expected-size", "104857600", "--expected-digest", want.String(), "big")
	t.Logf("ingest of 100 MB took %s", time.Since(start))
	start = time.Now()
	got, err := d.ctrBytes("content", "get", want.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("get of 100 MB took %s", time.Since(start))
	if len(got) != size || digest.FromBytes(got) != want {
		t.Fatalf("read back %d bytes of digest %s, want %d bytes of %s", len(got), digest.FromBytes(got), size, want)
	}
}

func TestKilledServiceIsBackWithinASecond(t *testing.T) {
	for _, svc := range []string{"content", "metadata"} {
		t.Run(svc, func(t *testing.T) {
			d := newDaemon(t).start()
			d.ctrStdinMust(strings.NewReader("committed before the crash"), "content", "ingest", "kept")
			want := digest.FromString("committed before the crash").String()
			old := d.servicePid(svc)
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			// content get needs both services: metadata for the record,
			// content for the bytes.
			var out string
			for {
				var err error
				out, err = d.ctr("content", "get", want)
				if err == nil && d.servicePidOrZero(svc) != old {
					break
				}
				if time.Since(killed) > 5*time.Second {
					t.Fatalf("%s not serving again 5s after kill -9: %v\n%s", svc, err, out)
				}
				time.Sleep(10 * time.Millisecond)
			}
			back := time.Since(killed)
			t.Logf("%s back after %s", svc, back)
			if back > time.Second {
				t.Errorf("%s took %s to serve again after kill -9, want under a second", svc, back)
			}
			if out != "committed before the crash" {
				t.Fatalf("content committed before kill -9 of %s reads back as %q", svc, out)
			}
			if out := d.mustCtr("content", "ls"); !strings.Contains(out, want) {
				t.Fatalf("content committed before kill -9 of %s is not listed:\n%s", svc, out)
			}
			if out := d.mustCtr("plugins", "ls", "id=="+svc); !strings.Contains(out, "ok") {
				t.Errorf("ctr plugins ls does not show %s ok after its restart:\n%s", svc, out)
			}
		})
	}
}

func TestBadInputGetsTheRightCodeAndChangesNothing(t *testing.T) {
	d := newDaemon(t).start()
	d.mustCtr("namespaces", "create", "keep")
	nsBefore := d.mustCtr("namespaces", "ls", "-q")

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"namespace with a slash", []string{"namespaces", "create", "a/b"}, "invalid argument"},
		{"namespace dot-dot", []string{"namespaces", "create", ".."}, "invalid argument"},
		{"call in a namespace with a slash", []string{"-n", "a/b", "images", "ls"}, "invalid argument"},
		{"content of an unknown namespace", []string{"-n", "nosuch", "content", "get", digest.FromString("x").String()}, "not found"},
	} {
		out, err := d.ctr(tc.args...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s (ctr %s): err=%v, want %q in:\n%s", tc.name, strings.Join(tc.args, " "), err, tc.want, out)
		}
	}

	// ctr checks digests itself, so malformed ones go through the Go
	// client, which passes them on as given.
	client := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "keep")
	for _, bad := range []digest.Digest{"sha256:nothex", "sha256:../../etc/passwd", "md5:d41d8cd98f00b204e9800998ecf8427e", ""} {
		if _, err := client.ContentStore().Info(ctx, bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("content info of %q: %v, want InvalidArgument", bad, err)
		}
		if err := client.ContentStore().Delete(ctx, bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("content delete of %q: %v, want InvalidArgument", bad, err)
		}
	}
	if err := client.ImageService().Delete(ctx, "docker.io/library/nosuch:latest"); !errdefs.IsNotFound(err) {
		t.Errorf("delete of an unknown image: %v, want NotFound", err)
	}
	if _, err := client.ImageService().Create(ctx, images.Image{Name: "bad-target", Target: ocispec.Descriptor{Digest: "sha256:xyz", Size: 1, MediaType: ocispec.MediaTypeImageManifest}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("image with a malformed target digest: %v, want InvalidArgument", err)
	}

	// A commit whose bytes do not match the expected digest.
	wrong := digest.FromString("other bytes").String()
	out, err := d.ctrStdin(strings.NewReader("these bytes"), "-n", "keep", "content", "ingest", "--expected-digest", wrong, "bad-commit")
	if err == nil || !strings.Contains(out, "failed precondition") {
		t.Errorf("commit with a wrong expected digest: err=%v, want FailedPrecondition\n%s", err, out)
	}

	if got := d.mustCtr("namespaces", "ls", "-q"); got != nsBefore {
		t.Errorf("bad input changed the namespaces:\nbefore %q\nafter  %q", nsBefore, got)
	}
	if b := d.diskBlobs(); len(b) != 0 {
		t.Errorf("bad input left blobs on disk: %v", b)
	}
	if imgs := d.mustCtr("-n", "keep", "images", "ls", "-q"); strings.TrimSpace(imgs) != "" {
		t.Errorf("bad input created images:\n%s", imgs)
	}
	// Without a lease nothing keeps a failed ingest for a retry: it goes
	// with the failed commit.
	if out := d.mustCtr("-n", "keep", "content", "active"); strings.Contains(out, "bad-commit") {
		t.Errorf("a failed commit left its ingest listed:\n%s", out)
	}
	if ingests, _ := os.ReadDir(filepath.Join(d.root, "content", "ingest")); len(ingests) != 0 {
		t.Errorf("a failed commit left %d ingest directories on disk", len(ingests))
	}
}

// TestContainerdContentSuiteThroughGateway runs containerd's content suite
// against the namespaced view, through the gateway, with the containerd
// client. Each test gets a namespace of its own and a lease.
func TestContainerdContentSuiteThroughGateway(t *testing.T) {
	d := newDaemon(t).start()
	client := d.client()
	n := 0
	testsuite.ContentSuite(t, "gateway", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		n++
		ctx = namespaces.WithNamespace(ctx, "suite"+strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "-")+"-"+string(rune('a'+n%26)))
		l, err := client.LeasesService().Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
		if err != nil {
			return nil, nil, nil, err
		}
		ctx = leases.WithLease(ctx, l.ID)
		return ctx, client.ContentStore(), func() error {
			return client.LeasesService().Delete(ctx, l, leases.SynchronousDelete)
		}, nil
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
