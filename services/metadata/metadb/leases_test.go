package metadb

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func TestLeaseCreateAcceptsContainerdRandomIDs(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	// containerd's leases.WithRandomID makes ids like these; they are not
	// identifiers (they may end in "-"), yet must be accepted.
	for _, id := range []string{"476594604-IsN-", "1700000000-abc_", "a b", "x/y", strings.Repeat("i", maxLeaseID)} {
		l, err := db.CreateLease(ctx, leases.Lease{ID: id, Labels: map[string]string{"k": "v"}})
		if err != nil {
			t.Errorf("create lease %q: %v", id, err)
			continue
		}
		if l.ID != id || l.CreatedAt.IsZero() || l.Labels["k"] != "v" {
			t.Errorf("create lease %q returned %+v", id, l)
		}
	}
}

func TestLeaseCreateRefusals(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "dup"}); err != nil {
		t.Fatal(err)
	}
	_, err := db.CreateLease(ctx, leases.Lease{ID: "dup"})
	wantErr(t, "create a duplicate lease", err, errdefs.IsAlreadyExists, "AlreadyExists")
	if _, err := db.CreateLease(nsCtx("other"), leases.Lease{ID: "dup"}); err != nil {
		t.Errorf("the same lease id in another namespace: %v", err)
	}
	for _, tc := range []struct{ name, id string }{
		{"empty", ""},
		{"too long", strings.Repeat("i", maxLeaseID+1)},
		{"control character", "a\nb"},
		{"invalid utf-8", "a\xffb"},
	} {
		_, err := db.CreateLease(ctx, leases.Lease{ID: tc.id})
		wantErr(t, "create a lease with an id that is "+tc.name, err, errdefs.IsInvalidArgument, "InvalidArgument")
	}
	_, err = db.CreateLease(ctx, leases.Lease{ID: "badlabel", Labels: map[string]string{"": "v"}})
	wantErr(t, "create a lease with an empty label key", err, errdefs.IsInvalidArgument, "InvalidArgument")
}

func TestLeaseListFilters(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	for _, l := range []leases.Lease{
		{ID: "a", Labels: map[string]string{"owner": "pull"}},
		{ID: "b", Labels: map[string]string{"owner": "build", "containerd.io/gc.expire": "2030-01-01T00:00:00Z"}},
		{ID: "c"},
	} {
		if _, err := db.CreateLease(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		filters []string
		want    []string
	}{
		{"all", nil, []string{"a", "b", "c"}},
		{"by id", []string{"id==b"}, []string{"b"}},
		{"by label value", []string{"labels.owner==pull"}, []string{"a"}},
		{"by label presence", []string{"labels.owner"}, []string{"a", "b"}},
		{"by dotted label key", []string{`labels."containerd.io/gc.expire"`}, []string{"b"}},
		{"ORed", []string{"id==a", "id==c"}, []string{"a", "c"}},
		{"none", []string{"id==z"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			list, err := db.ListLeases(ctx, tc.filters...)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, l := range list {
				ids = append(ids, l.ID)
			}
			slices.Sort(ids)
			if !slices.Equal(ids, tc.want) {
				t.Errorf("listed %v, want %v", ids, tc.want)
			}
		})
	}
	list, _ := db.ListLeases(ctx, "id==a")
	if len(list) == 1 && (!maps.Equal(list[0].Labels, map[string]string{"owner": "pull"}) || list[0].CreatedAt.IsZero()) {
		t.Errorf("listed lease a as %+v; want its labels and creation time", list[0])
	}
	_, err := db.ListLeases(ctx, "id==")
	wantErr(t, "list with a malformed filter", err, errdefs.IsInvalidArgument, "InvalidArgument")
	if list, _ := db.ListLeases(nsCtx("other")); len(list) != 0 {
		t.Errorf("another namespace lists leases %v", list)
	}
}

func TestLeaseDelete(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "l"}); err != nil {
		t.Fatal(err)
	}
	var dirty []bool
	db.OnDirty(func(sync bool) { dirty = append(dirty, sync) })
	err := db.DeleteLease(nsCtx("other"), "l", false)
	wantErr(t, "delete the lease from another namespace", err, errdefs.IsNotFound, "NotFound")
	if err := db.DeleteLease(ctx, "l", true); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dirty, []bool{true}) {
		t.Errorf("a sync lease delete told the collector %v, want [true]", dirty)
	}
	err = db.DeleteLease(ctx, "l", false)
	wantErr(t, "delete a deleted lease", err, errdefs.IsNotFound, "NotFound")
}

func TestLeaseResourcesAddListDelete(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "l"}); err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("blob")
	res := []leases.Resource{
		{ID: d.String(), Type: "content"},
		{ID: "ingest-ref", Type: "ingests"},
		{ID: "docker.io/library/alpine:latest", Type: "images"},
		{ID: "sha256:abc/layer-key", Type: "snapshots/overlayfs"},
		{ID: "other", Type: "snapshots/native"},
	}
	for _, r := range res {
		if err := db.AddLeaseResource(ctx, "l", r); err != nil {
			t.Fatalf("add %+v: %v", r, err)
		}
	}
	// Adding twice is harmless.
	if err := db.AddLeaseResource(ctx, "l", res[0]); err != nil {
		t.Fatalf("add %+v again: %v", res[0], err)
	}
	got, err := db.ListLeaseResources(ctx, "l")
	if err != nil {
		t.Fatal(err)
	}
	key := func(r leases.Resource) string { return r.Type + " " + r.ID }
	sortRes := func(rs []leases.Resource) []string {
		var out []string
		for _, r := range rs {
			out = append(out, key(r))
		}
		slices.Sort(out)
		return out
	}
	if g, w := sortRes(got), sortRes(res); !slices.Equal(g, w) {
		t.Errorf("lease holds %v, want %v", g, w)
	}

	for _, r := range []leases.Resource{res[0], res[3]} {
		if err := db.DeleteLeaseResource(ctx, "l", r); err != nil {
			t.Fatalf("delete %+v: %v", r, err)
		}
	}
	// Releasing what the lease does not hold is not an error.
	if err := db.DeleteLeaseResource(ctx, "l", leases.Resource{ID: "never", Type: "snapshots/btrfs"}); err != nil {
		t.Errorf("delete a resource the lease never held: %v", err)
	}
	got, _ = db.ListLeaseResources(ctx, "l")
	if g, w := sortRes(got), sortRes([]leases.Resource{res[1], res[2], res[4]}); !slices.Equal(g, w) {
		t.Errorf("after deletes the lease holds %v, want %v", g, w)
	}

	_, err = db.ListLeaseResources(ctx, "missing")
	wantErr(t, "list resources of an unknown lease", err, errdefs.IsNotFound, "NotFound")
	err = db.AddLeaseResource(ctx, "missing", res[1])
	wantErr(t, "add to an unknown lease", err, errdefs.IsNotFound, "NotFound")
	err = db.DeleteLeaseResource(ctx, "missing", res[1])
	wantErr(t, "delete from an unknown lease", err, errdefs.IsNotFound, "NotFound")
	err = db.AddLeaseResource(nsCtx("other"), "l", res[1])
	wantErr(t, "add to the lease of another namespace", err, errdefs.IsNotFound, "NotFound")
}

func TestLeaseResourceValidation(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "l"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		r     leases.Resource
		is    func(error) bool
		class string
	}{
		{"unknown type", leases.Resource{ID: "x", Type: "containers"}, errdefs.IsNotImplemented, "NotImplemented"},
		{"bare snapshots type", leases.Resource{ID: "x", Type: "snapshots"}, errdefs.IsNotImplemented, "NotImplemented"},
		{"bad content digest", leases.Resource{ID: "sha256:zz", Type: "content"}, errdefs.IsInvalidArgument, "InvalidArgument"},
		{"content id that is no digest", leases.Resource{ID: "blob", Type: "content"}, errdefs.IsInvalidArgument, "InvalidArgument"},
		{"empty id", leases.Resource{Type: "ingests"}, errdefs.IsInvalidArgument, "InvalidArgument"},
		{"bad snapshotter name", leases.Resource{ID: "x", Type: "snapshots/a/b"}, errdefs.IsInvalidArgument, "InvalidArgument"},
		{"empty snapshotter name", leases.Resource{ID: "x", Type: "snapshots/"}, errdefs.IsInvalidArgument, "InvalidArgument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "add", db.AddLeaseResource(ctx, "l", tc.r), tc.is, tc.class)
			wantErr(t, "delete", db.DeleteLeaseResource(ctx, "l", tc.r), tc.is, tc.class)
		})
	}
	if got, _ := db.ListLeaseResources(ctx, "l"); len(got) != 0 {
		t.Errorf("refused adds left resources %v", got)
	}
}
