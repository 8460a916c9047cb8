package metadb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// ingestRecorded reports whether meta.db still records ref as an ingest of ns.
func ingestRecorded(t *testing.T, db *DB, ns, ref string) bool {
	t.Helper()
	var ok bool
	if err := db.Bolt().View(func(tx *bolt.Tx) error {
		ok = bucketPath(nsBucket(tx, ns), bucketContent, bucketIngests, []byte(ref)) != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}

func leaseHolds(t *testing.T, db *DB, ns, lease string, r leases.Resource) bool {
	t.Helper()
	rs, err := db.ListLeaseResources(nsCtx(ns), lease)
	if err != nil {
		t.Fatalf("list resources of lease %s: %v", lease, err)
	}
	return slices.Contains(rs, r)
}

func TestContentWrittenInOneNamespaceIsInvisibleInAnother(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	a, b := nsCtx("a"), nsCtx("b")
	data := []byte("hello, namespaces")
	d := writeBlob(t, a, cs, data, map[string]string{"k": "v"})

	info, err := cs.Info(a, d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != int64(len(data)) || info.Labels["k"] != "v" || info.CreatedAt.IsZero() {
		t.Errorf("info in a = %+v", info)
	}
	if got, err := readAll(t, a, cs, d); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read in a = %q, %v", got, err)
	}
	if !be.Has(d) {
		t.Fatal("the bytes are not in the backend")
	}

	_, err = cs.Info(b, d)
	wantErr(t, "info in b", err, errdefs.IsNotFound, "NotFound")
	_, err = cs.ReaderAt(b, ocispec.Descriptor{Digest: d})
	wantErr(t, "read in b", err, errdefs.IsNotFound, "NotFound")
	wantErr(t, "visible in b", cs.Visible(b, d), errdefs.IsNotFound, "NotFound")
	wantErr(t, "delete in b", cs.Delete(b, d), errdefs.IsNotFound, "NotFound")
	_, err = cs.Update(b, content.Info{Digest: d, Labels: map[string]string{"x": "y"}})
	wantErr(t, "update in b", err, errdefs.IsNotFound, "NotFound")
}

func TestContentSharedWritingKnownBytesMakesThemVisible(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	a, b := nsCtx("a"), nsCtx("b")
	data := []byte("shared layer")
	// a keeps its record as a collection root, so only the namespaces'
	// records decide whether the bytes stay.
	d := writeBlob(t, a, cs, data, map[string]string{"containerd.io/gc.root": "x"})

	w, err := cs.Writer(b, content.WithRef("r"), content.WithDescriptor(ocispec.Descriptor{Digest: d, Size: int64(len(data))}))
	if err != nil {
		t.Fatalf("open a writer in b for bytes a holds: %v", err)
	}
	if st, err := w.Status(); err != nil || st.Offset != int64(len(data)) {
		t.Fatalf("writer of shared bytes reports %+v, %v; want them all written", st, err)
	}
	if _, err := cs.Info(b, d); !errdefs.IsNotFound(err) {
		t.Fatalf("shared bytes visible in b before b committed: %v", err)
	}
	if err := w.Commit(b, int64(len(data)), d); err != nil {
		t.Fatalf("commit of shared bytes in b: %v", err)
	}
	info, err := cs.Info(b, d)
	if err != nil {
		t.Fatalf("after commit the blob is not visible in b: %v", err)
	}
	if info.Size != int64(len(data)) {
		t.Errorf("size in b = %d, want %d", info.Size, len(data))
	}
	if got, err := readAll(t, b, cs, d); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read in b = %q, %v", got, err)
	}
	if ingestRecorded(t, db, "b", "r") {
		t.Error("the refused writer left an ingest record in b")
	}

	// b's delete removes only b's record.
	if err := cs.Delete(b, d); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Info(b, d); !errdefs.IsNotFound(err) {
		t.Errorf("info in b after delete: %v, want NotFound", err)
	}
	if _, err := cs.Info(a, d); err != nil {
		t.Errorf("delete in b removed a's record: %v", err)
	}
	if _, err := db.GarbageCollect(a); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, a, cs, d); err != nil || !bytes.Equal(got, data) {
		t.Errorf("after b's delete and a collection, read in a = %q, %v", got, err)
	}
	if !be.Has(d) {
		t.Error("the collection removed bytes a still holds")
	}
}

func TestContentWriterForBytesAlreadyInTheNamespaceIsAlreadyExists(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	data := []byte("once")
	d := writeBlob(t, ctx, cs, data, nil)
	err := tryWriteBlob(ctx, cs, "again", data, d, nil)
	wantErr(t, "write the same bytes again", err, errdefs.IsAlreadyExists, "AlreadyExists")
}

func TestContentWriterValidation(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	_, err := cs.Writer(ctx)
	wantErr(t, "writer without a ref", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = cs.Writer(ctx, content.WithRef("r"), content.WithDescriptor(ocispec.Descriptor{Digest: "sha256:nothex"}))
	wantErr(t, "writer with a bad expected digest", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = cs.Writer(nsCtx(""), content.WithRef("r"))
	wantErr(t, "writer without a namespace", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
}

func TestContentCommitMismatchIsFailedPreconditionAndKeepsALeasedIngest(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "upload"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		size     int64
		expected digest.Digest
	}{
		{"size", 3, ""},
		{"digest", 0, digest.FromString("else")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte("bytes that fail a " + tc.name + " check")

			// In a lease the ingest stays for the client to fix, as in
			// containerd.
			lctx := leaseCtx(ctx, "upload")
			ref := "leased-" + tc.name
			w, err := cs.Writer(lctx, content.WithRef(ref))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			err = w.Commit(lctx, tc.size, tc.expected)
			wantErr(t, "commit with a wrong "+tc.name, err, errdefs.IsFailedPrecondition, "FailedPrecondition")
			if !ingestRecorded(t, db, "ns", ref) {
				t.Error("a failed commit in a lease dropped the ingest record; the client can no longer fix and retry it")
			}
			if _, err := cs.Info(lctx, digest.FromBytes(data)); !errdefs.IsNotFound(err) {
				t.Errorf("a failed commit recorded the blob: %v", err)
			}
			if err := w.Commit(lctx, int64(len(data)), digest.FromBytes(data)); err != nil {
				t.Fatalf("commit after fixing: %v", err)
			}
			if ingestRecorded(t, db, "ns", ref) {
				t.Error("a successful commit left the ingest record")
			}

			// Without a lease nothing promised to keep it: bad input
			// leaves nothing behind.
			ref = "unleased-" + tc.name
			data = append(data, '!')
			w, err = cs.Writer(ctx, content.WithRef(ref))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			err = w.Commit(ctx, tc.size, tc.expected)
			wantErr(t, "unleased commit with a wrong "+tc.name, err, errdefs.IsFailedPrecondition, "FailedPrecondition")
			if ingestRecorded(t, db, "ns", ref) {
				t.Error("a failed unleased commit left its ingest record")
			}
			if sts, _ := be.ListStatuses(context.Background()); len(sts) != 0 {
				t.Errorf("a failed unleased commit left ingests in the backend: %v", sts)
			}
		})
	}
}

func TestContentUpdateLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		update map[string]string
		paths  []string
		want   map[string]string
	}{
		{"no paths replaces labels", map[string]string{"c": "3"}, nil, map[string]string{"c": "3"}},
		{"labels replaces labels", map[string]string{"c": "3"}, []string{"labels"}, map[string]string{"c": "3"}},
		{"labels.k sets one", map[string]string{"a": "9", "c": "3"}, []string{"labels.a"}, map[string]string{"a": "9", "b": "2"}},
		{"labels.k empty removes one", map[string]string{"a": ""}, []string{"labels.a"}, map[string]string{"b": "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := newTestDB(t)
			cs := db.Content()
			ctx := nsCtx("ns")
			d := writeBlob(t, ctx, cs, []byte("labelled"), map[string]string{"a": "1", "b": "2"})
			before, _ := cs.Info(ctx, d)
			out, err := cs.Update(ctx, content.Info{Digest: d, Labels: tc.update}, tc.paths...)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := cs.Info(ctx, d)
			if !maps.Equal(out.Labels, tc.want) || !maps.Equal(got.Labels, tc.want) {
				t.Errorf("labels returned %v, stored %v; want %v", out.Labels, got.Labels, tc.want)
			}
			if got.Size != before.Size || !got.CreatedAt.Equal(before.CreatedAt) {
				t.Errorf("update changed size or creation: before %+v after %+v", before, got)
			}
			if got.UpdatedAt.Before(before.UpdatedAt) {
				t.Errorf("updated time went back: %v -> %v", before.UpdatedAt, got.UpdatedAt)
			}
		})
	}
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	d := writeBlob(t, ctx, db.Content(), []byte("x"), nil)
	_, err := db.Content().Update(ctx, content.Info{Digest: d, Size: 5}, "size")
	wantErr(t, "update path size", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = db.Content().Update(ctx, content.Info{Digest: digest.FromString("missing")})
	wantErr(t, "update unknown content", err, errdefs.IsNotFound, "NotFound")
}

func TestContentWalkFilters(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	d1 := writeBlob(t, ctx, cs, []byte("one"), map[string]string{"kind": "layer"})
	d2 := writeBlob(t, ctx, cs, []byte("two"), map[string]string{"kind": "config"})
	d3 := writeBlob(t, ctx, cs, []byte("three"), nil)
	writeBlob(t, nsCtx("other"), cs, []byte("elsewhere"), map[string]string{"kind": "layer"})
	for _, tc := range []struct {
		name    string
		filters []string
		want    []digest.Digest
	}{
		{"all", nil, []digest.Digest{d1, d2, d3}},
		{"label value", []string{"labels.kind==layer"}, []digest.Digest{d1}},
		{"label presence", []string{"labels.kind"}, []digest.Digest{d1, d2}},
		{"digest", []string{"digest==" + d3.String()}, []digest.Digest{d3}},
		{"ORed", []string{"labels.kind==config", "digest==" + d3.String()}, []digest.Digest{d2, d3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []digest.Digest
			if err := cs.Walk(ctx, func(info content.Info) error {
				got = append(got, info.Digest)
				return nil
			}, tc.filters...); err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("walked %v, want %v", got, want)
			}
		})
	}
	err := cs.Walk(ctx, func(content.Info) error { return nil }, "labels.kind==")
	wantErr(t, "walk with a malformed filter", err, errdefs.IsInvalidArgument, "InvalidArgument")
}

func TestContentIngestsAreScopedPerNamespace(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	a, b := nsCtx("a"), nsCtx("b")
	wa, err := cs.Writer(a, content.WithRef("same-ref"))
	if err != nil {
		t.Fatal(err)
	}
	defer wa.Close()
	wb, err := cs.Writer(b, content.WithRef("same-ref"))
	if err != nil {
		t.Fatal(err)
	}
	defer wb.Close()
	if _, err := wa.Write([]byte("aaaa")); err != nil {
		t.Fatal(err)
	}
	if _, err := wb.Write([]byte("bb")); err != nil {
		t.Fatal(err)
	}

	st, err := cs.Status(a, "same-ref")
	if err != nil {
		t.Fatal(err)
	}
	if st.Ref != "same-ref" || st.Offset != 4 {
		t.Errorf("status in a = ref %q offset %d, want same-ref at 4", st.Ref, st.Offset)
	}
	if st, err := wb.Status(); err != nil || st.Ref != "same-ref" || st.Offset != 2 {
		t.Errorf("writer status in b = %+v, %v; want same-ref at 2", st, err)
	}
	_, err = cs.Status(nsCtx("c"), "same-ref")
	wantErr(t, "status in a namespace without the ingest", err, errdefs.IsNotFound, "NotFound")

	for ns, want := range map[string]int64{"a": 4, "b": 2} {
		sts, err := cs.ListStatuses(nsCtx(ns))
		if err != nil {
			t.Fatal(err)
		}
		if len(sts) != 1 || sts[0].Ref != "same-ref" || sts[0].Offset != want {
			t.Errorf("statuses of %s = %+v, want one same-ref at %d", ns, sts, want)
		}
	}
	if sts, _ := cs.ListStatuses(a, "ref==other"); len(sts) != 0 {
		t.Errorf("status filter ref==other matched %+v", sts)
	}
	if sts, _ := cs.ListStatuses(a, "ref==same-ref"); len(sts) != 1 {
		t.Errorf("status filter ref==same-ref matched %+v", sts)
	}

	if err := cs.Abort(b, "same-ref"); err != nil {
		t.Fatal(err)
	}
	if !be.WasAborted(backendRef("b", "same-ref")) {
		t.Error("abort in b did not abort b's ingest in the backend")
	}
	if be.WasAborted(backendRef("a", "same-ref")) || !be.HasIngest(backendRef("a", "same-ref")) {
		t.Error("abort in b touched a's ingest")
	}
	if _, err := cs.Status(a, "same-ref"); err != nil {
		t.Errorf("status in a after b's abort: %v", err)
	}
	wantErr(t, "abort again in b", cs.Abort(b, "same-ref"), errdefs.IsNotFound, "NotFound")
	if sts, _ := cs.ListStatuses(b); len(sts) != 0 {
		t.Errorf("statuses of b after abort = %+v", sts)
	}
}

func TestContentAbortOfAnIngestTheBackendForgotStillRemovesTheRecord(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	w, err := cs.Writer(ctx, content.WithRef("r"))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := be.Abort(ctx, backendRef("ns", "r")); err != nil {
		t.Fatal(err)
	}
	if err := cs.Abort(ctx, "r"); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if ingestRecorded(t, db, "ns", "r") {
		t.Error("the ingest record survived the abort")
	}
}

func TestContentCommitInALeaseAddsTheBlobToTheLease(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "pull"}); err != nil {
		t.Fatal(err)
	}
	lctx := leaseCtx(ctx, "pull")
	data := []byte("leased")
	d := digest.FromBytes(data)
	w, err := cs.Writer(lctx, content.WithRef("lref"), content.WithDescriptor(ocispec.Descriptor{Digest: d, Size: int64(len(data))}))
	if err != nil {
		t.Fatal(err)
	}
	if !leaseHolds(t, db, "ns", "pull", leases.Resource{ID: "lref", Type: "ingests"}) {
		t.Error("an open ingest in a lease is not held by it")
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(lctx, int64(len(data)), d); err != nil {
		t.Fatal(err)
	}
	if !leaseHolds(t, db, "ns", "pull", leases.Resource{ID: d.String(), Type: "content"}) {
		t.Error("a blob committed in a lease is not held by it")
	}

	// Bytes another namespace already holds become visible under the lease
	// and are held by it too.
	shared := writeBlob(t, nsCtx("other"), cs, []byte("from elsewhere"), nil)
	if err := tryWriteBlob(lctx, cs, "shared", []byte("from elsewhere"), shared, nil); err != nil && !errdefs.IsAlreadyExists(err) {
		t.Fatalf("write bytes another namespace holds: %v", err)
	}
	if !leaseHolds(t, db, "ns", "pull", leases.Resource{ID: shared.String(), Type: "content"}) {
		t.Error("shared bytes made visible under a lease are not held by it")
	}
}

func TestContentCommitRemovesTheIngestFromItsLease(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "pull"}); err != nil {
		t.Fatal(err)
	}
	lctx := leaseCtx(ctx, "pull")
	writeBlob(t, lctx, cs, []byte("done"), nil)
	w, err := cs.Writer(lctx, content.WithRef("aborted"))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := cs.Abort(lctx, "aborted"); err != nil {
		t.Fatal(err)
	}
	rs, _ := db.ListLeaseResources(ctx, "pull")
	for _, r := range rs {
		if r.Type == "ingests" {
			t.Errorf("the lease still holds ingest %q after its commit or abort", r.ID)
		}
	}
}

func TestContentWriterForBytesInTheNamespaceAddsThemToTheLease(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	d := writeBlob(t, ctx, cs, []byte("already here"), nil)
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "pull"}); err != nil {
		t.Fatal(err)
	}
	err := tryWriteBlob(leaseCtx(ctx, "pull"), cs, "again", []byte("already here"), d, nil)
	wantErr(t, "write bytes the namespace holds", err, errdefs.IsAlreadyExists, "AlreadyExists")
	if !leaseHolds(t, db, "ns", "pull", leases.Resource{ID: d.String(), Type: "content"}) {
		t.Error("a pull in a lease found the blob already present but the lease does not hold it; deleting the image that held it loses the blob mid-pull")
	}
}

func TestContentCommitWithAMissingLeaseIsNotFound(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")

	// Named but never created: refused when the writer opens.
	_, err := cs.Writer(leaseCtx(ctx, "ghost"), content.WithRef("r"))
	wantErr(t, "writer in a missing lease", err, errdefs.IsNotFound, "NotFound")

	// Deleted while the ingest was open: refused on commit.
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "short"}); err != nil {
		t.Fatal(err)
	}
	lctx := leaseCtx(ctx, "short")
	data := []byte("orphan")
	w, err := cs.Writer(lctx, content.WithRef("r2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteLease(ctx, "short", false); err != nil {
		t.Fatal(err)
	}
	err = w.Commit(lctx, int64(len(data)), digest.FromBytes(data))
	wantErr(t, "commit in a deleted lease", err, errdefs.IsNotFound, "NotFound")
	if _, err := cs.Info(ctx, digest.FromBytes(data)); !errdefs.IsNotFound(err) {
		t.Errorf("a commit refused for its lease recorded the blob: %v", err)
	}
	// The bytes reached the backend unrecorded; the next collection takes them.
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatal(err)
	}
	if be.Has(digest.FromBytes(data)) {
		t.Error("the unrecorded bytes of a refused commit survived a collection")
	}
}

func TestContentCommitWithoutExpectedDigestOfBytesAnotherNamespaceHolds(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	data := []byte("pushed twice")
	d := writeBlob(t, nsCtx("a"), cs, data, nil)
	// b does not announce the digest, so the writer opens; the backend
	// then finds the bytes on commit.
	cerr := tryWriteBlob(nsCtx("b"), cs, "nodigest", data, "", nil)
	if cerr != nil && !errdefs.IsAlreadyExists(cerr) {
		t.Fatalf("commit: %v", cerr)
	}
	if _, err := cs.Info(nsCtx("b"), d); err != nil {
		t.Errorf("commit answered %v, yet the blob is not visible in b: %v", cerr, err)
	}
	if ingestRecorded(t, db, "b", "nodigest") {
		t.Error("the committed ingest is still recorded in b")
	}
}

func TestContentSecondCommitOfTheSameBytesInANamespaceDropsItsIngest(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	ctx := nsCtx("ns")
	data := []byte("raced")
	d := digest.FromBytes(data)
	desc := ocispec.Descriptor{Digest: d, Size: int64(len(data))}
	w1, err := cs.Writer(ctx, content.WithRef("r1"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	w2, err := cs.Writer(ctx, content.WithRef("r2"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []content.Writer{w1, w2} {
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w1.Commit(ctx, desc.Size, d); err != nil {
		t.Fatal(err)
	}
	err = w2.Commit(ctx, desc.Size, d)
	wantErr(t, "second commit", err, errdefs.IsAlreadyExists, "AlreadyExists")
	if ingestRecorded(t, db, "ns", "r2") {
		t.Error("the second writer's ingest record survived its commit; the namespace can no longer be deleted")
	}
	if err := cs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteNamespace(ctx, "ns"); err != nil {
		t.Errorf("delete the emptied namespace: %v", err)
	}
}

func TestContentWriterRacingAnotherNamespacesCommitStillRecordsTheBlob(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	data := []byte("pulled by two namespaces at once")
	d := digest.FromBytes(data)
	// Another namespace's commit lands between this writer's checks and
	// its backend Writer call.
	be.BeforeWriter(func(string) { be.Put(data) })
	err := tryWriteBlob(nsCtx("b"), cs, "racer", data, d, nil)
	wantErr(t, "write", err, errdefs.IsAlreadyExists, "AlreadyExists")
	if _, err := cs.Info(nsCtx("b"), d); err != nil {
		t.Errorf("the writer answered AlreadyExists but the blob is not visible in b: %v", err)
	}
	if ingestRecorded(t, db, "b", "racer") {
		t.Error("the refused writer left an ingest record in b")
	}
}

func TestContentSharedWriteKeepsTheCommitLabels(t *testing.T) {
	db, _ := newTestDB(t)
	cs := db.Content()
	data := []byte("shared with labels")
	d := writeBlob(t, nsCtx("a"), cs, data, nil)
	err := tryWriteBlob(nsCtx("b"), cs, "labelled", data, d, map[string]string{"k": "v"})
	if err != nil && !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	info, err := cs.Info(nsCtx("b"), d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels["k"] != "v" {
		t.Errorf("labels in b = %v; the commit's labels were dropped", info.Labels)
	}
}

// containerd's proxy writer turns a stream the content service broke by
// going away into an Unknown "EOF"; clients must see Unavailable instead.
func TestBackendErrorOfABrokenStreamIsUnavailable(t *testing.T) {
	for _, err := range []error{
		io.EOF,
		errgrpc.ToNative(io.EOF),
		fmt.Errorf("commit failed: %w", errgrpc.ToNative(io.EOF)),
	} {
		if got := backendErr(err); !errdefs.IsUnavailable(got) {
			t.Errorf("backendErr(%v) = %v, want Unavailable", err, got)
		}
	}
	if got := backendErr(fmt.Errorf("digest mismatch: %w", errdefs.ErrFailedPrecondition)); !errdefs.IsFailedPrecondition(got) {
		t.Errorf("a failed precondition became %v", got)
	}
}
