package refs

import (
	"slices"
	"testing"
)

func TestBackRefsReadsContainerdsLabels(t *testing.T) {
	got := backRefs(map[string]string{
		"containerd.io/gc.bref.container":            "c1",
		"containerd.io/gc.bref.container.other":      "c2",
		"containerd.io/gc.bref.container/x":          "c3",
		"containerd.io/gc.bref.containers":           "not one",
		"containerd.io/gc.bref.content":              "sha256:abc",
		"containerd.io/gc.bref.image":                "docker.io/library/busybox:latest",
		"containerd.io/gc.bref.snapshot.overlayfs":   "k1",
		"containerd.io/gc.bref.snapshot.overlayfs/a": "k2",
		"containerd.io/gc.bref.snapshot.":            "no snapshotter",
		"example.com/label":                          "x",
	})
	var s []string
	for _, r := range got {
		s = append(s, r.kind+":"+r.snapshotter+":"+r.key)
	}
	slices.Sort(s)
	want := []string{"container::c1", "container::c2", "container::c3", "content::sha256:abc", "image::docker.io/library/busybox:latest", "snapshot:overlayfs:k1", "snapshot:overlayfs:k2"}
	if !slices.Equal(s, want) {
		t.Errorf("back-references = %v, want %v", s, want)
	}
}
