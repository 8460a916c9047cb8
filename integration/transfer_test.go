package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/transfer"
	tarchive "github.com/containerd/containerd/v2/core/transfer/archive"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/crypto/bcrypt"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// transferNS is the namespace the transfer tests work in.
const transferNS = "transfer-test"

func transferContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), transferNS), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// unpackHere asks a transfer into the image store to unpack for the host.
func unpackHere() image.StoreOpt { return image.WithUnpack(platforms.DefaultSpec(), "") }

// pullFrom is the registry source of a transfer for ref, over plain HTTP.
func pullFrom(t *testing.T, ctx context.Context, ref string, opts ...registry.Opt) *registry.OCIRegistry {
	t.Helper()
	r, err := registry.NewOCIRegistry(ctx, ref, append([]registry.Opt{registry.WithDefaultScheme("http")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// progressLog collects a transfer's progress.
type progressLog struct {
	mu  sync.Mutex
	all []transfer.Progress
}

func (e *progressLog) record(p transfer.Progress) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, p)
}

// has reports whether an event named name (a blob's ref key ends with its
// digest) reached event.
func (e *progressLog) has(event string, d digest.Digest) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.all {
		if p.Event == event && strings.HasSuffix(p.Name, d.String()) {
			return true
		}
	}
	return false
}

func (e *progressLog) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for _, p := range e.all {
		fmt.Fprintf(&b, "%s %s %d/%d\n", p.Event, p.Name, p.Progress, p.Total)
	}
	return b.String()
}

// requireUnpacked fails unless the image is unpacked into overlayfs.
func requireUnpacked(t *testing.T, ctx context.Context, c *containerd.Client, name string) containerd.Image {
	t.Helper()
	img, err := c.GetImage(ctx, name)
	if err != nil {
		t.Fatalf("image %s after the transfer: %v", name, err)
	}
	ok, err := img.IsUnpacked(ctx, "overlayfs")
	if err != nil || !ok {
		t.Fatalf("image %s unpacked: %v, %v; want true", name, ok, err)
	}
	return img
}

// namespaceBlobs lists the blobs of the test namespace.
func namespaceBlobs(t *testing.T, ctx context.Context, c *containerd.Client) map[digest.Digest]bool {
	t.Helper()
	out := map[digest.Digest]bool{}
	if err := c.ContentStore().Walk(ctx, func(i content.Info) error {
		out[i.Digest] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// requireNothingLeft fails unless, once the transfer's lease is gone and
// collected, the namespace holds no image but those in keep and no blob or
// ingest a failed transfer wrote.
func requireNothingLeft(t *testing.T, ctx context.Context, c *containerd.Client, before map[digest.Digest]bool, images ...string) {
	t.Helper()
	for _, name := range images {
		if _, err := c.ImageService().Get(ctx, name); !errdefs.IsNotFound(err) {
			t.Errorf("image %s after a failed transfer: %v; want NotFound", name, err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var extra []string
		for d := range namespaceBlobs(t, ctx, c) {
			if !before[d] {
				extra = append(extra, d.String())
			}
		}
		st, err := c.ContentStore().ListStatuses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(extra) == 0 && len(st) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a failed transfer left blobs %v and ingests %v behind", extra, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTransferEchoesLargeAndSmallStreams runs containerd's own test of the
// Streaming API: an import stream echoed back as an export stream, big,
// small and empty.
func TestTransferEchoesLargeAndSmallStreams(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	for name, want := range map[string][]byte{
		"big":   bytes.Repeat([]byte("somecontent"), 17*1024),
		"small": []byte("somecontent"),
		"empty": {},
	} {
		t.Run(name, func(t *testing.T) {
			out := newClosingBuffer()
			err := c.Transfer(ctx, tarchive.NewImageImportStream(bytes.NewReader(want), "application/octet-stream"),
				tarchive.NewImageExportStream(out, "application/octet-stream"))
			if err != nil {
				t.Fatal(err)
			}
			if got := out.Bytes(); !bytes.Equal(got, want) {
				t.Fatalf("echo of %d bytes came back as %d bytes", len(want), len(got))
			}
		})
	}
}

// closingBuffer is written by a transfer's export stream; Bytes waits for
// the stream's end.
type closingBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	closed chan struct{}
	once   sync.Once
}

func newClosingBuffer() *closingBuffer { return &closingBuffer{closed: make(chan struct{})} }

func (b *closingBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *closingBuffer) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

func (b *closingBuffer) Bytes() []byte {
	select {
	case <-b.closed:
	case <-time.After(30 * time.Second):
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// dockerSaveTar writes img as `docker save` does: manifest.json naming
// the config and each uncompressed layer.tar, and the image's tags.
func dockerSaveTar(t *testing.T, img *testimage.Image, tag string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := img.Blob(img.Config.Digest)
	cfgName := img.Config.Digest.Encoded() + ".json"
	add(cfgName, cfg)
	var layers []string
	for _, l := range img.Layers {
		b, _ := img.Blob(l.Digest)
		if strings.HasSuffix(l.MediaType, "gzip") {
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if b, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		name := digest.FromBytes(b).Encoded() + "/layer.tar"
		add(name, b)
		layers = append(layers, name)
	}
	mf, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{tag}, "Layers": layers}})
	if err != nil {
		t.Fatal(err)
	}
	add("manifest.json", mf)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestTransferImportsEachArchiveKindAndUnpacksIt imports an OCI layout tar
// and a docker save tar through the Transfer API, as ctr 2.x and nerdctl
// load do, and finds each image named and unpacked.
func TestTransferImportsEachArchiveKindAndUnpacksIt(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	oci, err := testimage.Busybox(testimage.WithName("docker.io/library/ocilayout:1"), testimage.WithRandomLayer(1<<20, 7))
	if err != nil {
		t.Skip(err)
	}
	ociTar, err := oci.ArchiveBytes()
	if err != nil {
		t.Fatal(err)
	}
	saved, err := testimage.Busybox(testimage.WithRandomLayer(1<<20, 8))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind    string
		archive []byte
		name    string
	}{
		{"oci-layout", ociTar, "docker.io/library/ocilayout:1"},
		{"docker-save", dockerSaveTar(t, saved, "docker.io/library/dockersave:1"), "docker.io/library/dockersave:1"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			var ev progressLog
			err := c.Transfer(ctx, tarchive.NewImageImportStream(bytes.NewReader(tc.archive), ""),
				image.NewStore("", image.WithNamedPrefix("import", true), unpackHere()), transfer.WithProgress(ev.record))
			if err != nil {
				t.Fatalf("import of a %s archive: %v", tc.kind, err)
			}
			requireUnpacked(t, ctx, c, tc.name)
			if !strings.Contains(ev.String(), "Completed import") {
				t.Errorf("progress of the import ends without \"Completed import\":\n%s", ev.String())
			}
		})
	}
}

// TestTransferExportsAnArchiveThatImportsBack exports an image through the
// Transfer API and imports the archive back under another namespace.
func TestTransferExportsAnArchiveThatImportsBack(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	img, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	archive, _ := img.ArchiveBytes()
	if err := c.Transfer(ctx, tarchive.NewImageImportStream(bytes.NewReader(archive), ""), image.NewStore("", image.WithNamedPrefix("import", true))); err != nil {
		t.Fatal(err)
	}
	out := newClosingBuffer()
	if err := c.Transfer(ctx, image.NewStore("", image.WithExtraReference(img.Name)), tarchive.NewImageExportStream(out, "")); err != nil {
		t.Fatalf("export: %v", err)
	}
	exported := out.Bytes()
	names := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(exported))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("exported archive (%d bytes) does not read as a tar: %v", len(exported), err)
		}
		names[h.Name] = true
	}
	for _, want := range []string{"index.json", "oci-layout", "blobs/sha256/" + img.Manifest.Digest.Encoded(), "blobs/sha256/" + img.Layers[0].Digest.Encoded()} {
		if !names[want] {
			t.Errorf("exported archive has no %s; it has %v", want, names)
		}
	}
	other := namespaces.WithNamespace(ctx, transferNS+"-back")
	if err := c.Transfer(other, tarchive.NewImageImportStream(bytes.NewReader(exported), ""), image.NewStore("", image.WithNamedPrefix("import", true), unpackHere())); err != nil {
		t.Fatalf("import of the exported archive: %v", err)
	}
	collectGarbage(t, other, c)
	requireUnpacked(t, other, c, img.Name)
}

// layerTar builds a gzip layer from entries (a name ending in "/" is a
// directory) and returns its descriptor, blob and diff ID.
func layerTar(t *testing.T, entries map[string]string) (ocispec.Descriptor, []byte, digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, name := range sortedKeys(entries) {
		h := &tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(entries[name])), ModTime: time.Unix(1700000000, 0)}
		if strings.HasSuffix(name, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(entries[name])); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
	return desc, gz.Bytes(), digest.FromBytes(raw.Bytes())
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// pushLayered pushes busybox with two layers on top: one replacing
// /etc/hostname and deleting /etc/group (a whiteout), one adding a big
// file, and returns the reference and the image's layers.
func pushLayered(t *testing.T, r *podRegistry, repo string) (string, []ocispec.Descriptor) {
	t.Helper()
	bb, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	cfgBlob, _ := bb.Blob(bb.Config.Digest)
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		t.Fatal(err)
	}
	blobs := map[digest.Digest][]byte{}
	layers := append([]ocispec.Descriptor{}, bb.Layers...)
	for _, l := range bb.Layers {
		blobs[l.Digest], _ = bb.Blob(l.Digest)
	}
	for _, entries := range []map[string]string{
		{"etc/": "", "etc/hostname": "layered\n", "etc/.wh.group": ""},
		{"data/": "", "data/big": strings.Repeat("flotilla transfer ", 200000)},
	} {
		desc, blob, diffID := layerTar(t, entries)
		layers = append(layers, desc)
		blobs[desc.Digest] = blob
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
	}
	refs := r.pushImage(t, cfg, layers, blobs, repo, "v1")
	return refs[0], layers
}

// readRootfs mounts a read-only view of an unpacked image and returns the
// files asked for ("" for a file that is not there).
func readRootfs(t *testing.T, ctx context.Context, c *containerd.Client, img containerd.Image, files ...string) map[string]string {
	t.Helper()
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sn := c.SnapshotService("overlayfs")
	key := "view-" + t.Name()
	mounts, err := sn.View(ctx, key, identity.ChainID(diffIDs).String())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Remove(ctx, key)
	dir := t.TempDir()
	if err := mount.All(mounts, dir); err != nil {
		t.Fatalf("mount the image's rootfs: %v", err)
	}
	defer mount.UnmountAll(dir, 0)
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil {
			out[f] = string(b)
		}
	}
	return out
}

// TestTransferPullUnpacksLayersInParallelWithWhiteoutsKept pulls an image
// of several layers from a local registry through the Transfer API: every
// layer is reported downloaded and extracted, the image is stored and
// unpacked, and the unpacked root filesystem is the layers stacked in order
// (a later layer's file replaces an earlier one's, its whiteout hides one),
// though each layer was applied on its own and rebased at commit.
func TestTransferPullUnpacksLayersInParallelWithWhiteoutsKept(t *testing.T) {
	r := startPodRegistry(t)
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	ref, layers := pushLayered(t, r, "library/layered")

	var ev progressLog
	if err := c.Transfer(ctx, pullFrom(t, ctx, ref), image.NewStore(ref, unpackHere()), transfer.WithProgress(ev.record)); err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	for _, l := range layers {
		for _, want := range []string{"complete", "extracted"} {
			if !ev.has(want, l.Digest) {
				t.Errorf("no %q progress for layer %s; progress:\n%s", want, l.Digest, ev.String())
			}
		}
	}
	if !strings.Contains(ev.String(), "saved "+ref) {
		t.Errorf("no \"saved\" progress for %s:\n%s", ref, ev.String())
	}
	img := requireUnpacked(t, ctx, c, ref)
	got := readRootfs(t, ctx, c, img, "etc/hostname", "etc/group", "etc/passwd", "data/big", "bin/busybox")
	if got["etc/hostname"] != "layered\n" {
		t.Errorf("/etc/hostname is %q; want the top layer's", got["etc/hostname"])
	}
	if _, ok := got["etc/group"]; ok {
		t.Errorf("/etc/group is there; a layer whited it out")
	}
	if got["etc/passwd"] == "" || got["bin/busybox"] == "" || len(got["data/big"]) != 18*200000 {
		t.Errorf("files of the layers missing from the rootfs: passwd %d bytes, busybox %d, data/big %d",
			len(got["etc/passwd"]), len(got["bin/busybox"]), len(got["data/big"]))
	}
	// The image keeps all it needs once the transfer's lease is gone and
	// a collection ran.
	collectGarbage(t, ctx, c)
	requireUnpacked(t, ctx, c, ref)
	// Every layer blob is in the content store, labelled with its diff ID
	// and where it came from.
	for _, l := range layers {
		info, err := c.ContentStore().Info(ctx, l.Digest)
		if err != nil {
			t.Fatalf("layer %s after the pull: %v", l.Digest, err)
		}
		if info.Labels["containerd.io/uncompressed"] == "" || info.Labels["containerd.io/distribution.source."+strings.Split(r.Host, ":")[0]] == "" {
			t.Errorf("layer %s labels %v; want its diff ID and distribution source", l.Digest, info.Labels)
		}
	}

	// A second pull finds everything there.
	var again progressLog
	if err := c.Transfer(ctx, pullFrom(t, ctx, ref), image.NewStore(ref, unpackHere()), transfer.WithProgress(again.record)); err != nil {
		t.Fatalf("second pull: %v", err)
	}
	if !again.has("already exists", layers[0].Digest) {
		t.Errorf("second pull does not say the layers exist:\n%s", again.String())
	}
}

// collectGarbage runs a garbage collection now: the synchronous deletion
// of a lease waits for one.
func collectGarbage(t *testing.T, ctx context.Context, c *containerd.Client) {
	t.Helper()
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.LeasesService().Delete(ctx, l, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
}

// countingProxy sits in front of a registry, counts the blob downloads of
// each digest, and holds each download back a little so that pulls started
// together overlap.
type countingProxy struct {
	mu     sync.Mutex
	counts map[string]int
	url    *url.URL
}

func newCountingProxy(t *testing.T, host string) *countingProxy {
	return newSlowProxy(t, host, 300*time.Millisecond)
}

// newSlowProxy is a countingProxy holding each blob download back by delay.
func newSlowProxy(t *testing.T, host string, delay time.Duration) *countingProxy {
	t.Helper()
	target, _ := url.Parse("http://" + host)
	p := &countingProxy{counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if i := strings.Index(req.URL.Path, "/blobs/sha256:"); i >= 0 && req.Method == http.MethodGet {
			p.mu.Lock()
			p.counts[req.URL.Path[i+len("/blobs/"):]]++
			p.mu.Unlock()
			select {
			case <-time.After(delay):
			case <-req.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	p.url, _ = url.Parse(srv.URL)
	return p
}

func (p *countingProxy) count(d digest.Digest) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[d.String()]
}

// TestConcurrentPullsOfOneImageShareEachDownload starts two pulls of one
// image (under two tags) at once: both succeed, and each blob was
// downloaded from the registry once.
func TestConcurrentPullsOfOneImageShareEachDownload(t *testing.T) {
	r := startPodRegistry(t)
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	bb, err := testimage.Busybox(testimage.WithRandomLayer(4<<20, 3))
	if err != nil {
		t.Skip(err)
	}
	if _, err := r.PushAsIs(bb, "library/shared", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PushAsIs(bb, "library/shared", "b"); err != nil {
		t.Fatal(err)
	}
	proxy := newCountingProxy(t, r.Host)
	var wg sync.WaitGroup
	var failed atomic.Value
	for _, tag := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ref := proxy.url.Host + "/library/shared:" + tag
			if err := c.Transfer(ctx, pullFrom(t, ctx, ref), image.NewStore(ref, unpackHere())); err != nil {
				failed.Store(fmt.Errorf("pull %s: %w", ref, err))
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	for _, l := range append(bb.Layers, bb.Config) {
		if n := proxy.count(l.Digest); n != 1 {
			t.Errorf("blob %s downloaded %d times by two concurrent pulls; want once", l.Digest, n)
		}
	}
	requireUnpacked(t, ctx, c, proxy.url.Host+"/library/shared:a")
	requireUnpacked(t, ctx, c, proxy.url.Host+"/library/shared:b")
}

// TestCancelledPullStopsAndLeavesNothing cancels a pull while its blobs
// download: the transfer service stops it (the cancellation travels
// through the gateway), and what it had written goes with its lease.
func TestCancelledPullStopsAndLeavesNothing(t *testing.T) {
	r := startPodRegistry(t)
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	bb, err := testimage.Busybox(testimage.WithRandomLayer(4<<20, 9))
	if err != nil {
		t.Skip(err)
	}
	if _, err := r.PushAsIs(bb, "library/slow", "1"); err != nil {
		t.Fatal(err)
	}
	proxy := newSlowProxy(t, r.Host, time.Minute)
	ref := proxy.url.Host + "/library/slow:1"
	before := namespaceBlobs(t, ctx, c)
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Transfer(pctx, pullFrom(t, pctx, ref), image.NewStore(ref, unpackHere())) }()
	waitFor(t, 30*time.Second, "the pull to ask for a blob", func() bool { return proxy.count(bb.Config.Digest) > 0 })
	cancel()
	select {
	case err := <-done:
		if !errdefs.IsCanceled(err) {
			t.Errorf("cancelled pull: %v; want Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled pull did not return")
	}
	requireNothingLeft(t, ctx, c, before, ref)
	waitFor(t, 20*time.Second, "the cancelled pull's snapshots to be gone", func() bool {
		n := 0
		_ = c.SnapshotService("overlayfs").Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil })
		return n == 0
	})
}

// TestTransferPushesAndTags tags an image through the Transfer API and
// pushes it to a registry, from which it pulls back.
func TestTransferPushesAndTags(t *testing.T) {
	r := startPodRegistry(t)
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	img, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	archive, _ := img.ArchiveBytes()
	if err := c.Transfer(ctx, tarchive.NewImageImportStream(bytes.NewReader(archive), ""), image.NewStore("", image.WithNamedPrefix("import", true))); err != nil {
		t.Fatal(err)
	}
	tagged := "docker.io/library/tagged:2"
	if err := c.Transfer(ctx, image.NewStore(img.Name), image.NewStore(tagged)); err != nil {
		t.Fatalf("tag: %v", err)
	}
	got, err := c.ImageService().Get(ctx, tagged)
	if err != nil || got.Target.Digest != img.Manifest.Digest {
		t.Fatalf("tagged image: %v, %v; want target %s", got.Target.Digest, err, img.Manifest.Digest)
	}
	if err := c.Transfer(ctx, image.NewStore("docker.io/library/nope:1"), image.NewStore("docker.io/library/x:1")); !errdefs.IsNotFound(err) {
		t.Errorf("tag of an image that is not there: %v; want NotFound", err)
	}

	ref := r.Host + "/library/pushed:1"
	var ev progressLog
	if err := c.Transfer(ctx, image.NewStore(tagged), pullFrom(t, ctx, ref), transfer.WithProgress(ev.record)); err != nil {
		t.Fatalf("push: %v", err)
	}
	if !strings.Contains(ev.String(), "Completed push") {
		t.Errorf("push progress ends without \"Completed push\":\n%s", ev.String())
	}
	req, _ := http.NewRequest(http.MethodHead, "http://"+r.Host+"/v2/library/pushed/manifests/1", nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() {
		t.Fatalf("registry has %s: %s, digest %q; want %s", ref, resp.Status, resp.Header.Get("Docker-Content-Digest"), img.Manifest.Digest)
	}
	other := namespaces.WithNamespace(ctx, transferNS+"-pushed")
	if err := c.Transfer(other, pullFrom(t, other, ref), image.NewStore(ref, unpackHere())); err != nil {
		t.Fatalf("pull of the pushed image: %v", err)
	}
	requireUnpacked(t, other, c, ref)
}

// TestTransferPullFollowsHostsToml pulls an image by a registry name that
// only hosts.toml maps to the local registry: from the directory the client
// names, and from the transfer service's config_path when it names none.
func TestTransferPullFollowsHostsToml(t *testing.T) {
	r := startPodRegistry(t)
	bb, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	if _, err := r.PushAsIs(bb, "library/busybox", "1"); err != nil {
		t.Fatal(err)
	}
	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, "registry.flotilla.test"), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", r.Host, r.Host)
	if err := os.WriteFile(filepath.Join(hosts, "registry.flotilla.test", "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, withConfig(fmt.Sprintf("[services.transfer.options]\nconfig_path = %q\n", hosts))).start()
	c := d.client()
	ctx := transferContext(t)
	ref := "registry.flotilla.test/library/busybox:1"
	client, err := registry.NewOCIRegistry(ctx, ref, registry.WithHostDir(hosts))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Transfer(ctx, client, image.NewStore(ref, unpackHere())); err != nil {
		t.Fatalf("pull through the client's hosts directory: %v", err)
	}
	requireUnpacked(t, ctx, c, ref)
	other := namespaces.WithNamespace(ctx, transferNS+"-hosts")
	service, err := registry.NewOCIRegistry(other, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Transfer(other, service, image.NewStore(ref, unpackHere())); err != nil {
		t.Fatalf("pull through the service's config_path: %v", err)
	}
	requireUnpacked(t, other, c, ref)
}

// staticCredentials answers the registry's question for credentials.
type staticCredentials struct{ user, secret string }

func (s staticCredentials) GetCredentials(context.Context, string, string) (registry.Credentials, error) {
	return registry.Credentials{Username: s.user, Secret: s.secret}, nil
}

// TestTransferPullAsksTheClientForCredentials pulls from a registry that
// wants HTTP basic credentials: without them, or with wrong ones, the pull
// fails Unauthenticated and leaves nothing behind; with them (asked for over
// the client's credentials stream) it succeeds.
func TestTransferPullAsksTheClientForCredentials(t *testing.T) {
	bb, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	data := t.TempDir()
	open := startRegistry(t, data, "")
	if _, err := open.PushAsIs(bb, "private/busybox", "v1"); err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("puller:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	locked := startRegistry(t, data, fmt.Sprintf("auth:\n  htpasswd:\n    realm: flotilla-test\n    path: %s\n", htpasswd))
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	ref := locked.Host + "/private/busybox:v1"
	before := namespaceBlobs(t, ctx, c)

	for name, opts := range map[string][]registry.Opt{
		"none":  nil,
		"wrong": {registry.WithCredentials(staticCredentials{"puller", "guess"})},
	} {
		err := c.Transfer(ctx, pullFrom(t, ctx, ref, opts...), image.NewStore(ref, unpackHere()))
		if err == nil {
			t.Fatalf("pull with %s credentials succeeded", name)
		}
		if name == "wrong" && !errdefs.IsUnauthorized(err) {
			t.Errorf("pull with wrong credentials: %v; want Unauthenticated", err)
		}
		requireNothingLeft(t, ctx, c, before, ref)
	}
	if err := c.Transfer(ctx, pullFrom(t, ctx, ref, registry.WithCredentials(staticCredentials{"puller", "s3cret"})), image.NewStore(ref, unpackHere())); err != nil {
		t.Fatalf("pull with the right credentials: %v", err)
	}
	requireUnpacked(t, ctx, c, ref)
}

// TestTransferRefusesBadInputAndLeavesNothing: an archive that is not one
// is InvalidArgument, a reference the registry does not have NotFound, a
// layer whose bytes are not its digest FailedPrecondition; none leaves an
// image, a blob or an ingest behind.
func TestTransferRefusesBadInputAndLeavesNothing(t *testing.T) {
	storage := t.TempDir()
	r := startRegistry(t, storage, "")
	d := newDaemon(t).start()
	c := d.client()
	ctx := transferContext(t)
	bb, err := testimage.Busybox(testimage.WithRandomLayer(2<<20, 5))
	if err != nil {
		t.Skip(err)
	}
	good, _ := bb.ArchiveBytes()
	before := namespaceBlobs(t, ctx, c)

	for name, archive := range map[string][]byte{
		"garbage":   bytes.Repeat([]byte("not a tar "), 200),
		"truncated": good[:len(good)*2/3],
	} {
		err := c.Transfer(ctx, tarchive.NewImageImportStream(bytes.NewReader(archive), ""), image.NewStore("", image.WithNamedPrefix("import", true), unpackHere()))
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("import of a %s archive: %v; want InvalidArgument", name, err)
		}
		requireNothingLeft(t, ctx, c, before, bb.Name)
	}

	missing := r.Host + "/library/nope:0"
	if err := c.Transfer(ctx, pullFrom(t, ctx, missing), image.NewStore(missing, unpackHere())); !errdefs.IsNotFound(err) {
		t.Errorf("pull of %s: %v; want NotFound", missing, err)
	}

	// The registry serves other bytes than the layer's digest names.
	ref, err := r.PushAsIs(bb, "library/corrupt", "v1")
	if err != nil {
		t.Fatal(err)
	}
	layer := bb.Layers[len(bb.Layers)-1]
	corruptRegistryBlob(t, storage, layer.Digest)
	err = c.Transfer(ctx, pullFrom(t, ctx, ref), image.NewStore(ref, unpackHere()))
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("pull of an image whose layer is corrupt: %v; want FailedPrecondition", err)
	}
	requireNothingLeft(t, ctx, c, before, ref)
	waitFor(t, 20*time.Second, "the failed pull's snapshots to be gone", func() bool {
		n := 0
		_ = c.SnapshotService("overlayfs").Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil })
		return n == 0
	})
}

// corruptRegistryBlob flips bytes in the middle of a blob in the registry's
// storage, keeping its size.
func corruptRegistryBlob(t *testing.T, storage string, d digest.Digest) {
	t.Helper()
	var path string
	_ = filepath.Walk(storage, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Name() == "data" && filepath.Base(filepath.Dir(p)) == d.Encoded() {
			path = p
		}
		return nil
	})
	if path == "" {
		t.Fatalf("blob %s not found in the registry's storage", d)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 2; i < len(b)/2+64 && i < len(b); i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ctr2Version is the containerd release whose ctr drives the Transfer API
// in TestCtr2ImagesGoThroughTransfer.
const ctr2Version = "v2.4.2"

// ctr2Tool is containerd 2.4.2's own ctr, which imports, exports, pulls,
// pushes and tags through the Transfer API.
var ctr2Tool = goTool{
	name: "containerd " + ctr2Version + "'s ctr", dir: "ctr-" + ctr2Version, file: "ctr", env: "FLOTILLA_CTR2",
	timeout: 10 * time.Minute,
	build: func(g *goBuild, out string) error {
		if err := g.initModule("flotilla-tests/ctr2"); err != nil {
			return err
		}
		if _, err := g.run("", nil, "get", "github.com/containerd/containerd/v2/cmd/ctr@"+ctr2Version); err != nil {
			return err
		}
		_, err := g.run("", nil, "build", "-tags", "no_btrfs no_devmapper no_zfs", "-o", out, "github.com/containerd/containerd/v2/cmd/ctr")
		return err
	},
}

// ctr2 is containerd 2.4.2's ctr ($FLOTILLA_CTR2 when set); the test skips,
// saying why, when it cannot be had.
func ctr2(t *testing.T) string {
	t.Helper()
	p, err := ctr2Tool.path()
	if err != nil {
		t.Skipf("containerd %s's ctr could not be built from the Go module proxy (set FLOTILLA_CTR2 to one): %v", ctr2Version, err)
	}
	return p
}

// TestCtr2ImagesGoThroughTransfer drives containerd 2.4.2's own ctr, which
// imports, exports, pulls, pushes and tags through the Transfer and
// Streaming APIs unless told --local, against Flotilla and a local
// registry: each works, shows its progress, and an image it imports runs.
func TestCtr2ImagesGoThroughTransfer(t *testing.T) {
	bin := ctr2(t)
	bb, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	fresh, err := testimage.Busybox(testimage.WithRandomLayer(1<<20, 11))
	if err != nil {
		t.Fatal(err)
	}
	r := startPodRegistry(t)
	pulled, err := r.PushAsIs(fresh, "library/fresh", "1")
	if err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t).start()
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append([]string{"--address", d.address, "-n", "ctr2"}, args...)...).CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	b, _ := bb.ArchiveBytes()
	if err := os.WriteFile(archive, b, 0o644); err != nil {
		t.Fatal(err)
	}

	must("images", "import", archive)
	if out := must("images", "check"); !strings.Contains(out, bb.Name) || !strings.Contains(out, "complete") {
		t.Errorf("ctr images check after the import:\n%s", out)
	}
	if out := must("snapshots", "ls"); !strings.Contains(out, "Committed") {
		t.Errorf("no committed snapshot after the import:\n%s", out)
	}
	if _, err := exec.LookPath("runc"); err == nil {
		if out := must("run", "--rm", "--fifo-dir", filepath.Join(d.state, "fifo"), bb.Name, "ctr2-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
			t.Errorf("ctr run of the imported image printed %q; want hi", out)
		}
	}

	exported := filepath.Join(t.TempDir(), "out.tar")
	must("images", "export", exported, bb.Name)
	f, err := os.Open(exported)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found := false
	for tr := tar.NewReader(f); ; {
		h, err := tr.Next()
		if err != nil {
			break
		}
		found = found || h.Name == "blobs/sha256/"+bb.Layers[0].Digest.Encoded()
	}
	if !found {
		t.Errorf("exported archive has no blobs/sha256/%s", bb.Layers[0].Digest.Encoded())
	}

	must("images", "tag", bb.Name, "docker.io/library/bb:2")
	if out := must("images", "ls", "-q"); !strings.Contains(out, "docker.io/library/bb:2") {
		t.Errorf("ctr images ls after the tag:\n%s", out)
	}

	out := must("images", "pull", "--plain-http", pulled)
	for _, want := range []string{"saved", "extracted", "complete"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctr images pull output has no %q:\n%s", want, out)
		}
	}
	if out := must("images", "check"); !strings.Contains(out, pulled) {
		t.Errorf("ctr images check after the pull:\n%s", out)
	}

	pushed := r.Host + "/library/bbcopy:1"
	must("images", "push", "--plain-http", pushed, bb.Name)
	resp, err := http.Get("http://" + r.Host + "/v2/library/bbcopy/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	tags, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(tags), `"1"`) {
		t.Errorf("registry tags of library/bbcopy after the push: %s", tags)
	}

	if out, err := run("images", "pull", "--plain-http", r.Host+"/library/nope:0"); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("ctr pull of a reference the registry does not have: %v\n%s", err, out)
	}
}
