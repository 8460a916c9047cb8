package metadb

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla-project/flotilla/internal/memstore"
)

// testImageBlobs is a manifest that references a config and two layers
// through containerd's gc.ref.content labels.
type testImageBlobs struct {
	manifest, config, layer0, layer1 digest.Digest
}

func (b testImageBlobs) all() []digest.Digest {
	return []digest.Digest{b.manifest, b.config, b.layer0, b.layer1}
}

// writeTestImageBlobs writes an image's blobs as containerd's pull does:
// the bytes first, then the manifest's reference labels by Update (which
// also works when the bytes were already shared from another namespace).
func writeTestImageBlobs(t *testing.T, ctx context.Context, cs content.Store, seed string) testImageBlobs {
	t.Helper()
	var b testImageBlobs
	b.config = writeBlob(t, ctx, cs, []byte(seed+" config"), nil)
	b.layer0 = writeBlob(t, ctx, cs, []byte(seed+" layer 0"), nil)
	b.layer1 = writeBlob(t, ctx, cs, []byte(seed+" layer 1"), nil)
	b.manifest = writeBlob(t, ctx, cs, []byte(seed+" manifest"), nil)
	if _, err := cs.Update(ctx, content.Info{Digest: b.manifest, Labels: map[string]string{
		"containerd.io/gc.ref.content.config": b.config.String(),
		"containerd.io/gc.ref.content.l.0":    b.layer0.String(),
		"containerd.io/gc.ref.content.l.1":    b.layer1.String(),
	}}, "labels.containerd.io/gc.ref.content.config", "labels.containerd.io/gc.ref.content.l.0", "labels.containerd.io/gc.ref.content.l.1"); err != nil {
		t.Fatalf("label the manifest: %v", err)
	}
	return b
}

func collect(t *testing.T, db *DB) GCStats {
	t.Helper()
	st, err := db.GarbageCollect(context.Background())
	if err != nil {
		t.Fatalf("garbage collection: %v", err)
	}
	return st
}

// wantKept checks that ns still records every digest and the backend still
// has their bytes.
func wantKept(t *testing.T, db *DB, be *memstore.Store, ns, why string, ds ...digest.Digest) {
	t.Helper()
	for _, d := range ds {
		if _, err := db.Content().Info(nsCtx(ns), d); err != nil {
			t.Errorf("%s: %s lost its record of %s: %v", why, ns, d, err)
		}
		if !be.Has(d) {
			t.Errorf("%s: the backend lost %s", why, d)
		}
	}
}

// wantGone checks that ns no longer records any of the digests and, when
// backendToo, that the backend no longer has their bytes.
func wantGone(t *testing.T, db *DB, be *memstore.Store, ns, why string, backendToo bool, ds ...digest.Digest) {
	t.Helper()
	for _, d := range ds {
		if _, err := db.Content().Info(nsCtx(ns), d); !errdefs.IsNotFound(err) {
			t.Errorf("%s: %s still records %s (info: %v)", why, ns, d, err)
		}
		if backendToo && be.Has(d) {
			t.Errorf("%s: the backend still has %s", why, d)
		}
	}
}

func TestGCImageKeepsItsManifestConfigAndLayers(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	blobs := writeTestImageBlobs(t, ctx, db.Content(), "img")
	stray := writeBlob(t, ctx, db.Content(), []byte("referenced by nothing"), nil)
	img := images.Image{Name: "img", Target: ocispec.Descriptor{Digest: blobs.manifest, Size: 1, MediaType: ocispec.MediaTypeImageManifest}}
	if _, err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}

	st := collect(t, db)
	wantKept(t, db, be, "ns", "image present", blobs.all()...)
	wantGone(t, db, be, "ns", "unreferenced blob", true, stray)
	if st.Blobs != 1 || st.BackendBlobs != 1 {
		t.Errorf("stats %+v; want one blob removed from meta.db and one from the backend", st)
	}

	if err := db.DeleteImage(ctx, "img", "", false); err != nil {
		t.Fatal(err)
	}
	st = collect(t, db)
	wantGone(t, db, be, "ns", "image deleted", true, blobs.all()...)
	if st.Blobs != 4 || st.BackendBlobs != 4 {
		t.Errorf("stats %+v; want four blobs removed from meta.db and from the backend", st)
	}
	if err := db.DeleteNamespace(context.Background(), "ns"); err != nil {
		t.Errorf("the namespace emptied by collection cannot be deleted: %v", err)
	}
}

func TestGCFollowsReferenceChainsAndSlashLabels(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	cs := db.Content()
	leaf := writeBlob(t, ctx, cs, []byte("leaf"), nil)
	mid := writeBlob(t, ctx, cs, []byte("mid"), map[string]string{"containerd.io/gc.ref.content/custom": leaf.String()})
	index := writeBlob(t, ctx, cs, []byte("index"), map[string]string{"containerd.io/gc.ref.content.m.0": mid.String()})
	notRef := writeBlob(t, ctx, cs, []byte("named by a non-gc label"), nil)
	if _, err := cs.Update(ctx, content.Info{Digest: index, Labels: map[string]string{"other.label": notRef.String()}}, "labels.other.label"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateImage(ctx, testImage("img", index)); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantKept(t, db, be, "ns", "reachable through two labels", index, mid, leaf)
	wantGone(t, db, be, "ns", "named only by a label that is not a gc reference", true, notRef)
}

func TestGCContentSharedByTwoNamespacesStaysUntilBothRelease(t *testing.T) {
	db, be := newTestDB(t)
	a, b := nsCtx("a"), nsCtx("b")
	blobsA := writeTestImageBlobs(t, a, db.Content(), "shared")
	blobsB := writeTestImageBlobs(t, b, db.Content(), "shared")
	if blobsA != blobsB {
		t.Fatal("the same bytes gave different digests")
	}
	for _, ctx := range []context.Context{a, b} {
		if _, err := db.CreateImage(ctx, testImage("img", blobsA.manifest)); err != nil {
			t.Fatal(err)
		}
	}

	if err := db.DeleteImage(a, "img", "", false); err != nil {
		t.Fatal(err)
	}
	st := collect(t, db)
	wantGone(t, db, be, "a", "a's image deleted", false, blobsA.all()...)
	wantKept(t, db, be, "b", "b's image remains", blobsB.all()...)
	if st.BackendBlobs != 0 {
		t.Errorf("the backend lost %d blobs b still holds", st.BackendBlobs)
	}

	if err := db.DeleteImage(b, "img", "", false); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantGone(t, db, be, "b", "both images deleted", true, blobsB.all()...)
}

func TestGCLeaseKeepsContentUntilDeleted(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "pull"}); err != nil {
		t.Fatal(err)
	}
	blobs := writeTestImageBlobs(t, leaseCtx(ctx, "pull"), db.Content(), "leased")
	// Held by the lease only through a resource added after the fact.
	extra := writeBlob(t, ctx, db.Content(), []byte("added later"), nil)
	if err := db.AddLeaseResource(ctx, "pull", leases.Resource{ID: extra.String(), Type: "content"}); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantKept(t, db, be, "ns", "lease present", append(blobs.all(), extra)...)

	if err := db.DeleteLeaseResource(ctx, "pull", leases.Resource{ID: extra.String(), Type: "content"}); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantGone(t, db, be, "ns", "released from the lease", true, extra)
	wantKept(t, db, be, "ns", "still leased", blobs.all()...)

	if err := db.DeleteLease(ctx, "pull", false); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantGone(t, db, be, "ns", "lease deleted", true, blobs.all()...)
}

func TestGCExpiredLeaseIsDeletedWithWhatOnlyItHeld(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for id, exp := range map[string]string{"expired": past, "valid": future} {
		if _, err := db.CreateLease(ctx, leases.Lease{ID: id, Labels: map[string]string{"containerd.io/gc.expire": exp}}); err != nil {
			t.Fatal(err)
		}
	}
	onlyExpired := writeBlob(t, leaseCtx(ctx, "expired"), db.Content(), []byte("only the expired lease"), nil)
	both := writeBlob(t, leaseCtx(ctx, "expired"), db.Content(), []byte("both leases"), nil)
	if err := db.AddLeaseResource(ctx, "valid", leases.Resource{ID: both.String(), Type: "content"}); err != nil {
		t.Fatal(err)
	}
	onlyValid := writeBlob(t, leaseCtx(ctx, "valid"), db.Content(), []byte("only the valid lease"), nil)

	st := collect(t, db)
	if st.Leases != 1 {
		t.Errorf("stats %+v; want one lease removed", st)
	}
	ls, _ := db.ListLeases(ctx)
	if len(ls) != 1 || ls[0].ID != "valid" {
		t.Errorf("leases after collection %+v; want only \"valid\"", ls)
	}
	wantGone(t, db, be, "ns", "held only by an expired lease", true, onlyExpired)
	wantKept(t, db, be, "ns", "held by a lease that has not expired", both, onlyValid)
}

func TestGCFlatLeaseKeepsItsContentButNotWhatItReferences(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	blobs := writeTestImageBlobs(t, ctx, db.Content(), "flat")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "flat", Labels: map[string]string{"containerd.io/gc.flat": time.Now().UTC().Format(time.RFC3339)}}); err != nil {
		t.Fatal(err)
	}
	if err := db.AddLeaseResource(ctx, "flat", leases.Resource{ID: blobs.manifest.String(), Type: "content"}); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantKept(t, db, be, "ns", "held by a flat lease", blobs.manifest)
	wantGone(t, db, be, "ns", "referenced by content a flat lease holds", true, blobs.config, blobs.layer0, blobs.layer1)
}

func TestGCFlatLeaseDoesNotStopAnImageKeepingReferences(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	blobs := writeTestImageBlobs(t, ctx, db.Content(), "flat and image")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "flat", Labels: map[string]string{"containerd.io/gc.flat": "1"}}); err != nil {
		t.Fatal(err)
	}
	if err := db.AddLeaseResource(ctx, "flat", leases.Resource{ID: blobs.manifest.String(), Type: "content"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateImage(ctx, testImage("img", blobs.manifest)); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantKept(t, db, be, "ns", "flat lease and image", blobs.all()...)
}

func TestGCRootLabelKeepsABlobAndWhatItReferences(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	cs := db.Content()
	ref := writeBlob(t, ctx, cs, []byte("referenced by a root"), nil)
	root := writeBlob(t, ctx, cs, []byte("root"), map[string]string{
		"containerd.io/gc.root":            "anything",
		"containerd.io/gc.ref.content.l.0": ref.String(),
	})
	collect(t, db)
	wantKept(t, db, be, "ns", "gc.root", root, ref)

	if _, err := cs.Update(ctx, content.Info{Digest: root}, "labels.containerd.io/gc.root"); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantGone(t, db, be, "ns", "gc.root label removed", true, root, ref)
}

// setIngestExpiry writes expireat of an ingest record, as if it had been
// opened long ago (past) or with a grace period (future).
func setIngestExpiry(t *testing.T, db *DB, ns, ref string, at time.Time) {
	t.Helper()
	if err := db.Bolt().Update(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketContent, bucketIngests, []byte(ref))
		if b == nil {
			return fmt.Errorf("ingest %q of %s is not recorded", ref, ns)
		}
		return putTime(b, keyExpireAt, at)
	}); err != nil {
		t.Fatal(err)
	}
}

func openIngest(t *testing.T, ctx context.Context, cs content.Store, ref string) {
	t.Helper()
	w, err := cs.Writer(ctx, content.WithRef(ref))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	w.Close()
}

func TestGCStaleUnleasedIngestsAreCollectedLeasedOnesKept(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	cs := db.Content()
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "l"}); err != nil {
		t.Fatal(err)
	}
	openIngest(t, ctx, cs, "stale")
	setIngestExpiry(t, db, "ns", "stale", time.Now().Add(-time.Minute))
	openIngest(t, ctx, cs, "graced")
	setIngestExpiry(t, db, "ns", "graced", time.Now().Add(time.Hour))
	openIngest(t, leaseCtx(ctx, "l"), cs, "leased")
	// An ingest the backend has but no namespace records (a crashed writer).
	orphan, err := be.Writer(ctx, content.WithRef("orphan/ref"))
	if err != nil {
		t.Fatal(err)
	}
	orphan.Close()

	st := collect(t, db)
	if st.Ingests != 1 || st.BackendIngests != 2 {
		t.Errorf("stats %+v; want one ingest removed from meta.db, two aborted in the backend", st)
	}
	for _, ref := range []string{backendRef("ns", "stale"), "orphan/ref"} {
		if !be.WasAborted(ref) || be.HasIngest(ref) {
			t.Errorf("backend ingest %q was not aborted", ref)
		}
	}
	if ingestRecorded(t, db, "ns", "stale") {
		t.Error("the expired unleased ingest is still recorded")
	}
	for _, ref := range []string{"leased", "graced"} {
		if !ingestRecorded(t, db, "ns", ref) || !be.HasIngest(backendRef("ns", ref)) {
			t.Errorf("the %s ingest was collected", ref)
		}
		if st, err := cs.Status(ctx, ref); err != nil || st.Offset != int64(len("partial")) {
			t.Errorf("status of the %s ingest = %+v, %v", ref, st, err)
		}
	}

	if err := db.DeleteLease(ctx, "l", false); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	if ingestRecorded(t, db, "ns", "leased") || be.HasIngest(backendRef("ns", "leased")) {
		t.Error("the ingest survived its lease's deletion and a collection")
	}
}

func TestGCKeepsAFreshUnleasedIngest(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	cs := db.Content()
	w, err := cs.Writer(ctx, content.WithRef("uploading"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("first half ")); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	if _, err := w.Write([]byte("second half")); err != nil {
		t.Fatalf("a collection mid-upload broke the unleased ingest: %v", err)
	}
	data := []byte("first half second half")
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data)); err != nil {
		t.Fatalf("commit after a collection: %v", err)
	}
}

func TestGCRemovesBackendBlobsNoNamespaceRecords(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	kept := writeBlob(t, ctx, db.Content(), []byte("kept"), map[string]string{"containerd.io/gc.root": "1"})
	stray := be.Put([]byte("written straight to the content service"))
	st := collect(t, db)
	if be.Has(stray) {
		t.Error("a backend blob no namespace records survived a collection")
	}
	if !be.Has(kept) {
		t.Error("a recorded root blob was removed from the backend")
	}
	if st.BackendBlobs != 1 || st.Blobs != 0 {
		t.Errorf("stats %+v; want one backend blob and no record removed", st)
	}
}

func TestGCOfAnEmptyStore(t *testing.T) {
	db, _ := newTestDB(t)
	st := collect(t, db)
	if st.Blobs+st.Ingests+st.Leases+st.BackendBlobs+st.BackendIngests != 0 {
		t.Errorf("an empty store collected %+v", st)
	}
}

func TestGCConcurrentWithWritersNeverLosesRecordedBytes(t *testing.T) {
	db, be := newTestDB(t)
	cs := db.Content()
	const writers, perWriter = 4, 25
	done := make(chan struct{})
	gcErr := make(chan error, 1)
	go func() {
		defer close(gcErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := db.GarbageCollect(context.Background()); err != nil {
				gcErr <- err
				return
			}
		}
	}()
	for _, ns := range []string{"a", "b"} {
		if _, err := db.CreateLease(nsCtx(ns), leases.Lease{ID: "writers"}); err != nil {
			t.Fatal(err)
		}
	}
	var raced atomic.Int32
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			// Leased, as containerd's clients write: an unleased ingest
			// may be collected mid-upload (see TestGCKeepsAFreshUnleasedIngest).
			ctx := leaseCtx(nsCtx([]string{"a", "b"}[w%2]), "writers")
			for i := range perWriter {
				// Writers in both namespaces race on the same bytes.
				data := []byte{byte(i), byte(w / 2)}
				d := digest.FromBytes(data)
				err := tryWriteBlob(ctx, cs, "w"+string(rune('0'+w))+"-"+d.Encoded()[:8], data, d, map[string]string{"containerd.io/gc.root": "1"})
				if err != nil && !errdefs.IsAlreadyExists(err) {
					errs <- err
					return
				}
				if errdefs.IsAlreadyExists(err) {
					// Shared or already here: make it a root like the commit
					// would have.
					_, err := cs.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"containerd.io/gc.root": "1"}}, "labels.containerd.io/gc.root")
					if errdefs.IsNotFound(err) {
						// AlreadyExists yet not visible: the race of
						// TestContentWriterRacingAnotherNamespacesCommitStillRecordsTheBlob.
						// Not what this test is about; a second write
						// takes the shared path and records the blob.
						raced.Add(1)
						err = tryWriteBlob(ctx, cs, "retry-"+d.Encoded()[:8], data, d, nil)
						if errdefs.IsAlreadyExists(err) {
							_, err = cs.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"containerd.io/gc.root": "1"}}, "labels.containerd.io/gc.root")
						}
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	close(done)
	if err := <-gcErr; err != nil {
		t.Fatalf("collection: %v", err)
	}
	if n := raced.Load(); n > 0 {
		t.Logf("%d writes answered AlreadyExists without recording the blob (known bug, see the skipped race test)", n)
	}
	collect(t, db)
	for _, ns := range []string{"a", "b"} {
		if err := cs.Walk(nsCtx(ns), func(info content.Info) error {
			if !be.Has(info.Digest) {
				t.Errorf("%s records %s but the backend lost its bytes", ns, info.Digest)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestGCCountsTheBytesItReclaims(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	writeBlob(t, ctx, db.Content(), []byte("twelve bytes"), nil)
	writeBlob(t, ctx, db.Content(), []byte("and seventeen too"), nil)
	if st := collect(t, db); st.BytesReclaimed != 12+17 || st.BackendBlobs != 2 {
		t.Fatalf("collecting two unreferenced blobs reclaimed %d bytes in %d blobs, want 29 in 2", st.BytesReclaimed, st.BackendBlobs)
	}
}
