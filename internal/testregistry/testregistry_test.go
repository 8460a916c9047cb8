package testregistry

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

func startForTest(t *testing.T, o Options) *Registry {
	t.Helper()
	if _, err := Binary(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func busybox(t *testing.T) *testimage.Image {
	t.Helper()
	img, err := testimage.Busybox()
	if err != nil {
		if _, lookErr := testimage.BusyboxPath(); lookErr != nil {
			t.Skip(lookErr)
		}
		t.Fatal(err)
	}
	return img
}

// manifest fetches repo:tag's manifest from host, as a pull would.
func manifest(t *testing.T, host, repo, tag string) ocispec.Manifest {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s", repo, tag, resp.Status)
	}
	var m ocispec.Manifest
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPushedImageIsServedWithItsEditedConfig(t *testing.T) {
	img := busybox(t)
	r := startForTest(t, Options{Dir: t.TempDir()})
	ref, err := r.Push(img, func(c *ocispec.ImageConfig) { c.Cmd = []string{"/bin/sleep", "1"} }, "flotilla/busybox", "test")
	if err != nil {
		t.Fatal(err)
	}
	if want := r.Host + "/flotilla/busybox:test"; ref != want {
		t.Fatalf("Push returned %q, want %q", ref, want)
	}
	m := manifest(t, r.Host, "flotilla/busybox", "test")
	if len(m.Layers) != len(img.Layers) || m.Layers[0].Digest != img.Layers[0].Digest {
		t.Fatalf("manifest layers %v, want the image's %v", m.Layers, img.Layers)
	}
	resp, err := http.Get("http://" + r.Host + "/v2/flotilla/busybox/blobs/" + m.Config.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg ocispec.Image
	if err := json.NewDecoder(resp.Body).Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Config.Cmd, " ") != "/bin/sleep 1" {
		t.Fatalf("pushed config Cmd %q, want the edited one", cfg.Config.Cmd)
	}
}

func TestPushImageTagsEveryTag(t *testing.T) {
	img := busybox(t)
	r := startForTest(t, Options{Dir: t.TempDir()})
	layerBlobs := map[digest.Digest][]byte{}
	for _, l := range img.Layers {
		layerBlobs[l.Digest], _ = img.Blob(l.Digest)
	}
	refs, err := r.PushImage(ocispec.Image{}, img.Layers, layerBlobs, "multi", "1", "2")
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2 || refs[0] != r.Host+"/multi:1" || refs[1] != r.Host+"/multi:2" {
		t.Fatalf("PushImage refs %v", refs)
	}
	if manifest(t, r.Host, "multi", "1").Config.Digest != manifest(t, r.Host, "multi", "2").Config.Digest {
		t.Fatal("the tags name different manifests")
	}
}

func TestRegistriesOnOneStorageServeTheSameImages(t *testing.T) {
	img := busybox(t)
	storage := t.TempDir()
	a := startForTest(t, Options{Dir: t.TempDir(), Storage: storage})
	b := startForTest(t, Options{Dir: t.TempDir(), Storage: storage})
	if a.Host == b.Host {
		t.Fatalf("two registries on one port %s", a.Host)
	}
	if _, err := a.Push(img, nil, "shared", "v1"); err != nil {
		t.Fatal(err)
	}
	manifest(t, b.Host, "shared", "v1")
}

func TestStartFailsWhenTheRegistryExits(t *testing.T) {
	// A configuration docker-registry rejects: it exits at once, and Start
	// says so with its log rather than waiting out its timeout.
	if _, err := Binary(); err != nil {
		t.Skip(err)
	}
	start := time.Now()
	_, err := Start(context.Background(), Options{Dir: t.TempDir(), Config: "auth:\n  nosuchauth: {}\n"})
	if err == nil {
		t.Fatal("Start with a bad configuration succeeded")
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("Start took %s to notice the registry exited", time.Since(start))
	}
	t.Logf("Start: %v", err)
}

func TestRegistryListensOnTheIPAsked(t *testing.T) {
	r := startForTest(t, Options{Dir: t.TempDir(), IP: "127.0.0.2"})
	if !strings.HasPrefix(r.Host, "127.0.0.2:") {
		t.Fatalf("registry on %s, want 127.0.0.2", r.Host)
	}
}
