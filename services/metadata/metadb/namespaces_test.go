package metadb

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestNamespaceCreateGetAndList(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := context.Background()

	created, err := db.CreateNamespace(ctx, Namespace{Name: "b", Labels: map[string]string{"team": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	if created.Name != "b" || created.Labels["team"] != "x" {
		t.Fatalf("create returned %+v", created)
	}
	if _, err := db.CreateNamespace(ctx, Namespace{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	_, err = db.CreateNamespace(ctx, Namespace{Name: "a"})
	wantErr(t, "create an existing namespace", err, errdefs.IsAlreadyExists, "AlreadyExists")

	got, err := db.GetNamespace(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Labels, map[string]string{"team": "x"}) {
		t.Errorf("labels of b = %v, want team=x", got.Labels)
	}

	list, err := db.ListNamespaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range list {
		names = append(names, n.Name)
	}
	if strings.Join(names, ",") != "a,b" {
		t.Errorf("listed namespaces %v, want [a b] sorted (the schema's version key must not show)", names)
	}

	_, err = db.GetNamespace(ctx, "missing")
	wantErr(t, "get an unknown namespace", err, errdefs.IsNotFound, "NotFound")
}

func TestNamespaceUpdateLabelsByFieldPaths(t *testing.T) {
	start := map[string]string{"a": "1", "b": "2"}
	for _, tc := range []struct {
		name   string
		update map[string]string
		paths  []string
		want   map[string]string
	}{
		{"no paths replaces all labels", map[string]string{"c": "3"}, nil, map[string]string{"c": "3"}},
		{"labels replaces all labels", map[string]string{"c": "3"}, []string{"labels"}, map[string]string{"c": "3"}},
		{"labels.k sets one label", map[string]string{"a": "9", "c": "3"}, []string{"labels.a"}, map[string]string{"a": "9", "b": "2"}},
		{"labels.k adds a new label", map[string]string{"c": "3"}, []string{"labels.c"}, map[string]string{"a": "1", "b": "2", "c": "3"}},
		{"labels.k with an empty value removes it", map[string]string{"a": ""}, []string{"labels.a"}, map[string]string{"b": "2"}},
		{"labels.k absent from the update removes it", nil, []string{"labels.b"}, map[string]string{"a": "1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := newTestDB(t)
			ctx := context.Background()
			if _, err := db.CreateNamespace(ctx, Namespace{Name: "ns", Labels: start}); err != nil {
				t.Fatal(err)
			}
			out, err := db.UpdateNamespace(ctx, Namespace{Name: "ns", Labels: tc.update}, tc.paths...)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(out.Labels, tc.want) {
				t.Errorf("update returned labels %v, want %v", out.Labels, tc.want)
			}
			got, err := db.GetNamespace(ctx, "ns")
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got.Labels, tc.want) {
				t.Errorf("stored labels %v, want %v", got.Labels, tc.want)
			}
		})
	}
}

func TestNamespaceUpdateRejectsOtherPathsAndUnknownNamespaces(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := context.Background()
	if _, err := db.CreateNamespace(ctx, Namespace{Name: "ns"}); err != nil {
		t.Fatal(err)
	}
	_, err := db.UpdateNamespace(ctx, Namespace{Name: "ns"}, "name")
	wantErr(t, "update path name", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = db.UpdateNamespace(ctx, Namespace{Name: "other", Labels: map[string]string{"a": "b"}})
	wantErr(t, "update an unknown namespace", err, errdefs.IsNotFound, "NotFound")
	if _, err := db.GetNamespace(ctx, "other"); !errdefs.IsNotFound(err) {
		t.Errorf("updating an unknown namespace created it (get: %v)", err)
	}
}

func TestNamespaceInvalidNamesAreInvalidArgument(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := context.Background()
	for _, name := range []string{"a/b", "..", "", "-lead", "UPPER?", strings.Repeat("x", 100)} {
		t.Run(name, func(t *testing.T) {
			_, err := db.CreateNamespace(ctx, Namespace{Name: name})
			wantErr(t, "create", err, errdefs.IsInvalidArgument, "InvalidArgument")
			_, err = db.GetNamespace(ctx, name)
			wantErr(t, "get", err, errdefs.IsInvalidArgument, "InvalidArgument")
			_, err = db.UpdateNamespace(ctx, Namespace{Name: name})
			wantErr(t, "update", err, errdefs.IsInvalidArgument, "InvalidArgument")
			err = db.DeleteNamespace(ctx, name)
			wantErr(t, "delete", err, errdefs.IsInvalidArgument, "InvalidArgument")
			// A call made in such a namespace is refused too.
			_, err = db.ListImages(nsCtx(name))
			if err == nil {
				t.Errorf("list images in namespace %q succeeded", name)
			}
		})
	}
}

func TestNamespaceCreateRejectsInvalidLabels(t *testing.T) {
	db, _ := newTestDB(t)
	_, err := db.CreateNamespace(context.Background(), Namespace{Name: "ns", Labels: map[string]string{"k": strings.Repeat("v", 5000)}})
	wantErr(t, "create with an oversized label", err, errdefs.IsInvalidArgument, "InvalidArgument")
}

func TestNamespaceDeleteOfEmptyAndUnknown(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := context.Background()
	if _, err := db.CreateNamespace(ctx, Namespace{Name: "ns", Labels: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteNamespace(ctx, "ns"); err != nil {
		t.Fatalf("delete an empty (labelled) namespace: %v", err)
	}
	_, err := db.GetNamespace(ctx, "ns")
	wantErr(t, "get after delete", err, errdefs.IsNotFound, "NotFound")
	err = db.DeleteNamespace(ctx, "ns")
	wantErr(t, "delete an unknown namespace", err, errdefs.IsNotFound, "NotFound")
}

func TestNamespaceDeleteOfNonEmptyNamesWhatItHolds(t *testing.T) {
	for _, tc := range []struct {
		name string
		fill func(t *testing.T, db *DB, ctx context.Context)
		want string
	}{
		{"images", func(t *testing.T, db *DB, ctx context.Context) {
			if _, err := db.CreateImage(ctx, testImage("img", digest.FromString("x"))); err != nil {
				t.Fatal(err)
			}
		}, "images"},
		{"blobs", func(t *testing.T, db *DB, ctx context.Context) {
			writeBlob(t, ctx, db.Content(), []byte("blob"), nil)
		}, "blobs"},
		{"leases", func(t *testing.T, db *DB, ctx context.Context) {
			if _, err := db.CreateLease(ctx, leases.Lease{ID: "l"}); err != nil {
				t.Fatal(err)
			}
		}, "leases"},
		{"ingests", func(t *testing.T, db *DB, ctx context.Context) {
			w, err := db.Content().Writer(ctx, content.WithRef("open"))
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
		}, "ingests"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := newTestDB(t)
			ctx := nsCtx("ns")
			tc.fill(t, db, ctx)
			err := db.DeleteNamespace(context.Background(), "ns")
			wantErr(t, "delete a namespace holding "+tc.name, err, errdefs.IsFailedPrecondition, "FailedPrecondition")
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say the namespace still has %s", err, tc.want)
			}
			if _, err := db.GetNamespace(context.Background(), "ns"); err != nil {
				t.Errorf("refused delete still removed the namespace: %v", err)
			}
		})
	}
}

func TestWritingInANamespaceCreatesIt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(db *DB, ctx context.Context) error
	}{
		{"image", func(db *DB, ctx context.Context) error {
			_, err := db.CreateImage(ctx, testImage("img", digest.FromString("x")))
			return err
		}},
		{"lease", func(db *DB, ctx context.Context) error {
			_, err := db.CreateLease(ctx, leases.Lease{ID: "l"})
			return err
		}},
		{"content", func(db *DB, ctx context.Context) error {
			return tryWriteBlob(ctx, db.Content(), "r", []byte("abc"), digest.FromString("abc"), nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := newTestDB(t)
			if err := tc.write(db, nsCtx("fresh")); err != nil {
				t.Fatal(err)
			}
			if _, err := db.GetNamespace(context.Background(), "fresh"); err != nil {
				t.Errorf("writing a %s did not create its namespace: %v", tc.name, err)
			}
		})
	}
}

func TestReadingInAnUnknownNamespaceDoesNotCreateIt(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ghost")
	if imgs, err := db.ListImages(ctx); err != nil || len(imgs) != 0 {
		t.Errorf("list images = %v, %v; want none", imgs, err)
	}
	if _, err := db.GetImage(ctx, "x"); !errdefs.IsNotFound(err) {
		t.Errorf("get image: %v, want NotFound", err)
	}
	if ls, err := db.ListLeases(ctx); err != nil || len(ls) != 0 {
		t.Errorf("list leases = %v, %v; want none", ls, err)
	}
	if _, err := db.Content().Info(ctx, digest.FromString("x")); !errdefs.IsNotFound(err) {
		t.Errorf("content info: %v, want NotFound", err)
	}
	if err := db.Content().Walk(ctx, func(content.Info) error { return nil }); err != nil {
		t.Errorf("walk: %v", err)
	}
	if sts, err := db.Content().ListStatuses(ctx); err != nil || len(sts) != 0 {
		t.Errorf("list statuses = %v, %v", sts, err)
	}
	if _, err := db.GetNamespace(context.Background(), "ghost"); !errdefs.IsNotFound(err) {
		t.Errorf("reads in namespace ghost created it (get: %v)", err)
	}
	list, _ := db.ListNamespaces(context.Background())
	if len(list) != 0 {
		t.Errorf("namespaces after reads only: %v, want none", list)
	}
}

func TestCallsWithoutANamespaceAreRefused(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := context.Background()
	_, err := db.ListImages(ctx)
	wantErr(t, "list images without a namespace", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
	_, err = db.CreateLease(ctx, leases.Lease{ID: "l"})
	wantErr(t, "create a lease without a namespace", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
	_, err = db.Content().Info(ctx, digest.FromString("x"))
	wantErr(t, "content info without a namespace", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
}

func testImage(name string, d digest.Digest) images.Image {
	return images.Image{Name: name, Target: ocispec.Descriptor{Digest: d, Size: 10, MediaType: ocispec.MediaTypeImageManifest}}
}

func TestNamespaceNamedVersionIsUsableOrCleanlyRefused(t *testing.T) {
	db, _ := newTestDB(t)
	_, err := db.CreateNamespace(context.Background(), Namespace{Name: "version"})
	if err != nil && !errdefs.IsInvalidArgument(err) {
		t.Errorf("create namespace \"version\": %v; want success or InvalidArgument", err)
	}
	_, err = db.CreateLease(nsCtx("version"), leases.Lease{ID: "l"})
	if err != nil && !errdefs.IsInvalidArgument(err) {
		t.Errorf("create a lease in namespace \"version\": %v; want success or InvalidArgument", err)
	}
}
