package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
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
	name string
	// title is the workload in a few words, for the README's table; what
	// is the whole description, for the report.
	title string
	what  string
	unit  time.Duration // the table's unit: time.Millisecond, time.Microsecond or unitMiB
	// figures are further rows each sample also measures (the instance is
	// a figurer): row name+"-"+figure.name.
	figures []figure
	prepare func(ctx context.Context, d *daemon) (instance, error)
	// group, if set, is a second name -only selects this workload by (the
	// memory rows are one workload to the user).
	group string
	// floor, if set, prepares the same work without any daemon (runc
	// alone); it is sampled in turn with the daemons and reported beside
	// them, without a ratio.
	floor func(ctx context.Context) (instance, error)
}

// figure is a second figure of a workload, with a row of its own.
type figure struct {
	name, title, what string
}

// instance is a workload prepared on one daemon.
type instance interface {
	sample(ctx context.Context, iter int) ([]time.Duration, error)
	cleanup(ctx context.Context) error
}

// figurer is an instance whose samples measure more than one figure:
// figures returns the others of the last sample, by figure name.
type figurer interface {
	figures() map[string]time.Duration
}

type params struct {
	blobSize    int64
	calls       int
	importImage *testimage.Image
	// unpackLayers random layers of unpackLayerSize bytes each, built on
	// first use by unpackImage; snapshotBase is the busybox image the
	// snapshots loop prepares on; srcImage is the realistic image (ordinary
	// files, gzip layers), also built on first use.
	unpackLayers    int
	unpackLayerSize int64
	unpackImage     func() (*testimage.Image, error)
	snapshotBase    func() (*testimage.Image, error)
	srcImage        func() (*srcImage, error)
	srcLayers       int
	// The container workloads: runImage is imported and unpacked once per
	// daemon; run times runs containers one after another per iteration,
	// run20 parallel containers at once; memory keeps memContainers
	// running; runc is the floor's runc binary.
	runImage      *testimage.Image
	memoryImage   *testimage.Image // the run image under a name of its own
	runs          int
	parallel      int
	memContainers int
	runc          string
	// The cri workloads: cri is the registry and networks they share,
	// pods the pods or containers per iteration.
	cri  *criEnv
	pods int
	// pull is the registry the Transfer pull workload pulls from.
	pull *pullEnv
}

func workloads(p params) []workload {
	mib := p.blobSize >> 20
	return []workload{
		// The memory workloads come first: their figures are of daemons
		// that have done nothing but import busybox, not of heaps that the
		// workloads before them happened to grow. They delete their image
		// again, so that the import and unpack workloads find the daemons
		// without busybox's layer. The run image, which run and run20
		// keep, comes after those.
		{
			name:  "memory-idle",
			group: "memory",
			title: "memory idle: PSS of every process of the daemon",
			what:  "PSS (proportional set size, /proc/<pid>/smaps_rollup: a page shared by N processes counts 1/N in each) summed over every process of the daemon: its main process and every process below it (Flotilla's services); idle, with the run image imported and unpacked",
			figures: []figure{{name: rssFigure, title: "memory idle: RSS (shared pages counted in every process)",
				what: "the same processes' RSS summed (smaps_rollup Rss): a page shared by N processes counts N times"}},
			unit: unitMiB,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newMemoryBench(ctx, d, p.memoryImage, 0)
			},
		},
		{
			name:  fmt.Sprintf("memory-%drunning", p.memContainers),
			group: "memory",
			title: fmt.Sprintf("memory with %d running containers: PSS, shims included", p.memContainers),
			what:  fmt.Sprintf("the same PSS total with %d containers running `sleep 300`, their runtime v2 shims included (one each; the containers' own processes not counted), removed afterwards", p.memContainers),
			figures: []figure{{name: rssFigure, title: fmt.Sprintf("memory with %d running containers: RSS", p.memContainers),
				what: "the same processes' RSS summed: a page shared by N processes counts N times"}},
			unit: unitMiB,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newMemoryBench(ctx, d, p.memoryImage, p.memContainers)
			},
		},
		{
			name:  "ingest",
			title: fmt.Sprintf("ingest of a %d MiB blob (`ctr content ingest`)", mib),
			what:  fmt.Sprintf("`ctr content ingest` of a %d MiB random blob, with ctr's code: content.WriteBlob with the expected size and digest (1 MiB writes), under a lease; the blob deleted untimed", mib),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newContentBench(ctx, d, p.blobSize, ingestBlob)
			},
		},
		{
			name:  "read",
			title: fmt.Sprintf("sequential read of a %d MiB blob (`ctr content get`)", mib),
			what: fmt.Sprintf("`ctr content get <digest> >/dev/null` of a %d MiB blob, with ctr 2.4.2's code: ReaderAt, content.NewReader, io.CopyBuffer into an *os.File, which reads in 32 KiB ReadAt calls (one Read call to the daemon each); digest checked untimed once per daemon",
				mib),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newContentBench(ctx, d, p.blobSize, getBlob)
			},
		},
		{
			name:  "read-1m",
			title: fmt.Sprintf("read of a %d MiB blob in 1 MiB ReadAt calls", mib),
			what:  fmt.Sprintf("read back a %d MiB blob through ReaderAt in 1 MiB reads (one Read call each) into a hash, digest verified", mib),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newContentBench(ctx, d, p.blobSize, readAtBlob)
			},
		},
		{
			name:    "import",
			title:   "import of the busybox archive, no unpack",
			what:    fmt.Sprintf("Client.Import of a %s KiB OCI archive (%d blobs), no unpack", kib(p.importImage), len(p.importImage.Blobs())),
			unit:    time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) { return newImportBench(ctx, d, p.importImage) },
		},
		{
			name:  "unpack",
			title: fmt.Sprintf("import + unpack, busybox + %d × %d MiB random layers", p.unpackLayers, p.unpackLayerSize>>20),
			what: fmt.Sprintf("Client.Import then Image.Unpack into %s of a busybox image plus %d layers of %d MiB random data each (uncompressed tar; busybox layer gzip), then a synchronous image delete (untimed) so every iteration starts cold",
				benchSnapshotter, p.unpackLayers, p.unpackLayerSize>>20),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				img, err := p.unpackImage()
				if err != nil {
					return nil, err
				}
				return newUnpackBench(ctx, d, img, verifyRandomLayers(p.unpackLayers, p.unpackLayerSize))
			},
		},
		{
			name:  "unpack-gosrc",
			title: fmt.Sprintf("import + unpack of a realistic image (Go tree, %d gzip layers, `ctr images import`)", p.srcLayers),
			what: fmt.Sprintf("`ctr images import` of a realistic image, with the client code ctr uses (Client.Import, then Image.Unpack into %s): busybox plus the Go distribution's src, pkg and test trees (source, testdata, tool binaries: ordinary files) in %d gzip layers (default compression) of about equal size; then a synchronous image delete (untimed) so every iteration starts cold; every file checked untimed once per daemon",
				benchSnapshotter, p.srcLayers),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				src, err := p.srcImage()
				if err != nil {
					return nil, err
				}
				return newUnpackBench(ctx, d, src.img, src.verify)
			},
		},
		{
			name:  "snapshots",
			title: "snapshot prepare/commit/remove cycle",
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
			name:  "run",
			title: "`ctr run --rm` of `true` (Go client)",
			what: fmt.Sprintf("`ctr run --rm` of `true`, one container at a time (%d per iteration): NewContainer (WithNewSnapshot on %s, WithNewSpec from the image config), NewTask with no stdio, Wait, Start, exit, task Delete, container Delete with its snapshot; floor: `runc run` of the same spec on a prepared bundle",
				p.runs, benchSnapshotter),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newRunBench(ctx, d, p.runImage, p.runs, 0)
			},
			floor: func(ctx context.Context) (instance, error) { return newRuncFloor(ctx, p.runc, p.runImage, p.runs, 0) },
		},
		{
			name:  fmt.Sprintf("run%d", p.parallel),
			title: fmt.Sprintf("%d containers run in parallel", p.parallel),
			what:  fmt.Sprintf("%d of `run`'s containers started at once, from %d goroutines sharing one client; wall time until the last is deleted; floor: %d `runc run` at once", p.parallel, p.parallel, p.parallel),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newRunBench(ctx, d, p.runImage, 0, p.parallel)
			},
			floor: func(ctx context.Context) (instance, error) {
				return newRuncFloor(ctx, p.runc, p.runImage, 0, p.parallel)
			},
		},
		{
			name:  "pod-run",
			group: criGroup,
			title: "CRI RunPodSandbox (CNI bridge, pause)",
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
			title: "CRI StopPodSandbox",
			what:  fmt.Sprintf("CRI StopPodSandbox of a ready pod without containers (pause killed, CNI DEL, netns kept), %d per iteration; run and remove untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPodBench(ctx, d, p.cri, "pod-stop", "stop", p.pods)
			},
		},
		{
			name:  "pod-remove",
			group: criGroup,
			title: "CRI RemovePodSandbox",
			what:  fmt.Sprintf("CRI RemovePodSandbox of a stopped pod, %d per iteration; run and stop untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPodBench(ctx, d, p.cri, "pod-remove", "remove", p.pods)
			},
		},
		{
			name:  "ctr-create",
			group: criGroup,
			title: "CRI CreateContainer",
			what:  fmt.Sprintf("CRI CreateContainer of busybox `sleep 300` (image pulled beforehand) in a ready pod, %d one after another per iteration; each removed untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newCtrBench(ctx, d, p.cri, "ctr-create", "create", p.pods)
			},
		},
		{
			name:  "ctr-start",
			group: criGroup,
			title: "CRI StartContainer",
			what:  fmt.Sprintf("CRI StartContainer of a created busybox `sleep 300` in a ready pod (shim start, runc create+start), %d per iteration; create, RUNNING check, StopContainer (timeout 0) and RemoveContainer untimed", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newCtrBench(ctx, d, p.cri, "ctr-start", "start", p.pods)
			},
		},
		{
			name:  "ctr-status",
			group: criGroup,
			title: "CRI ContainerStatus",
			what:  fmt.Sprintf("CRI ContainerStatus (not verbose) of a running busybox `sleep 300` container in a ready pod, as the kubelet polls it; %d calls per iteration", p.calls),
			unit:  time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newCtrBench(ctx, d, p.cri, "ctr-status", "status", p.calls)
			},
		},
		{
			name:  "ctr-remove",
			group: criGroup,
			title: "CRI RemoveContainer",
			what:  fmt.Sprintf("CRI RemoveContainer of an exited busybox container (created, started, stopped with timeout 0, all untimed) in a ready pod, %d per iteration", p.pods),
			unit:  time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newCtrBench(ctx, d, p.cri, "ctr-remove", "remove", p.pods)
			},
		},
		{
			name:  "img-list",
			group: criGroup,
			title: "CRI ListImages",
			what:  fmt.Sprintf("CRI ListImages (no filter) with the pause and busybox images pulled; %d calls per iteration", p.calls),
			unit:  time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newImageCallBench(ctx, d, p.cri, "list", p.calls)
			},
		},
		{
			name:  "img-status",
			group: criGroup,
			title: "CRI ImageStatus",
			what:  fmt.Sprintf("CRI ImageStatus (not verbose) of the pulled busybox image by its reference; %d calls per iteration", p.calls),
			unit:  time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newImageCallBench(ctx, d, p.cri, "status", p.calls)
			},
		},
		{
			name:  "cri-pull",
			group: criGroup,
			title: fmt.Sprintf("CRI PullImage (busybox + a new %d MiB layer, local registry)", p.cri.pullMB),
			what: fmt.Sprintf("CRI PullImage from the local registry of an image the daemon does not have: busybox (its layer already pulled) plus a new %d MiB random uncompressed layer, one per iteration; fetch, unpack into overlayfs, image record; RemoveImage untimed",
				p.cri.pullMB),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				return newPullBench(ctx, d, p.cri)
			},
		},
		{
			name:  "pull-gosrc",
			title: fmt.Sprintf("pull of a realistic image (Go tree, %d gzip layers) through Transfer, `ctr images pull`", p.srcLayers),
			what: fmt.Sprintf("containerd %s's `ctr images pull --plain-http` (through the Transfer API) of unpack-gosrc's realistic image from a local registry (loopback), unpacked into %s, each daemon with its defaults (containerd unpacks layers in order: its parallel unpack is off by default and was slower on this 2-core machine; Flotilla in parallel); busybox's layer may be present, the %d tree layers never are (image deleted and collected, untimed, before each pull); every file checked untimed once per daemon",
				containerdVersion, benchSnapshotter, p.srcLayers),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				src, err := p.srcImage()
				if err != nil {
					return nil, err
				}
				return newTransferPullBench(ctx, d, src, p.pull)
			},
		},
		{
			name:  "cri-pull-gosrc",
			group: criGroup,
			title: fmt.Sprintf("CRI PullImage of a realistic image (Go tree, %d gzip layers)", p.srcLayers),
			what: fmt.Sprintf("CRI PullImage through the kubelet's CRI client of unpack-gosrc's realistic image from the local registry (loopback, plain HTTP by hosts.toml), unpacked into %s, each daemon's CRI with its defaults; busybox's layer is present (the cri workloads pulled it), the %d tree layers never are (RemoveImage and the collector, untimed, before each pull); every file checked untimed once per daemon",
				benchSnapshotter, p.srcLayers),
			unit: time.Millisecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) {
				src, err := p.srcImage()
				if err != nil {
					return nil, err
				}
				return newCRIPullBench(ctx, d, src, p.cri)
			},
		},
		{
			name:    "namespaces",
			title:   "routed unary call (Namespaces.List, in-process gRPC client)",
			what:    fmt.Sprintf("Namespaces List round trip through the containerd Go client (an in-process gRPC client), one call at a time, %d calls per iteration: client → gateway → metadata process in Flotilla", p.calls),
			unit:    time.Microsecond,
			prepare: func(ctx context.Context, d *daemon) (instance, error) { return newRTTBench(d, p.calls, rttNamespaces) },
		},
		{
			name:    "version",
			title:   "Version round trip (Flotilla's gateway answers it)",
			what:    fmt.Sprintf("Version round trip (%d calls per iteration): the bare socket round trip, which Flotilla's gateway answers itself", p.calls),
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

// contentMode is what a contentBench does with its blob.
type contentMode int

const (
	// ingestBlob writes a new blob each iteration, as `ctr content ingest`
	// does: content.WriteBlob, which copies in 1 MiB writes.
	ingestBlob contentMode = iota
	// getBlob reads the whole blob as `ctr content get <digest> >file`
	// does, with the very same code: ReaderAt, content.NewReader and
	// io.CopyBuffer into an *os.File (/dev/null here), whose ReadFrom
	// copies in 32 KiB reads: one Read call to the daemon per 32 KiB.
	getBlob
	// readAtBlob reads the whole blob in 1 MiB ReadAt calls into a hash.
	readAtBlob
)

// contentBench writes (ingest) or reads (read, read-1m) one large blob.
// Every write is a blob the daemon has never seen: the first bytes carry
// the iteration number, so no write is short-circuited as "already exists".
type contentBench struct {
	d       *daemon
	cs      content.Store
	data    []byte
	lease   leases.Lease
	ctx     func(context.Context) context.Context
	mode    contentMode
	written ocispec.Descriptor
	buf     []byte
	devNull *os.File
}

func newContentBench(ctx context.Context, d *daemon, size int64, mode contentMode) (_ *contentBench, err error) {
	data := make([]byte, size)
	if _, err := io.ReadFull(testimage.RandomReader(size), data); err != nil {
		return nil, err
	}
	l, err := d.client.LeasesService().Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		return nil, fmt.Errorf("create lease: %w", err)
	}
	b := &contentBench{
		d: d, cs: d.client.ContentStore(), data: data, lease: l, mode: mode,
		ctx: func(ctx context.Context) context.Context { return leases.WithLease(ctx, l.ID) },
		buf: make([]byte, 1<<20),
	}
	defer func() {
		if err != nil {
			_ = b.cleanup(context.WithoutCancel(ctx))
		}
	}()
	if mode != ingestBlob {
		desc, err := b.write(ctx, -1)
		if err != nil {
			return nil, err
		}
		b.written = desc
	}
	if mode == getBlob {
		if b.devNull, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0); err != nil {
			return nil, err
		}
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
	switch b.mode {
	case getBlob:
		if iter == warmupIter {
			if err := b.checkGet(ctx); err != nil {
				return nil, err
			}
		}
		start := time.Now()
		n, err := b.get(ctx, nil)
		elapsed := time.Since(start)
		if err != nil {
			return nil, err
		}
		if n != b.written.Size {
			return nil, fmt.Errorf("content get copied %d bytes of %d", n, b.written.Size)
		}
		return []time.Duration{elapsed}, nil
	case readAtBlob:
		start := time.Now()
		ra, err := b.cs.ReaderAt(b.ctx(ctx), b.written)
		if err != nil {
			return nil, fmt.Errorf("open blob: %w", err)
		}
		h := sha256.New()
		// CopyBuffer into a hash (no ReaderFrom) really uses the 1 MiB
		// buffer: each ReadAt is one 1 MiB Read call.
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

// get is `ctr content get <digest> >/dev/null`, the body of ctr 2.4.2's
// command: ReaderAt by digest alone, then io.CopyBuffer with a 1 MiB
// buffer to an *os.File. wrap, if set, wraps the ReaderAt (to count its
// calls).
func (b *contentBench) get(ctx context.Context, wrap func(content.ReaderAt) content.ReaderAt) (int64, error) {
	ra, err := b.cs.ReaderAt(b.ctx(ctx), ocispec.Descriptor{Digest: b.written.Digest})
	if err != nil {
		return 0, fmt.Errorf("open blob: %w", err)
	}
	defer ra.Close()
	if wrap != nil {
		ra = wrap(ra)
	}
	n, err := io.CopyBuffer(b.devNull, content.NewReader(ra), b.buf)
	if err != nil {
		return n, fmt.Errorf("content get: %w", err)
	}
	return n, nil
}

// checkGet, untimed, once per daemon: reading the blob the way get does
// yields exactly the bytes written, and get's reads are the size ctr's are
// (printed, so the report's description can be checked).
func (b *contentBench) checkGet(ctx context.Context) error {
	var calls, bytes int64
	var largest int
	n, err := b.get(ctx, func(ra content.ReaderAt) content.ReaderAt {
		return &countingReaderAt{ReaderAt: ra, calls: &calls, bytes: &bytes, largest: &largest}
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "read on %s: content get copies %d bytes in %d ReadAt calls of up to %d KiB\n", b.d.name, n, calls, largest>>10)
	ra, err := b.cs.ReaderAt(b.ctx(ctx), b.written)
	if err != nil {
		return fmt.Errorf("open blob: %w", err)
	}
	defer ra.Close()
	h := sha256.New()
	if _, err := io.Copy(h, content.NewReader(ra)); err != nil {
		return fmt.Errorf("read blob: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != b.written.Digest {
		return fmt.Errorf("read back %s, wrote %s", got, b.written.Digest)
	}
	return nil
}

// countingReaderAt counts the ReadAt calls through it (and hides nothing
// content.NewReader would look for: the client's ReaderAt has no Reader
// method either).
type countingReaderAt struct {
	content.ReaderAt
	calls, bytes *int64
	largest      *int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	*c.calls++
	*c.largest = max(*c.largest, len(p))
	n, err := c.ReaderAt.ReadAt(p, off)
	*c.bytes += int64(n)
	return n, err
}

func (b *contentBench) cleanup(ctx context.Context) error {
	var errs []error
	if b.devNull != nil {
		b.devNull.Close()
	}
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
