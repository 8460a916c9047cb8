package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// workload is one thing measured on each daemon. prepare runs once per
// daemon, untimed; sample runs one timed iteration and returns its
// durations (one, or one per call for latency workloads); cleanup undoes
// prepare.
type workload struct {
	name    string
	what    string
	unit    time.Duration // the table's unit: time.Millisecond, time.Microsecond or unitMiB
	prepare func(ctx context.Context, d *daemon) (instance, error)
	// group, if set, is a second name -only selects this workload by (the
	// memory rows are one workload to the user).
	group string
	// floor, if set, prepares the same work without any daemon (runc
	// alone); it is sampled in turn with the daemons and reported beside
	// them, without a ratio.
	floor func(ctx context.Context) (instance, error)
}

// instance is a workload prepared on one daemon.
type instance interface {
	sample(ctx context.Context, iter int) ([]time.Duration, error)
	cleanup(ctx context.Context) error
}

type params struct {
	blobSize    int64
	calls       int
	importImage *testimage.Image
	// unpackLayers random layers of unpackLayerSize bytes each, built on
	// first use by unpackImage; snapshotBase is the busybox image the
	// snapshots loop prepares on.
	unpackLayers    int
	unpackLayerSize int64
	unpackImage     func() (*testimage.Image, error)
	snapshotBase    func() (*testimage.Image, error)
	// The container workloads: runImage is imported and unpacked once per
	// daemon; run times runs containers one after another per iteration,
	// run20 parallel containers at once; memory keeps memContainers
	// running; runc is the floor's runc binary.
	runImage      *testimage.Image
	runs          int
	parallel      int
	memContainers int
	runc          string
	// The cri workloads: cri is the registry and networks they share,
	// pods the pods or containers per iteration.
	cri  *criEnv
	pods int
}

func workloads(p params) []workload {
	return []workload{
		{
			name: "ingest",
			what: fmt.Sprintf("content.WriteBlob of a %d MiB random blob under a lease", p.blobSize>>20),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newContentBench(ctx, d, p.blobSize, false)
			},
		},
		{
			name: "read",
			what: fmt.Sprintf("read back a %d MiB blob through ReaderAt (1 MiB reads), digest verified", p.blobSize>>20),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newContentBench(ctx, d, p.blobSize, true)
			},
		},
		{
			name:    "import",
			what:    fmt.Sprintf("Client.Import of a %s KiB OCI archive (%d blobs), no unpack", kib(p.importImage), len(p.importImage.Blobs())),
			unit:    time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) { return newImportBench(ctx, d, p.importImage) },
		},
		{
			name: "unpack",
			what: fmt.Sprintf("Client.Import then Image.Unpack into %s of a busybox image plus %d layers of %d MiB random data each (uncompressed tar; busybox layer gzip), then a synchronous image delete (untimed) so every iteration starts cold",
				benchSnapshotter, p.unpackLayers, p.unpackLayerSize>>20),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				img, err := p.unpackImage()
				if err != nil {
					return nil, err
				}
				return newUnpackBench(ctx, d, img, p.unpackLayers, p.unpackLayerSize)
			},
		},
		{
			name: "snapshots",
			what: fmt.Sprintf("%s Prepare (parent: unpacked busybox layer) + Commit + Remove, under a lease; %d cycles per iteration, median per cycle (cycles/s = 10^6 / median)",
				benchSnapshotter, p.calls),
			unit: time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				img, err := p.snapshotBase()
				if err != nil {
					return nil, err
				}
				return newSnapshotBench(ctx, d, img, p.calls)
			},
		},
		{
			name: "run",
			what: fmt.Sprintf("`ctr run --rm` of `true`, one container at a time (%d per iteration): NewContainer (WithNewSnapshot on %s, WithNewSpec from the image config), NewTask with no stdio, Wait, Start, exit, task Delete, container Delete with its snapshot; floor: `runc run` of the same spec on a prepared bundle",
				p.runs, benchSnapshotter),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newRunBench(ctx, d, p.runImage, p.runs, 0)
			},
			floor: func(ctx context.Context) (instance, error) { return newRuncFloor(ctx, p.runc, p.runImage, p.runs, 0) },
		},
		{
			name: fmt.Sprintf("run%d", p.parallel),
			what: fmt.Sprintf("%d of `run`'s containers started at once, from %d goroutines sharing one client; wall time until the last is deleted; floor: %d `runc run` at once", p.parallel, p.parallel, p.parallel),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newRunBench(ctx, d, p.runImage, 0, p.parallel)
			},
			floor: func(ctx context.Context) (instance, error) {
				return newRuncFloor(ctx, p.runc, p.runImage, 0, p.parallel)
			},
		},
		{
			name:  "memory-idle",
			group: "memory",
			what:  "total RSS (VmRSS) of the daemon's processes: the daemon, every process below it (Flotilla's services) and its shims; idle, with the run image imported and unpacked",
			unit:  unitMiB,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newMemoryBench(ctx, d, p.runImage, 0)
			},
		},
		{
			name:  fmt.Sprintf("memory-%drunning", p.memContainers),
			group: "memory",
			what:  fmt.Sprintf("the same total with %d containers running `sleep 300` (one shim each; the containers' own processes not counted), removed afterwards", p.memContainers),
			unit:  unitMiB,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newMemoryBench(ctx, d, p.runImage, p.memContainers)
			},
		},
		{
			name:  "pod-run",
			group: criGroup,
			what: fmt.Sprintf("CRI RunPodSandbox through the kubelet's CRI client (pause image pulled beforehand; CNI bridge + host-local; cgroupfs parent %s), %d pods one after another per iteration; untimed after each: status check (READY, IP on the daemon's bridge subnet), StopPodSandbox, RemovePodSandbox",
				criCgroupParent, p.pods),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPodBench(ctx, d, p.cri, "pod-run", "run", p.pods)
			},
		},
		{
			name:  "pod-stop",
			group: criGroup,
			what:  fmt.Sprintf("CRI StopPodSandbox of a ready pod without containers (pause killed, CNI DEL, netns kept), %d per iteration; run and remove untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPodBench(ctx, d, p.cri, "pod-stop", "stop", p.pods)
			},
		},
		{
			name:  "pod-remove",
			group: criGroup,
			what:  fmt.Sprintf("CRI RemovePodSandbox of a stopped pod, %d per iteration; run and stop untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPodBench(ctx, d, p.cri, "pod-remove", "remove", p.pods)
			},
		},
		{
			name:  "ctr-create",
			group: criGroup,
			what:  fmt.Sprintf("CRI CreateContainer of busybox `sleep 300` (image pulled beforehand) in a ready pod, %d one after another per iteration; each removed untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newCtrBench(ctx, d, p.cri, "ctr-create", "create", p.pods)
			},
		},
		{
			name:  "ctr-start",
			group: criGroup,
			what:  fmt.Sprintf("CRI StartContainer of a created busybox `sleep 300` in a ready pod (shim start, runc create+start), %d per iteration; create, RUNNING check, StopContainer (timeout 0) and RemoveContainer untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newCtrBench(ctx, d, p.cri, "ctr-start", "start", p.pods)
			},
		},
		{
			name:  "cri-pull",
			group: criGroup,
			what: fmt.Sprintf("CRI PullImage from the local registry of an image the daemon does not have: busybox (its layer already pulled) plus a new %d MiB random uncompressed layer, one per iteration; fetch, unpack into overlayfs, image record; RemoveImage untimed",
				p.cri.pullMB),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPullBench(ctx, d, p.cri)
			},
		},
		{
			name:    "namespaces",
			what:    fmt.Sprintf("Namespaces List round trip (%d calls per iteration)", p.calls),
			unit:    time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) { return newRTTBench(d, p.calls, rttNamespaces) },
		},
		{
			name:    "version",
			what:    fmt.Sprintf("Version round trip (%d calls per iteration)", p.calls),
			unit:    time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) { return newRTTBench(d, p.calls, rttVersion) },
		},
	}
}

func kib(img *testimage.Image) string {
	b, err := img.ArchiveBytes()
	if err != nil {
		return "?"
	}
	return fmt.Sprint(len(b) >> 10)
}

// contentBench writes (ingest) or reads (read) one large blob. Every write
// is a blob the daemon has never seen: the first bytes carry the iteration
// number, so no write is short-circuited as "already exists".
type contentBench struct {
	d       *daemon
	cs      content.Store
	data    []byte
	lease   leases.Lease
	ctx     func(context.Context) context.Context
	read    bool
	written ocispec.Descriptor
	buf     []byte
}

func newContentBench(ctx context.Context, d *daemon, size int64, read bool) (*contentBench, error) {
	data := make([]byte, size)
	if _, err := io.ReadFull(testimage.RandomReader(size), data); err != nil {
		return nil, err
	}
	l, err := d.client.LeasesService().Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		return nil, fmt.Errorf("create lease: %w", err)
	}
	b := &contentBench{
		d: d, cs: d.client.ContentStore(), data: data, lease: l, read: read,
		ctx: func(ctx context.Context) context.Context { return leases.WithLease(ctx, l.ID) },
		buf: make([]byte, 1<<20),
	}
	if read {
		desc, err := b.write(ctx, -1)
		if err != nil {
			return nil, err
		}
		b.written = desc
	}
	return b, nil
}

func (b *contentBench) write(ctx context.Context, iter int) (ocispec.Descriptor, error) {
	binary.BigEndian.PutUint64(b.data, uint64(iter))
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(b.data), Size: int64(len(b.data))}
	ctx = b.ctx(ctx)
	if _, err := b.cs.Info(ctx, desc.Digest); err == nil {
		return desc, fmt.Errorf("blob %s already present before the write: the measurement would be of a no-op", desc.Digest)
	}
	ref := fmt.Sprintf("flotilla-bench-%d-%d", iter, time.Now().UnixNano())
	if err := content.WriteBlob(ctx, b.cs, ref, bytes.NewReader(b.data), desc); err != nil {
		return desc, fmt.Errorf("write blob: %w", err)
	}
	return desc, nil
}

func (b *contentBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	if b.read {
		start := time.Now()
		ra, err := b.cs.ReaderAt(b.ctx(ctx), b.written)
		if err != nil {
			return nil, fmt.Errorf("open blob: %w", err)
		}
		h := sha256.New()
		// CopyBuffer into a hash (no ReaderFrom) really uses the 1 MiB
		// buffer: each ReadAt is one 1 MiB Read RPC, as ctr's would be.
		_, err = io.CopyBuffer(h, io.NewSectionReader(ra, 0, b.written.Size), b.buf)
		ra.Close()
		elapsed := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("read blob: %w", err)
		}
		if got := digest.NewDigest(digest.SHA256, h); got != b.written.Digest {
			return nil, fmt.Errorf("read back %s, wrote %s", got, b.written.Digest)
		}
		return []time.Duration{elapsed}, nil
	}
	start := time.Now()
	desc, err := b.write(ctx, iter)
	elapsed := time.Since(start)
	if err != nil {
		return nil, err
	}
	if err := b.cs.Delete(b.ctx(ctx), desc.Digest); err != nil {
		return nil, fmt.Errorf("delete blob: %w", err)
	}
	return []time.Duration{elapsed}, nil
}

func (b *contentBench) cleanup(ctx context.Context) error {
	var errs []error
	if b.written.Digest != "" {
		if err := b.cs.Delete(b.ctx(ctx), b.written.Digest); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if err := b.d.client.LeasesService().Delete(ctx, b.lease, leases.SynchronousDelete); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// importBench imports an image archive and deletes the image again,
// synchronously so that garbage collection removes its blobs before the
// next import: each import writes every blob.
type importBench struct {
	d       *daemon
	img     *testimage.Image
	archive []byte
}

func newImportBench(_ context.Context, d *daemon, img *testimage.Image) (*importBench, error) {
	archive, err := img.ArchiveBytes()
	if err != nil {
		return nil, err
	}
	return &importBench{d: d, img: img, archive: archive}, nil
}

func (b *importBench) sample(ctx context.Context, _ int) ([]time.Duration, error) {
	cs := b.d.client.ContentStore()
	for _, l := range b.img.Layers {
		if _, err := cs.Info(ctx, l.Digest); err == nil {
			return nil, fmt.Errorf("layer %s still present before import: image delete did not garbage-collect it, so the import would be measured warm", l.Digest)
		}
	}
	start := time.Now()
	imgs, err := b.d.client.Import(ctx, bytes.NewReader(b.archive), client.WithAllPlatforms(true))
	elapsed := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if len(imgs) != 1 || imgs[0].Name != b.img.Name {
		return nil, fmt.Errorf("import created %v, want one image %s", imgs, b.img.Name)
	}
	if err := b.d.client.ImageService().Delete(ctx, b.img.Name, images.SynchronousDelete()); err != nil {
		return nil, fmt.Errorf("delete image: %w", err)
	}
	return []time.Duration{elapsed}, nil
}

func (b *importBench) cleanup(ctx context.Context) error {
	err := b.d.client.ImageService().Delete(ctx, b.img.Name, images.SynchronousDelete())
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// rttBench times single small calls back to back.
type rttBench struct {
	d     *daemon
	calls int
	call  func(ctx context.Context, d *daemon) error
}

func rttNamespaces(ctx context.Context, d *daemon) error {
	_, err := d.client.NamespaceService().List(ctx)
	return err
}

func rttVersion(ctx context.Context, d *daemon) error {
	_, err := d.client.Version(ctx)
	return err
}

func newRTTBench(d *daemon, calls int, call func(context.Context, *daemon) error) (*rttBench, error) {
	return &rttBench{d: d, calls: calls, call: call}, nil
}

func (b *rttBench) sample(ctx context.Context, _ int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, b.calls)
	for range b.calls {
		start := time.Now()
		if err := b.call(ctx, b.d); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

func (b *rttBench) cleanup(context.Context) error { return nil }
