package roster

import "testing"

func TestEveryRequirementIsAnEarlierService(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range Services {
		if e.Build == nil {
			t.Errorf("service %s has no constructor", e.Name)
		}
		for _, r := range e.Requires {
			if r == Snapshotters {
				r = "snapshotter"
			}
			if !seen[r] {
				t.Errorf("service %s requires %s, which is not listed before it", e.Name, r)
			}
		}
		if seen[e.Name] {
			t.Errorf("service %s is listed twice", e.Name)
		}
		seen[e.Name] = true
	}
}

func TestLookupFindsASnapshotterProcessByItsName(t *testing.T) {
	for name, want := range map[string]string{"content": "content", "snapshotter-overlayfs": "snapshotter", "snapshotter": "snapshotter"} {
		e, ok := Lookup(name)
		if !ok || e.Name != want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", name, e.Name, ok, want)
		}
	}
	for _, name := range []string{"", "content-x", "snapshotter-", "gateway"} {
		if e, ok := Lookup(name); ok {
			t.Errorf("Lookup(%q) found %s", name, e.Name)
		}
	}
}
