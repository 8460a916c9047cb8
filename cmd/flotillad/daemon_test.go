package main

import (
	"maps"
	"slices"
	"testing"

	"github.com/flotilla-project/flotilla/pkg/config"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/supervisor"
)

// Each service is given the sockets of every service it calls, so that it
// calls each on its own: what it requires, and what it reaches once
// serving.
func TestEachServiceIsGivenTheSocketsOfWhatItCalls(t *testing.T) {
	cfg := config.Default()
	cfg.Root, cfg.State = "/r", "/s"
	specs, err := specsFor(cfg, logging.Options{})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]supervisor.Spec{}
	for _, s := range specs {
		byName[s.Name] = s
	}
	for _, c := range []struct {
		name         string
		deps         []string
		snapshotters bool
	}{
		// The namespaced reads and writes it serves ask metadata.
		{"content", []string{"metadata"}, false},
		// The first snapshotter applies layers: blobs from content, once
		// metadata said the caller may see them.
		{"snapshotter-overlayfs", []string{"content", "metadata"}, false},
		{"snapshotter-native", nil, false},
		{"metadata", []string{"content"}, true},
		{"tasks", []string{"metadata"}, false},
		{"cri", []string{"content", "metadata", "tasks"}, true},
	} {
		s, ok := byName[c.name]
		if !ok {
			t.Errorf("no spec for %s", c.name)
			continue
		}
		if got := slices.Sorted(maps.Keys(s.Env.Deps)); !slices.Equal(got, c.deps) {
			t.Errorf("%s is given the sockets of %v, want %v", c.name, got, c.deps)
		}
		for dep, sock := range s.Env.Deps {
			if want := "/s/" + dep + ".sock"; sock != want {
				t.Errorf("%s is given %s for %s, want %s", c.name, sock, dep, want)
			}
		}
		if got := len(s.Env.Snapshotters) == 2; got != c.snapshotters {
			t.Errorf("%s is given the snapshotters' sockets: %v, want %v (%v)", c.name, got, c.snapshotters, s.Env.Snapshotters)
		}
		if s.Env.RouteWaitMS != 10_000 {
			t.Errorf("%s waits %dms for a restarting service, want route_wait's 10000", c.name, s.Env.RouteWaitMS)
		}
	}
	// Startup order is what services require, not what they reach:
	// metadata starts after the snapshotters, one of which reaches it.
	if r := byName["snapshotter-overlayfs"].Requires; !slices.Equal(r, []string{"content"}) {
		t.Errorf("snapshotter-overlayfs waits for %v at start, want content alone", r)
	}
}
