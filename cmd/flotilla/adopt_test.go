package main

import (
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/containerdroot"
)

// Only what containerd's collector would keep is adopted: an image's
// target and what its gc.ref.content labels reach, and gc.root blobs; a
// blob an import left unreferenced is not (Flotilla's collector would take
// it, and every adoption would copy it again).
func TestReferencedBlobsAreWhatContainerdsCollectorKeeps(t *testing.T) {
	d := func(s string) digest.Digest { return digest.FromString(s) }
	ns := containerdroot.Namespace{
		Images: []containerdroot.Image{{Name: "img", Target: ocispec.Descriptor{Digest: d("manifest")}}},
		Blobs: []containerdroot.Blob{
			{Digest: d("manifest"), Labels: map[string]string{
				"containerd.io/gc.ref.content.config": d("config").String(),
				"containerd.io/gc.ref.content.l.0":    d("layer").String(),
			}},
			{Digest: d("config")},
			{Digest: d("layer")},
			{Digest: d("pinned"), Labels: map[string]string{"containerd.io/gc.root": "2026-01-01T00:00:00Z"}},
			{Digest: d("leftover index")},
		},
	}
	kept, dropped := referencedBlobs(ns)
	if dropped != 1 || len(kept) != 4 {
		t.Fatalf("kept %d, dropped %d; want 4 kept and the leftover dropped", len(kept), dropped)
	}
	for _, b := range kept {
		if b.Digest == d("leftover index") {
			t.Errorf("the unreferenced blob was kept")
		}
	}
}
