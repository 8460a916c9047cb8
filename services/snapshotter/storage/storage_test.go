package storage

import (
	"context"
	"path/filepath"
	"sort"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// commit creates key on parent and commits it as name.
func commit(t *testing.T, s *Store, name, parent string, labels map[string]string) string {
	t.Helper()
	var id string
	if err := s.Update(func(tx *Tx) (err error) {
		if _, err = tx.Create(snapshots.KindActive, name+"-active", parent, nil); err != nil {
			return err
		}
		id, err = tx.Commit(name+"-active", name, "", labels, snapshots.Usage{Size: 10, Inodes: 2})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCreateChecksKeyAndParent(t *testing.T) {
	s := open(t)
	commit(t, s, "base", "", nil)
	err := s.Update(func(tx *Tx) error {
		for _, c := range []struct {
			kind        snapshots.Kind
			key, parent string
			want        func(error) bool
			what        string
		}{
			{snapshots.KindActive, "", "", errdefs.IsInvalidArgument, "empty key"},
			{snapshots.KindCommitted, "c", "", errdefs.IsInvalidArgument, "committed kind"},
			{snapshots.KindActive, "base", "", errdefs.IsAlreadyExists, "existing name"},
			{snapshots.KindActive, "x", "missing", errdefs.IsNotFound, "missing parent"},
		} {
			if _, err := tx.Create(c.kind, c.key, c.parent, nil); !c.want(err) {
				t.Errorf("%s: got %v", c.what, err)
			}
		}
		if _, err := tx.Create(snapshots.KindActive, "active", "base", nil); err != nil {
			return err
		}
		if _, err := tx.Create(snapshots.KindView, "y", "active", nil); !errdefs.IsInvalidArgument(err) {
			t.Errorf("active parent: got %v, want InvalidArgument", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestParentChainIsNearestFirst(t *testing.T) {
	s := open(t)
	a := commit(t, s, "a", "", nil)
	b := commit(t, s, "b", "a", nil)
	c := commit(t, s, "c", "b", nil)
	var snap Snapshot
	if err := s.Update(func(tx *Tx) (err error) {
		snap, err = tx.Create(snapshots.KindActive, "top", "c", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := snap.ParentIDs, []string{c, b, a}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("parent ids %v, want %v", got, want)
	}
	if err := s.View(func(tx *Tx) error {
		got, err := tx.Get("top")
		if err != nil || got.ID != snap.ID || len(got.ParentIDs) != 3 {
			t.Fatalf("Get(top) = %+v, %v; want %+v", got, err, snap)
		}
		if _, err := tx.Get("c"); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Get of a committed snapshot: %v, want FailedPrecondition", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestCommitKeepsIDAndRecordsUsage(t *testing.T) {
	s := open(t)
	err := s.Update(func(tx *Tx) error {
		snap, err := tx.Create(snapshots.KindActive, "k", "", map[string]string{"old": "1"})
		if err != nil {
			return err
		}
		if _, err := tx.Create(snapshots.KindView, "v", "", nil); err != nil {
			return err
		}
		if _, err := tx.Commit("v", "vv", "", nil, snapshots.Usage{}); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("commit of a view: %v, want FailedPrecondition", err)
		}
		id, err := tx.Commit("k", "n", "", map[string]string{"new": "2"}, snapshots.Usage{Size: 7, Inodes: 3})
		if err != nil {
			return err
		}
		if id != snap.ID {
			t.Errorf("commit changed id %s to %s", snap.ID, id)
		}
		gotID, info, u, err := tx.Info("n")
		if err != nil {
			return err
		}
		if gotID != id || info.Kind != snapshots.KindCommitted || info.Labels["new"] != "2" || info.Labels["old"] != "" || u.Size != 7 || u.Inodes != 3 {
			t.Errorf("committed: id %s info %+v usage %+v", gotID, info, u)
		}
		if _, _, _, err := tx.Info("k"); !errdefs.IsNotFound(err) {
			t.Errorf("active key after commit: %v, want NotFound", err)
		}
		if _, err := tx.Create(snapshots.KindActive, "k2", "", nil); err != nil {
			return err
		}
		if _, err := tx.Commit("k2", "n", "", nil, snapshots.Usage{}); !errdefs.IsAlreadyExists(err) {
			t.Errorf("commit onto an existing name: %v, want AlreadyExists", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCommitWithParentRebasesOnlyABase(t *testing.T) {
	s := open(t)
	commit(t, s, "p", "", nil)
	commit(t, s, "q", "", nil)
	err := s.Update(func(tx *Tx) error {
		if _, err := tx.Create(snapshots.KindActive, "base", "", nil); err != nil {
			return err
		}
		if _, err := tx.Commit("base", "rebased", "p", nil, snapshots.Usage{}); err != nil {
			return err
		}
		if _, info, _, _ := tx.Info("rebased"); info.Parent != "p" {
			t.Errorf("parent after commit with parent: %q, want p", info.Parent)
		}
		if _, _, err := tx.Remove("p"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("remove of the new parent: %v, want FailedPrecondition", err)
		}
		if _, err := tx.Create(snapshots.KindActive, "child", "p", nil); err != nil {
			return err
		}
		if _, err := tx.Commit("child", "c", "q", nil, snapshots.Usage{}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("changing the parent on commit: %v, want InvalidArgument", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRemoveRefusesParentsAndNeverReusesIDs(t *testing.T) {
	s := open(t)
	a := commit(t, s, "a", "", nil)
	commit(t, s, "b", "a", nil)
	err := s.Update(func(tx *Tx) error {
		if _, _, err := tx.Remove("a"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("remove of a parent: %v, want FailedPrecondition", err)
		}
		if _, _, err := tx.Remove("b"); err != nil {
			return err
		}
		id, kind, err := tx.Remove("a")
		if err != nil {
			return err
		}
		if id != a || kind != snapshots.KindCommitted {
			t.Errorf("remove returned %s %v, want %s committed", id, kind, a)
		}
		if _, _, err := tx.Remove("a"); !errdefs.IsNotFound(err) {
			t.Errorf("second remove: %v, want NotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if c := commit(t, s, "c", "", nil); c == a {
		t.Fatalf("id %s of a removed snapshot was handed out again", a)
	}
}

func TestUpdateChangesOnlyLabels(t *testing.T) {
	s := open(t)
	commit(t, s, "n", "", map[string]string{"a": "1", "b": "2"})
	err := s.Update(func(tx *Tx) error {
		info, err := tx.UpdateInfo(snapshots.Info{Name: "n", Labels: map[string]string{"a": "x", "c": "3"}}, "labels.a", "labels.b")
		if err != nil {
			return err
		}
		if len(info.Labels) != 1 || info.Labels["a"] != "x" {
			t.Errorf("labels after updating a and removing b: %v", info.Labels)
		}
		if !info.Updated.After(info.Created) {
			t.Errorf("updated %v not after created %v", info.Updated, info.Created)
		}
		info, err = tx.UpdateInfo(snapshots.Info{Name: "n", Labels: map[string]string{"z": "9"}})
		if err != nil {
			return err
		}
		if len(info.Labels) != 1 || info.Labels["z"] != "9" {
			t.Errorf("labels after replacing all: %v", info.Labels)
		}
		if _, err := tx.UpdateInfo(snapshots.Info{Name: "n", Parent: "x"}, "parent"); !errdefs.IsInvalidArgument(err) {
			t.Errorf("updating parent: %v, want InvalidArgument", err)
		}
		if _, err := tx.UpdateInfo(snapshots.Info{Name: "nope"}); !errdefs.IsNotFound(err) {
			t.Errorf("updating a missing snapshot: %v, want NotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWalkFilters(t *testing.T) {
	s := open(t)
	commit(t, s, "a", "", map[string]string{"team": "x"})
	commit(t, s, "b", "a", map[string]string{"team": "y"})
	if err := s.Update(func(tx *Tx) error {
		_, err := tx.Create(snapshots.KindActive, "c", "b", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"a", "b", "c"}},
		{[]string{"kind==committed"}, []string{"a", "b"}},
		{[]string{"kind==active"}, []string{"c"}},
		{[]string{"parent==a"}, []string{"b"}},
		{[]string{`labels.team==x`, "name==c"}, []string{"a", "c"}},
		{[]string{"labels.team"}, []string{"a", "b"}},
	} {
		var got []string
		if err := s.View(func(tx *Tx) error {
			return tx.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
				got = append(got, info.Name)
				return nil
			}, c.filters...)
		}); err != nil {
			t.Fatal(err)
		}
		sort.Strings(got)
		if len(got) != len(c.want) {
			t.Errorf("filters %q matched %v, want %v", c.filters, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("filters %q matched %v, want %v", c.filters, got, c.want)
				break
			}
		}
	}
	if err := s.View(func(tx *Tx) error {
		return tx.Walk(context.Background(), func(context.Context, snapshots.Info) error { return nil }, "name==")
	}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad filter: %v, want InvalidArgument", err)
	}
}

func TestSecondOpenOfSameFileFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metadata.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("a second Open of a file in use succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
