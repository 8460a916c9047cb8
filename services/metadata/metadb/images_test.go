package metadb

import (
	"maps"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestImageCreateAndGetRoundTrips(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	in := images.Image{
		Name:   "docker.io/library/alpine:latest",
		Labels: map[string]string{"a": "1"},
		Target: ocispec.Descriptor{
			Digest:      digest.FromString("manifest"),
			Size:        321,
			MediaType:   ocispec.MediaTypeImageIndex,
			Annotations: map[string]string{"org.opencontainers.image.ref.name": "latest"},
		},
	}
	created, err := db.CreateImage(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if created.CreatedAt.IsZero() || !created.CreatedAt.Equal(created.UpdatedAt) {
		t.Errorf("created image times: created %v updated %v; want both set and equal", created.CreatedAt, created.UpdatedAt)
	}
	got, err := db.GetImage(ctx, in.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != in.Name || got.Target.Digest != in.Target.Digest || got.Target.Size != 321 ||
		got.Target.MediaType != in.Target.MediaType || !maps.Equal(got.Target.Annotations, in.Target.Annotations) ||
		!maps.Equal(got.Labels, in.Labels) {
		t.Errorf("get returned %+v, want %+v", got, in)
	}
	if !got.CreatedAt.Equal(created.CreatedAt) {
		t.Errorf("stored created time %v, returned %v", got.CreatedAt, created.CreatedAt)
	}

	_, err = db.CreateImage(ctx, in)
	wantErr(t, "create an existing image", err, errdefs.IsAlreadyExists, "AlreadyExists")
	_, err = db.GetImage(ctx, "missing")
	wantErr(t, "get an unknown image", err, errdefs.IsNotFound, "NotFound")
	_, err = db.GetImage(nsCtx("other"), in.Name)
	wantErr(t, "get the image from another namespace", err, errdefs.IsNotFound, "NotFound")
}

func TestImageValidation(t *testing.T) {
	good := testImage("img", digest.FromString("m"))
	for _, tc := range []struct {
		name string
		edit func(*images.Image)
	}{
		{"empty name", func(i *images.Image) { i.Name = "" }},
		{"bad digest", func(i *images.Image) { i.Target.Digest = "sha256:nothex" }},
		{"missing digest", func(i *images.Image) { i.Target.Digest = "" }},
		{"size 0", func(i *images.Image) { i.Target.Size = 0 }},
		{"negative size", func(i *images.Image) { i.Target.Size = -1 }},
		{"empty mediatype", func(i *images.Image) { i.Target.MediaType = "" }},
		{"empty label key", func(i *images.Image) { i.Labels = map[string]string{"": "v"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := newTestDB(t)
			img := good
			tc.edit(&img)
			_, err := db.CreateImage(nsCtx("ns"), img)
			wantErr(t, "create with "+tc.name, err, errdefs.IsInvalidArgument, "InvalidArgument")

			// The same defect introduced by an update is refused too.
			if img.Name == "" {
				return
			}
			if _, err := db.CreateImage(nsCtx("ns"), good); err != nil {
				t.Fatal(err)
			}
			_, err = db.UpdateImage(nsCtx("ns"), img)
			wantErr(t, "update to "+tc.name, err, errdefs.IsInvalidArgument, "InvalidArgument")
			if got, _ := db.GetImage(nsCtx("ns"), "img"); got.Target.Digest != good.Target.Digest || got.Target.Size != good.Target.Size {
				t.Errorf("refused update changed the image: %+v", got.Target)
			}
		})
	}
}

func TestImageListFilters(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	dA, dB := digest.FromString("a"), digest.FromString("b")
	for _, img := range []images.Image{
		{Name: "docker.io/library/alpine:3", Labels: map[string]string{"x": "1"}, Target: ocispec.Descriptor{Digest: dA, Size: 1, MediaType: ocispec.MediaTypeImageIndex}},
		{Name: "docker.io/library/busybox:1", Labels: map[string]string{"x": "2"}, Target: ocispec.Descriptor{Digest: dB, Size: 1, MediaType: ocispec.MediaTypeImageManifest}},
		{Name: "quay.io/other:1", Target: ocispec.Descriptor{Digest: dA, Size: 1, MediaType: ocispec.MediaTypeImageManifest, Annotations: map[string]string{"k": "v"}}},
	} {
		if _, err := db.CreateImage(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"docker.io/library/alpine:3", "docker.io/library/busybox:1", "quay.io/other:1"}},
		{[]string{"name==quay.io/other:1"}, []string{"quay.io/other:1"}},
		{[]string{`name~=^docker\.io/`}, []string{"docker.io/library/alpine:3", "docker.io/library/busybox:1"}},
		{[]string{"labels.x==2"}, []string{"docker.io/library/busybox:1"}},
		{[]string{"labels.x"}, []string{"docker.io/library/alpine:3", "docker.io/library/busybox:1"}},
		{[]string{"target.digest==" + dA.String()}, []string{"docker.io/library/alpine:3", "quay.io/other:1"}},
		{[]string{"target.mediatype==" + ocispec.MediaTypeImageIndex}, []string{"docker.io/library/alpine:3"}},
		{[]string{"annotations.k==v"}, []string{"quay.io/other:1"}},
		// Filters are ORed; a comma ANDs within one.
		{[]string{"labels.x==1", "name==quay.io/other:1"}, []string{"docker.io/library/alpine:3", "quay.io/other:1"}},
		{[]string{"target.digest==" + dA.String() + ",labels.x==1"}, []string{"docker.io/library/alpine:3"}},
		{[]string{"name==nothing"}, nil},
	} {
		t.Run(slicesString(tc.filters), func(t *testing.T) {
			list, err := db.ListImages(ctx, tc.filters...)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, img := range list {
				names = append(names, img.Name)
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.want) {
				t.Errorf("listed %v, want %v", names, tc.want)
			}
		})
	}

	_, err := db.ListImages(ctx, "name==")
	wantErr(t, "list with a malformed filter", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = db.ListImages(ctx, "labels.x==1,")
	wantErr(t, "list with a dangling comma", err, errdefs.IsInvalidArgument, "InvalidArgument")
}

func slicesString(s []string) string {
	if len(s) == 0 {
		return "no filter"
	}
	out := s[0]
	for _, x := range s[1:] {
		out += " OR " + x
	}
	return out
}

func TestImageUpdateByFieldPaths(t *testing.T) {
	d1, d2 := digest.FromString("one"), digest.FromString("two")
	base := images.Image{
		Name:   "img",
		Labels: map[string]string{"a": "1", "b": "2"},
		Target: ocispec.Descriptor{Digest: d1, Size: 10, MediaType: ocispec.MediaTypeImageManifest, Annotations: map[string]string{"p": "1", "q": "2"}},
	}
	newTarget := ocispec.Descriptor{Digest: d2, Size: 20, MediaType: ocispec.MediaTypeImageIndex, Annotations: map[string]string{"z": "9"}}
	for _, tc := range []struct {
		name       string
		update     images.Image
		paths      []string
		wantLabels map[string]string
		wantTarget ocispec.Descriptor
	}{
		{
			name:       "no paths replaces labels and target",
			update:     images.Image{Name: "img", Labels: map[string]string{"c": "3"}, Target: newTarget},
			wantLabels: map[string]string{"c": "3"},
			wantTarget: newTarget,
		},
		{
			name:       "labels.k sets one label",
			update:     images.Image{Name: "img", Labels: map[string]string{"a": "x", "c": "3"}, Target: newTarget},
			paths:      []string{"labels.a"},
			wantLabels: map[string]string{"a": "x", "b": "2"},
			wantTarget: base.Target,
		},
		{
			name:       "labels.k with an empty value removes it",
			update:     images.Image{Name: "img", Labels: map[string]string{"b": ""}},
			paths:      []string{"labels.b"},
			wantLabels: map[string]string{"a": "1"},
			wantTarget: base.Target,
		},
		{
			name:       "annotations.k sets one annotation",
			update:     images.Image{Name: "img", Target: ocispec.Descriptor{Annotations: map[string]string{"p": "new", "r": "3"}}},
			paths:      []string{"annotations.p"},
			wantLabels: base.Labels,
			wantTarget: ocispec.Descriptor{Digest: d1, Size: 10, MediaType: ocispec.MediaTypeImageManifest, Annotations: map[string]string{"p": "new", "q": "2"}},
		},
		{
			name:       "annotations.k absent removes it",
			update:     images.Image{Name: "img"},
			paths:      []string{"annotations.q"},
			wantLabels: base.Labels,
			wantTarget: ocispec.Descriptor{Digest: d1, Size: 10, MediaType: ocispec.MediaTypeImageManifest, Annotations: map[string]string{"p": "1"}},
		},
		{
			name:       "annotations replaces all annotations",
			update:     images.Image{Name: "img", Target: ocispec.Descriptor{Annotations: map[string]string{"r": "3"}}},
			paths:      []string{"annotations"},
			wantLabels: base.Labels,
			wantTarget: ocispec.Descriptor{Digest: d1, Size: 10, MediaType: ocispec.MediaTypeImageManifest, Annotations: map[string]string{"r": "3"}},
		},
		{
			name:       "target replaces the target only",
			update:     images.Image{Name: "img", Labels: map[string]string{"ignored": "y"}, Target: newTarget},
			paths:      []string{"target"},
			wantLabels: base.Labels,
			wantTarget: newTarget,
		},
		{
			name:       "several paths at once",
			update:     images.Image{Name: "img", Labels: map[string]string{"c": "3"}, Target: newTarget},
			paths:      []string{"labels.c", "target"},
			wantLabels: map[string]string{"a": "1", "b": "2", "c": "3"},
			wantTarget: newTarget,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := newTestDB(t)
			ctx := nsCtx("ns")
			created, err := db.CreateImage(ctx, base)
			if err != nil {
				t.Fatal(err)
			}
			out, err := db.UpdateImage(ctx, tc.update, tc.paths...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := db.GetImage(ctx, "img")
			if err != nil {
				t.Fatal(err)
			}
			for what, img := range map[string]images.Image{"returned": out, "stored": got} {
				if !maps.Equal(img.Labels, tc.wantLabels) {
					t.Errorf("%s labels %v, want %v", what, img.Labels, tc.wantLabels)
				}
				if img.Target.Digest != tc.wantTarget.Digest || img.Target.Size != tc.wantTarget.Size ||
					img.Target.MediaType != tc.wantTarget.MediaType || !maps.Equal(img.Target.Annotations, tc.wantTarget.Annotations) {
					t.Errorf("%s target %+v, want %+v", what, img.Target, tc.wantTarget)
				}
				if !img.CreatedAt.Equal(created.CreatedAt) {
					t.Errorf("%s created time changed from %v to %v", what, created.CreatedAt, img.CreatedAt)
				}
				if img.UpdatedAt.Before(created.UpdatedAt) {
					t.Errorf("%s updated time %v is before creation %v", what, img.UpdatedAt, created.UpdatedAt)
				}
			}
		})
	}
}

func TestImageUpdateRefusals(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateImage(ctx, testImage("img", digest.FromString("m"))); err != nil {
		t.Fatal(err)
	}
	_, err := db.UpdateImage(ctx, images.Image{Name: "img"}, "name")
	wantErr(t, "update path name", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = db.UpdateImage(ctx, images.Image{Name: "img"}, "labels.a", "createdat")
	wantErr(t, "update path createdat", err, errdefs.IsInvalidArgument, "InvalidArgument")
	_, err = db.UpdateImage(ctx, testImage("missing", digest.FromString("m")))
	wantErr(t, "update an unknown image", err, errdefs.IsNotFound, "NotFound")
	_, err = db.UpdateImage(ctx, images.Image{})
	wantErr(t, "update with no name", err, errdefs.IsInvalidArgument, "InvalidArgument")
}

func TestImageDelete(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	d := digest.FromString("m")
	if _, err := db.CreateImage(ctx, testImage("img", d)); err != nil {
		t.Fatal(err)
	}
	var dirty []bool
	db.OnDirty(func(sync bool) { dirty = append(dirty, sync) })

	err := db.DeleteImage(ctx, "img", digest.FromString("other"), false)
	wantErr(t, "delete with a stale target", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
	if _, err := db.GetImage(ctx, "img"); err != nil {
		t.Fatalf("a refused delete removed the image: %v", err)
	}
	if len(dirty) != 0 {
		t.Errorf("a refused delete asked for a collection: %v", dirty)
	}

	if err := db.DeleteImage(ctx, "img", d, true); err != nil {
		t.Fatalf("delete with the current target: %v", err)
	}
	if !slices.Equal(dirty, []bool{true}) {
		t.Errorf("a sync delete told the collector %v, want [true]", dirty)
	}
	_, err = db.GetImage(ctx, "img")
	wantErr(t, "get after delete", err, errdefs.IsNotFound, "NotFound")
	err = db.DeleteImage(ctx, "img", "", false)
	wantErr(t, "delete an unknown image", err, errdefs.IsNotFound, "NotFound")
	err = db.DeleteImage(nsCtx("empty"), "img", "", false)
	wantErr(t, "delete in a namespace without images", err, errdefs.IsNotFound, "NotFound")

	if _, err := db.CreateImage(ctx, testImage("img2", d)); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteImage(ctx, "img2", "", false); err != nil {
		t.Fatalf("delete without a target: %v", err)
	}
	if !slices.Equal(dirty, []bool{true, false}) {
		t.Errorf("an async delete told the collector %v, want [true false]", dirty)
	}
}

func TestImageMeantToExpireIsHeldByTheCallsLease(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateLease(ctx, leases.Lease{ID: "l"}); err != nil {
		t.Fatal(err)
	}
	lctx := leaseCtx(ctx, "l")
	expiring := testImage("expiring", digest.FromString("e"))
	expiring.Labels = map[string]string{"containerd.io/gc.expire": "2000-01-01T00:00:00Z"}
	if _, err := db.CreateImage(lctx, expiring); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateImage(lctx, testImage("plain", digest.FromString("p"))); err != nil {
		t.Fatal(err)
	}
	if !leaseHolds(t, db, "ns", "l", leases.Resource{ID: "expiring", Type: "images"}) {
		t.Error("an image with containerd.io/gc.expire created in a lease is not held by it")
	}
	if leaseHolds(t, db, "ns", "l", leases.Resource{ID: "plain", Type: "images"}) {
		t.Error("an image without an expiry was added to the lease")
	}
}
