package imagetransfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// slowWriter takes its time over each write, as an apply does.
type slowWriter struct {
	bytes.Buffer
	delay time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(w.delay)
	return w.Buffer.Write(p)
}

type failingWriter struct{ after, n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	if w.n > w.after {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestCopyToGivesEveryWriterEveryByteInOrder(t *testing.T) {
	src := make([]byte, 5*chunkSize+123)
	for i := range src {
		src[i] = byte(i * 7)
	}
	var fast bytes.Buffer
	slow := &slowWriter{delay: time.Millisecond}
	var moved int64
	n, err := copyTo(context.Background(), bytes.NewReader(src), func(m int64) { moved += m }, &fast, nil, slow)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(src)) || moved != n {
		t.Errorf("copied %d, counted %d; want %d", n, moved, len(src))
	}
	if !bytes.Equal(fast.Bytes(), src) || !bytes.Equal(slow.Bytes(), src) {
		t.Errorf("a writer got other bytes than the source's (%d and %d bytes)", fast.Len(), slow.Len())
	}
}

func TestCopyToStopsAtAWritersFailure(t *testing.T) {
	src := bytes.NewReader(make([]byte, 20*chunkSize))
	var other bytes.Buffer
	n, err := copyTo(context.Background(), src, nil, &other, &failingWriter{after: 2 * chunkSize})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("copy to a writer that fails: %v; want its error", err)
	}
	if n >= 20*chunkSize {
		t.Errorf("copy read the whole source (%d bytes) after a writer failed", n)
	}
}

func TestCopyToEndsWithTheSourcesError(t *testing.T) {
	boom := errors.New("connection reset")
	r := io.MultiReader(bytes.NewReader(make([]byte, 100)), errReader{boom})
	if _, err := copyTo(context.Background(), r, nil, io.Discard); !errors.Is(err, boom) {
		t.Errorf("copy from a failing source: %v; want its error", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestFlightsShareOneDownloadPerKey(t *testing.T) {
	var f flights
	fl, lead := f.start("k")
	if !lead {
		t.Fatal("first start does not lead")
	}
	if _, lead2 := f.start("k"); lead2 {
		t.Fatal("second start of a flight in progress leads too")
	}
	if _, other := f.start("other"); !other {
		t.Fatal("another key does not lead its own flight")
	}
	done := make(chan error, 1)
	go func() { done <- fl.wait(context.Background()) }()
	f.finish("k", fl, errors.New("failed"))
	if err := <-done; err == nil {
		t.Error("waiter of a failed flight got no error")
	}
	if _, lead := f.start("k"); !lead {
		t.Error("a finished flight's key does not start a new one")
	}
}

func TestLocksSerializeByKeyAndGiveUpWithTheContext(t *testing.T) {
	var l locks
	unlock, err := l.lock(context.Background(), "chain")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.lock(ctx, "chain"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock of a held key: %v; want to wait until the context ends", err)
	}
	other, err := l.lock(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	other()
	got := make(chan struct{})
	go func() {
		u, err := l.lock(context.Background(), "chain")
		if err == nil {
			u()
		}
		close(got)
	}()
	unlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a released lock is not taken by its waiter")
	}
	if len(l.m) != 0 {
		t.Errorf("%d lock entries left after every lock was released", len(l.m))
	}
}

func TestTrackerReportsEachBlobsStatesUnderItsParent(t *testing.T) {
	var mu sync.Mutex
	var evs []transfer.Progress
	p := progressOf(func(ev transfer.Progress) { mu.Lock(); evs = append(evs, ev); mu.Unlock() })
	tr := p.track("img", "downloading")
	ctx := context.Background()
	mf := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 10}
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("l"), Size: 100}
	tr.add(ctx, mf)
	tr.children(ctx, mf, []ocispec.Descriptor{layer})
	count := tr.moved(ctx, layer)
	count(40)
	time.Sleep(3 * tickEvery)
	count(60)
	tr.complete(ctx, layer)
	tr.extracted(ctx, layer)
	tr.Close()
	mu.Lock()
	defer mu.Unlock()
	var seen []string
	for _, ev := range evs {
		if strings.HasSuffix(ev.Name, layer.Digest.String()) {
			seen = append(seen, fmt.Sprintf("%s:%d", ev.Event, ev.Progress))
			if len(ev.Parents) != 1 || !strings.HasSuffix(ev.Parents[0], mf.Digest.String()) {
				t.Errorf("layer event %s has parents %v; want the manifest", ev.Event, ev.Parents)
			}
		}
	}
	want := "waiting:0 downloading:40 complete:100 extracted:100"
	if got := strings.Join(seen, " "); got != want {
		t.Errorf("layer events %q; want %q", got, want)
	}
}

func TestBindToOverlayMakesTheSnapshotAnUpperLayer(t *testing.T) {
	got := bindToOverlay([]mount.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"rw", "rbind"}}})
	if len(got) != 1 || got[0].Type != "overlay" || strings.Join(got[0].Options, ",") != "rw,upperdir=/s/1/fs" {
		t.Errorf("bindToOverlay = %+v; want an overlay mount of upperdir /s/1/fs", got)
	}
	ov := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a"}}}
	if got := bindToOverlay(ov); got[0].Type != "overlay" || len(got[0].Options) != 1 {
		t.Errorf("bindToOverlay changed an overlay mount: %+v", got)
	}
}

func TestRegistryRefusalsGetAClass(t *testing.T) {
	status := func(code int) error {
		return fmt.Errorf("failed to resolve image: %w", remoteerrors.ErrUnexpectedStatus{StatusCode: code, Status: http.StatusText(code)})
	}
	if err := registryError(status(http.StatusUnauthorized)); !errdefs.IsUnauthorized(err) {
		t.Errorf("401: %v; want Unauthenticated", err)
	}
	if err := registryError(status(http.StatusForbidden)); !errdefs.IsPermissionDenied(err) {
		t.Errorf("403: %v; want PermissionDenied", err)
	}
	if err := registryError(status(http.StatusBadGateway)); !errdefs.IsUnknown(errdefs.Resolve(err)) {
		t.Errorf("502: %v; want it left Unknown", err)
	}
	nf := fmt.Errorf("x: %w", errdefs.ErrNotFound)
	if err := registryError(nf); err != nf {
		t.Errorf("a classified error changed: %v", err)
	}
}

func TestDistributionSourceLabelsNameTheRepository(t *testing.T) {
	s, err := distributionSource("registry.example:5000/library/busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.labels(); got["containerd.io/distribution.source.registry.example"] != "library/busybox" {
		t.Errorf("labels = %v", got)
	}
	if _, err := distributionSource("not a reference"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a bad reference: %v; want InvalidArgument", err)
	}
}
