//go:build linux

package overlay

import (
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

func TestMappedRootFindsHostIDOfContainerRoot(t *testing.T) {
	for _, c := range []struct {
		label string
		want  int
		err   func(error) bool
	}{
		{"0:1000:65536", 1000, nil},
		{"1:2000:10,0:3000:1", 3000, nil},
		{"1:2000:10", 0, errdefs.IsInvalidArgument},
		{"0:x:1", 0, errdefs.IsInvalidArgument},
		{"0:1000", 0, errdefs.IsInvalidArgument},
	} {
		got, err := mappedRoot(c.label)
		if c.err != nil {
			if !c.err(err) {
				t.Errorf("mappedRoot(%q) error %v, want InvalidArgument", c.label, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("mappedRoot(%q) = %d, %v; want %d", c.label, got, err, c.want)
		}
	}
}

func TestConfiguredOptionsAreNotOverridden(t *testing.T) {
	if !hasOption([]string{"index=on"}, "index") || !hasOption([]string{"userxattr"}, "userxattr") || hasOption([]string{"indexer=1"}, "index") {
		t.Fatal("hasOption misreads option keys")
	}
}

func TestMountOptionsFollowLowerdirChain(t *testing.T) {
	l := &layout{options: []string{"index=off", "userxattr"}}
	m := l.Mounts("/r/snapshots/9", snapshots.KindActive, []string{"/r/snapshots/5", "/r/snapshots/2"}, snapshots.Info{})
	want := []string{"workdir=/r/snapshots/9/work", "upperdir=/r/snapshots/9/fs", "lowerdir=/r/snapshots/5/fs:/r/snapshots/2/fs", "index=off", "userxattr"}
	if len(m) != 1 || m[0].Type != "overlay" || m[0].Source != "overlay" || len(m[0].Options) != len(want) {
		t.Fatalf("mounts %+v, want overlay with %v", m, want)
	}
	for i := range want {
		if m[0].Options[i] != want[i] {
			t.Fatalf("mounts %+v, want overlay with %v", m, want)
		}
	}
	b := l.Mounts("/r/snapshots/9", snapshots.KindActive, nil, snapshots.Info{})
	if b[0].Type != "bind" || len(b[0].Options) != 2 {
		t.Fatalf("base snapshot mounts %+v: bind mounts take no overlay options", b)
	}
}
