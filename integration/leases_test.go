package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// leaseExpireLabel is containerd's lease (and image) expiry label.
const leaseExpireLabel = "containerd.io/gc.expire"

// blobFile is where the content service keeps the bytes of d.
func (d *daemon) blobFile(dg digest.Digest) string {
	return filepath.Join(d.root, "content", "blobs", dg.Algorithm().String(), dg.Encoded())
}

func (d *daemon) hasBlobFile(dg digest.Digest) bool {
	_, err := os.Stat(d.blobFile(dg))
	return err == nil
}

// gcRuns counts the metadata service's completed collections, from its
// debug log.
func (d *daemon) gcRuns() int {
	return strings.Count(d.out.String(), `msg="garbage collection" service=metadata`)
}

// writeTestBlob writes data through the containerd client in ctx (with its
// namespace and lease) and returns its digest.
func writeTestBlob(t *testing.T, c *containerd.Client, ctx context.Context, data string) digest.Digest {
	t.Helper()
	desc := ocispec.Descriptor{Digest: digest.FromString(data), Size: int64(len(data))}
	if err := content.WriteBlob(ctx, c.ContentStore(), "write-"+desc.Digest.Encoded(), strings.NewReader(data), desc); err != nil {
		t.Fatalf("write blob %q: %v", data, err)
	}
	return desc.Digest
}

func TestCtrLeasesCreateListRemove(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	before := time.Now().UTC()
	if out := d.mustCtr("leases", "create", "--id", "build-1", "--expires", "1h", "team=ci"); strings.TrimSpace(out) != "build-1" {
		t.Errorf("ctr leases create printed %q, want the lease id", out)
	}
	d.mustCtr("leases", "create", "--id", "forever", "--expires", "0")

	out := d.mustCtr("leases", "ls")
	var line string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "build-1" {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("ctr leases ls does not list build-1:\n%s", out)
	}
	if !strings.Contains(line, "team=ci") {
		t.Errorf("build-1 is listed without its label team=ci:\n%s", line)
	}
	_, expiry, ok := strings.Cut(line, leaseExpireLabel+"=")
	if !ok {
		t.Fatalf("build-1 is listed without %s:\n%s", leaseExpireLabel, line)
	}
	expiry, _, _ = strings.Cut(expiry, ",")
	at, err := time.Parse(time.RFC3339, strings.TrimSpace(expiry))
	if err != nil {
		t.Fatalf("expiry %q of build-1: %v", expiry, err)
	}
	if at.Before(before.Add(59*time.Minute)) || at.After(time.Now().Add(61*time.Minute)) {
		t.Errorf("build-1 expires at %s, want an hour after %s", at, before)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "forever ") && strings.Contains(l, leaseExpireLabel) {
			t.Errorf("a lease created with --expires 0 carries an expiry:\n%s", l)
		}
	}
	if out := d.mustCtr("leases", "ls", "-q", "labels.team==ci"); strings.TrimSpace(out) != "build-1" {
		t.Errorf("ctr leases ls labels.team==ci printed %q, want build-1 alone", out)
	}

	d.mustCtr("leases", "rm", "build-1")
	if out := d.mustCtr("leases", "ls", "-q"); strings.Contains(out, "build-1") || !strings.Contains(out, "forever") {
		t.Errorf("after rm of build-1, ctr leases ls -q printed:\n%s", out)
	}
	if out, err := d.ctr("leases", "rm", "build-1"); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("removing a removed lease: err=%v, want not found\n%s", err, out)
	}
	if out, err := d.ctr("leases", "create", "--id", "forever"); err == nil || !strings.Contains(out, "already exists") {
		t.Errorf("creating an existing lease: err=%v, want already exists\n%s", err, out)
	}
	// Leases are namespaced.
	if out := d.mustCtr("-n", "other", "leases", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("namespace other lists default's leases:\n%s", out)
	}
}

func TestExpiredLeaseStopsProtectingContent(t *testing.T) {
	d := newDaemon(t, withConfig("[services.metadata.options]\ngc_schedule = \"1s\"\n")).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "expiry")
	// containerd's WithExpiration keeps whole seconds (RFC 3339); give the
	// label sub-second precision so the lease is valid for a known time.
	expires := time.Now().Add(2500 * time.Millisecond)
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID(),
		leases.WithLabel(leaseExpireLabel, expires.UTC().Format(time.RFC3339Nano)))
	if err != nil {
		t.Fatal(err)
	}
	dg := writeTestBlob(t, c, leases.WithLease(ctx, l.ID), "held by a lease that expires")
	if !d.hasBlobFile(dg) {
		t.Fatalf("committed blob is not at %s", d.blobFile(dg))
	}

	// No deletion triggers a collection here: only the schedule does.
	n := d.gcRuns()
	waitFor(t, 3*time.Second, "a scheduled collection", func() bool { return d.gcRuns() > n })
	if time.Now().After(expires) {
		t.Fatal("no collection ran while the lease was valid; the test proves nothing")
	}
	if _, err := c.ContentStore().Info(ctx, dg); err != nil {
		t.Fatalf("a collection removed content held by a valid lease: %v", err)
	}
	if !d.hasBlobFile(dg) {
		t.Fatal("a collection removed the bytes of content held by a valid lease")
	}

	waitFor(t, 5*time.Second, "the expired lease's blob to leave "+d.blobFile(dg), func() bool { return !d.hasBlobFile(dg) })
	if _, err := c.ContentStore().Info(ctx, dg); !errdefs.IsNotFound(err) {
		t.Errorf("content of an expired lease after collection: %v, want NotFound", err)
	}
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ls {
		if x.ID == l.ID {
			t.Errorf("expired lease %s is still listed after a collection", l.ID)
		}
	}
}

func TestLeaseDeletionTriggersCollection(t *testing.T) {
	// The default schedule is minutes away: only the deletion can
	// collect in time.
	d := newDaemon(t).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "del")
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	dg := writeTestBlob(t, c, leases.WithLease(ctx, l.ID), "collected soon after its lease goes")
	if err := c.LeasesService().Delete(ctx, l); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the blob of a deleted lease to be collected", func() bool { return !d.hasBlobFile(dg) })
	if _, err := c.ContentStore().Info(ctx, dg); !errdefs.IsNotFound(err) {
		t.Errorf("content of a deleted lease after collection: %v, want NotFound", err)
	}
}

func TestLeaseResourcesAndSynchronousDelete(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ls := c.LeasesService()
	ctx := namespaces.WithNamespace(context.Background(), "res")
	writer, err := ls.Create(ctx, leases.WithID("writer"))
	if err != nil {
		t.Fatal(err)
	}
	keeper, err := ls.Create(ctx, leases.WithID("keeper"))
	if err != nil {
		t.Fatal(err)
	}
	shared := writeTestBlob(t, c, leases.WithLease(ctx, writer.ID), "held by two leases")
	only := writeTestBlob(t, c, leases.WithLease(ctx, writer.ID), "held by the writer alone")

	res, err := ls.ListResources(ctx, writer)
	if err != nil {
		t.Fatal(err)
	}
	for _, dg := range []digest.Digest{shared, only} {
		if !hasResource(res, "content", dg.String()) {
			t.Errorf("lease writer does not list the content it wrote (%s): %v", dg, res)
		}
	}

	sharedRes := leases.Resource{ID: shared.String(), Type: "content"}
	if err := ls.AddResource(ctx, keeper, sharedRes); err != nil {
		t.Fatalf("add resource: %v", err)
	}
	if res, err := ls.ListResources(ctx, keeper); err != nil || len(res) != 1 || !hasResource(res, "content", shared.String()) {
		t.Fatalf("keeper's resources: %v, %v; want just %s", res, err, shared)
	}

	// A synchronous delete has collected what only the writer held by
	// the time it returns, and kept what keeper still holds.
	if err := ls.Delete(ctx, writer, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
	if d.hasBlobFile(only) {
		t.Errorf("blob held only by the deleted lease is still at %s after a synchronous delete", d.blobFile(only))
	}
	if _, err := c.ContentStore().Info(ctx, only); !errdefs.IsNotFound(err) {
		t.Errorf("content held only by the deleted lease: %v, want NotFound", err)
	}
	if _, err := c.ContentStore().Info(ctx, shared); err != nil || !d.hasBlobFile(shared) {
		t.Fatalf("content keeper holds was collected with the writer lease: %v", err)
	}

	if err := ls.DeleteResource(ctx, keeper, sharedRes); err != nil {
		t.Fatalf("delete resource: %v", err)
	}
	if res, err := ls.ListResources(ctx, keeper); err != nil || len(res) != 0 {
		t.Errorf("keeper's resources after DeleteResource: %v, %v; want none", res, err)
	}
	// Releasing the last hold makes it garbage; the release schedules a
	// collection.
	waitFor(t, 3*time.Second, "released content to be collected", func() bool { return !d.hasBlobFile(shared) })

	// Resources of a lease that is not there, and of unknown kinds.
	missing := leases.Lease{ID: "missing"}
	if err := ls.AddResource(ctx, missing, sharedRes); !errdefs.IsNotFound(err) {
		t.Errorf("add resource to a missing lease: %v, want NotFound", err)
	}
	if _, err := ls.ListResources(ctx, missing); !errdefs.IsNotFound(err) {
		t.Errorf("list resources of a missing lease: %v, want NotFound", err)
	}
	if err := ls.AddResource(ctx, keeper, leases.Resource{ID: "x", Type: "no-such-kind"}); !errdefs.IsNotImplemented(err) {
		t.Errorf("add resource of an unknown type: %v, want NotImplemented", err)
	}
	if err := ls.AddResource(ctx, keeper, leases.Resource{ID: "sha256:nothex", Type: "content"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("add content resource with a malformed digest: %v, want InvalidArgument", err)
	}
	if err := ls.Delete(ctx, missing, leases.SynchronousDelete); !errdefs.IsNotFound(err) {
		t.Errorf("delete of a missing lease: %v, want NotFound", err)
	}
}

func hasResource(rs []leases.Resource, typ, id string) bool {
	for _, r := range rs {
		if r.Type == typ && r.ID == id {
			return true
		}
	}
	return false
}

func TestWriteUnderMissingLeaseFailsNotFound(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "nolease")
	// The namespace exists, so NotFound can only be about the lease.
	if _, err := c.LeasesService().Create(ctx, leases.WithID("other")); err != nil {
		t.Fatal(err)
	}
	ctx = leases.WithLease(ctx, "no-such-lease")

	data := "written under a lease that does not exist"
	desc := ocispec.Descriptor{Digest: digest.FromString(data), Size: int64(len(data))}
	err := content.WriteBlob(ctx, c.ContentStore(), "orphan", bytes.NewReader([]byte(data)), desc)
	if !errdefs.IsNotFound(err) {
		t.Fatalf("write under a missing lease: %v, want NotFound", err)
	}
	if _, err := c.ContentStore().Info(ctx, desc.Digest); !errdefs.IsNotFound(err) {
		t.Errorf("a write under a missing lease left content behind: %v", err)
	}
	if st, err := c.ContentStore().ListStatuses(ctx); err != nil || len(st) != 0 {
		t.Errorf("a write under a missing lease left ingests behind: %v %v", st, err)
	}
}

// containerd leases an image only when it may expire (it carries
// containerd.io/gc.expire); creating one under a missing lease is NotFound,
// like a content write.
func TestExpiringImageUnderMissingLeaseFailsNotFound(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "nolease")
	if _, err := c.LeasesService().Create(ctx, leases.WithID("other")); err != nil {
		t.Fatal(err)
	}
	ctx = leases.WithLease(ctx, "no-such-lease")
	img := images.Image{
		Name:   "docker.io/flotilla/leased:1",
		Labels: map[string]string{leaseExpireLabel: time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
		Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 1},
	}
	if _, err := c.ImageService().Create(ctx, img); !errdefs.IsNotFound(err) {
		t.Errorf("create of an expiring image under a missing lease: %v, want NotFound", err)
	}
	if _, err := c.ImageService().Get(ctx, img.Name); !errdefs.IsNotFound(err) {
		t.Errorf("the image created under a missing lease exists: %v", err)
	}
}
