package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// blobProxy stands in front of a registry, counting the GETs of each blob
// and holding back the answer to the GETs of one until it is released.
type blobProxy struct {
	srv     *httptest.Server
	hold    digest.Digest
	release chan struct{}

	mu   sync.Mutex
	gets map[digest.Digest]int
}

func startBlobProxy(t *testing.T, registryHost string, hold digest.Digest) *blobProxy {
	t.Helper()
	target, err := url.Parse("http://" + registryHost)
	if err != nil {
		t.Fatal(err)
	}
	p := &blobProxy{hold: hold, release: make(chan struct{}), gets: map[digest.Digest]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
			d := digest.Digest(r.URL.Path[i+len("/blobs/"):])
			p.mu.Lock()
			p.gets[d]++
			p.mu.Unlock()
			if d == p.hold {
				select {
				case <-p.release:
				case <-r.Context().Done():
					return
				}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.unhold()
		p.srv.Close()
	})
	return p
}

func (p *blobProxy) host() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *blobProxy) unhold() {
	select {
	case <-p.release:
	default:
		close(p.release)
	}
}

func (p *blobProxy) count(d digest.Digest) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets[d]
}

// TestCRIPullsRunOnTheTransferEngine: CRI PullImage runs on the transfer
// engine. Pulled concurrently under two references (which the CRI's own
// joining of identical pulls does not join), one image's blobs are each
// downloaded once; and while its bottom layer's download is held back, the
// layers above it are downloaded and unpacked, each into a snapshot of its
// own with no parent yet (rebased onto its parent at commit), where a pull
// that unpacks in order has at most one layer under way.
func TestCRIPullsRunOnTheTransferEngine(t *testing.T) {
	requireTool(t, "docker-registry", "docker-registry")
	reg := startPodRegistry(t)
	img, err := testimage.Busybox(
		testimage.WithRandomLayer(2<<20, 1),
		testimage.WithRandomLayer(2<<20, 2),
		testimage.WithRandomLayer(2<<20, 3),
	)
	if err != nil {
		t.Fatal(err)
	}
	refs := reg.pushImageOf(t, img, "flotilla/engine", "a", "b")
	bottom := img.Layers[0].Digest
	proxy := startBlobProxy(t, reg.Host, bottom)
	for i := range refs {
		refs[i] = strings.Replace(refs[i], reg.Host, proxy.host(), 1)
	}
	d := newDaemon(t).start()
	_, images := criClients(t, d)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	errs := make(chan error, len(refs))
	for _, ref := range refs {
		go func() {
			_, err := images.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, nil)
			errs <- err
		}()
	}

	// While the bottom layer is held, the others download and unpack.
	sn := d.client().SnapshotService("overlayfs")
	sctx := namespaces.WithNamespace(ctx, "k8s.io")
	most := 0
	waitFor(t, time.Minute, "every layer asked for and layers unpacked beside each other while the bottom one is held back", func() bool {
		n := 0
		_ = sn.Walk(sctx, func(_ context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindActive && info.Parent == "" && strings.HasPrefix(info.Name, "extract-") {
				n++
			}
			return nil
		})
		most = max(most, n)
		for _, l := range img.Layers {
			if proxy.count(l.Digest) == 0 {
				return false
			}
		}
		return most >= 2
	})
	proxy.unhold()
	for range refs {
		if err := <-errs; err != nil {
			t.Fatalf("CRI PullImage: %v", err)
		}
	}
	proxy.mu.Lock()
	for d, n := range proxy.gets {
		if n != 1 {
			t.Errorf("blob %s was downloaded %d times by two concurrent pulls of its image, want once", d, n)
		}
	}
	proxy.mu.Unlock()
	for _, ref := range refs {
		st, err := images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: ref}, false)
		if err != nil || st.GetImage() == nil {
			t.Fatalf("ImageStatus %s after the pull: %v, %v", ref, st.GetImage(), err)
		}
	}

	// As containerd's CRI by default (discard_unpacked_layers = false),
	// the layers' blobs outlive a collection: the image can be exported.
	ls := d.client().LeasesService()
	l, err := ls.Create(sctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Delete(sctx, l, leases.SynchronousDelete); err != nil {
		t.Fatalf("a synchronous collection: %v", err)
	}
	for _, layer := range img.Layers {
		if _, err := d.client().ContentStore().Info(sctx, layer.Digest); err != nil {
			t.Errorf("layer %s of a CRI-pulled image after a collection: %v; want it kept", layer.Digest, err)
		}
	}
}

// pushImageOf uploads img with a manifest of its own under every tag, and
// returns their references.
func (r *podRegistry) pushImageOf(t *testing.T, img *testimage.Image, repo string, tags ...string) []string {
	t.Helper()
	cfgBlob, ok := img.Blob(img.Config.Digest)
	if !ok {
		t.Fatal("image without its config blob")
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		t.Fatal(err)
	}
	blobs := map[digest.Digest][]byte{}
	for _, l := range img.Layers {
		blobs[l.Digest], _ = img.Blob(l.Digest)
	}
	return r.pushImage(t, cfg, img.Layers, blobs, repo, tags...)
}
