package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// benchSnapshotter is the snapshotter both daemons unpack into: each one's
// default, and the one the targets are about.
const benchSnapshotter = "overlayfs"

// unpackSeedBase seeds the unpack image's first random layer; layer i has
// seed unpackSeedBase+i and holds the file random-<seed>.bin.
const unpackSeedBase = 100

// warmupIter is the iteration number runWorkload gives the untimed warm-up:
// one no timed iteration uses, so that workloads can tell it apart.
const warmupIter = 1 << 30

// unpackBench imports an image archive and unpacks it into the overlayfs
// snapshotter, the client-side way (`Client.Import`, then `Image.Unpack`:
// each layer is applied through the Diff service onto a fresh snapshot and
// committed). After timing, the image is deleted synchronously so garbage
// collection takes its blobs and snapshots, and every iteration starts cold.
type unpackBench struct {
	d       *daemon
	img     *testimage.Image
	archive []byte
	chain   []digest.Digest // chain IDs of the layers, bottom first
	// verify checks the unpacked image's root filesystem, mounted at root.
	verify func(root string) error

	// The two halves of each timed iteration, for the progress line: they
	// tell whether a ratio comes from writing content or from applying it.
	importDs, unpackDs []time.Duration
}

func newUnpackBench(_ context.Context, d *daemon, img *testimage.Image, verify func(root string) error) (*unpackBench, error) {
	archive, err := img.ArchiveBytes()
	if err != nil {
		return nil, err
	}
	return &unpackBench{d: d, img: img, archive: archive, chain: chainIDs(img), verify: verify}, nil
}

// checkCold fails if anything of the image survived the previous delete:
// a daemon whose GC leaves blobs or snapshots behind would otherwise be
// measured re-using them.
func (b *unpackBench) checkCold(ctx context.Context) error {
	cs := b.d.client.ContentStore()
	for _, l := range b.img.Layers {
		if _, err := cs.Info(ctx, l.Digest); err == nil {
			return fmt.Errorf("layer %s still present before import: image delete did not garbage-collect it, so the import would be measured warm", l.Digest)
		} else if !errdefs.IsNotFound(err) {
			return fmt.Errorf("check layer %s: %w", l.Digest, err)
		}
	}
	sn := b.d.client.SnapshotService(benchSnapshotter)
	for _, id := range b.chain {
		if _, err := sn.Stat(ctx, id.String()); err == nil {
			return fmt.Errorf("snapshot %s still present before unpack: image delete did not garbage-collect it, so the unpack would be measured warm", id)
		} else if !errdefs.IsNotFound(err) {
			return fmt.Errorf("check snapshot %s: %w", id, err)
		}
	}
	return nil
}

func (b *unpackBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	if err := b.checkCold(ctx); err != nil {
		return nil, err
	}
	// Flush the previous iteration's writes (of either daemon) now, so that
	// their writeback is not charged to whoever runs next.
	syscall.Sync()

	start := time.Now()
	imgs, err := b.d.client.Import(ctx, bytes.NewReader(b.archive), client.WithAllPlatforms(true))
	imported := time.Now()
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if len(imgs) != 1 || imgs[0].Name != b.img.Name {
		return nil, fmt.Errorf("import created %v, want one image %s", imgs, b.img.Name)
	}
	if err := client.NewImage(b.d.client, imgs[0]).Unpack(ctx, benchSnapshotter); err != nil {
		return nil, fmt.Errorf("unpack: %w", err)
	}
	end := time.Now()

	// The unpack must have produced the whole committed chain, or the
	// measurement was of something other than an unpack.
	top := b.chain[len(b.chain)-1]
	info, err := b.d.client.SnapshotService(benchSnapshotter).Stat(ctx, top.String())
	if err != nil {
		return nil, fmt.Errorf("unpacked image has no top snapshot %s: %w", top, err)
	}
	if info.Kind != snapshots.KindCommitted {
		return nil, fmt.Errorf("top snapshot %s is %v, want committed", top, info.Kind)
	}
	if iter == warmupIter {
		if err := b.verifyRootfs(ctx, top.String()); err != nil {
			return nil, err
		}
	}
	if err := b.d.client.ImageService().Delete(ctx, b.img.Name, images.SynchronousDelete()); err != nil {
		return nil, fmt.Errorf("delete image: %w", err)
	}
	if iter != warmupIter {
		b.importDs = append(b.importDs, imported.Sub(start))
		b.unpackDs = append(b.unpackDs, end.Sub(imported))
	}
	return []time.Duration{end.Sub(start)}, nil
}

// verifyRootfs mounts a view of the unpacked chain and has verify compare
// it with what the image was made from: proof, once per daemon, that the
// timed unpack really lands the data in the snapshotter.
func (b *unpackBench) verifyRootfs(ctx context.Context, chainID string) (err error) {
	// Under a lease, or the collector may take the view before it is used
	// (the unpack's own lease has just gone, which schedules a collection).
	ctx, done, err := b.d.client.WithLease(ctx)
	if err != nil {
		return fmt.Errorf("lease for the view: %w", err)
	}
	defer func() {
		if derr := done(ctx); derr != nil && err == nil {
			err = fmt.Errorf("delete lease of the view: %w", derr)
		}
	}()
	sn := b.d.client.SnapshotService(benchSnapshotter)
	key := fmt.Sprintf("bench-verify-%d", time.Now().UnixNano())
	mounts, err := sn.View(ctx, key, chainID)
	if err != nil {
		return fmt.Errorf("view unpacked chain: %w", err)
	}
	defer func() {
		if rerr := sn.Remove(ctx, key); rerr != nil && err == nil {
			err = fmt.Errorf("remove view: %w", rerr)
		}
	}()
	target, err := os.MkdirTemp("", "fb-verify-")
	if err != nil {
		return err
	}
	defer os.Remove(target)
	if err := mount.All(mounts, target); err != nil {
		return fmt.Errorf("mount unpacked chain: %w", err)
	}
	defer func() {
		if uerr := mount.UnmountAll(target, 0); uerr != nil && err == nil {
			err = fmt.Errorf("unmount unpacked chain: %w", uerr)
		}
	}()
	if _, err := os.Stat(filepath.Join(target, "bin", "busybox")); err != nil {
		return fmt.Errorf("unpacked rootfs lacks the busybox layer: %w", err)
	}
	if err := b.verify(target); err != nil {
		return fmt.Errorf("unpacked rootfs: %w", err)
	}
	return nil
}

// verifyRandomLayers checks that a root filesystem holds the unpack
// image's random files, each byte for byte.
func verifyRandomLayers(layers int, layerSize int64) func(root string) error {
	return func(root string) error {
		for i := range layers {
			seed := int64(unpackSeedBase + i)
			name := filepath.Join(root, fmt.Sprintf("random-%d.bin", seed))
			if err := sameBytes(name, testimage.RandomReader(seed), layerSize); err != nil {
				return err
			}
		}
		return nil
	}
}

// sameBytes checks that the file at path holds exactly size bytes, those
// that want yields first.
func sameBytes(path string, want io.Reader, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	got, exp := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(f, got)
		if n > 0 {
			if off+int64(n) > size {
				return fmt.Errorf("%s is longer than %d bytes", path, size)
			}
			if _, err := io.ReadFull(want, exp[:n]); err != nil {
				return err
			}
			if !bytes.Equal(got[:n], exp[:n]) {
				return fmt.Errorf("%s differs from its layer within bytes %d-%d", path, off, off+int64(n))
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	}
	if off != size {
		return fmt.Errorf("%s has %d bytes, want %d", path, off, size)
	}
	return nil
}

func (b *unpackBench) cleanup(ctx context.Context) error {
	if mi, ok := median(b.importDs); ok {
		mu, _ := median(b.unpackDs)
		fmt.Fprintf(os.Stderr, "%s on %s: medians of the halves: Import %s ms, Unpack %s ms\n",
			b.img.Name[strings.LastIndex(b.img.Name, ":")+1:], b.d.name, formatIn(mi, time.Millisecond), formatIn(mu, time.Millisecond))
	}
	err := b.d.client.ImageService().Delete(ctx, b.img.Name, images.SynchronousDelete())
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// snapshotBench times prepare → commit → remove cycles on the overlayfs
// snapshotter, each on top of an unpacked busybox layer, as a container
// rootfs would be: the metadata bookkeeping (namespaced keys, parents, lease
// references) and the snapshotter's own directory work, per cycle.
type snapshotBench struct {
	d      *daemon
	sn     snapshots.Snapshotter
	img    *testimage.Image
	parent string
	lease  leases.Lease
	cycles int
}

func newSnapshotBench(ctx context.Context, d *daemon, img *testimage.Image, cycles int) (*snapshotBench, error) {
	archive, err := img.ArchiveBytes()
	if err != nil {
		return nil, err
	}
	b := &snapshotBench{d: d, sn: d.client.SnapshotService(benchSnapshotter), img: img, cycles: cycles,
		parent: identity.ChainID(img.DiffIDs).String()}
	imgs, err := d.client.Import(ctx, bytes.NewReader(archive), client.WithAllPlatforms(true))
	if err != nil {
		return nil, fmt.Errorf("import base image: %w", err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import created %d images, want 1", len(imgs))
	}
	if err := client.NewImage(d.client, imgs[0]).Unpack(ctx, benchSnapshotter); err != nil {
		_ = b.cleanup(ctx)
		return nil, fmt.Errorf("unpack base image: %w", err)
	}
	// A lease, as a client creating container rootfs holds one: it keeps
	// the work in progress from the garbage collector, on both daemons alike.
	if b.lease, err = d.client.LeasesService().Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour)); err != nil {
		_ = b.cleanup(ctx)
		return nil, fmt.Errorf("create lease: %w", err)
	}
	return b, nil
}

func (b *snapshotBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	ctx = leases.WithLease(ctx, b.lease.ID)
	out := make([]time.Duration, 0, b.cycles)
	for i := range b.cycles {
		active := fmt.Sprintf("bench-active-%d-%d", iter, i)
		committed := fmt.Sprintf("bench-committed-%d-%d", iter, i)
		start := time.Now()
		if _, err := b.sn.Prepare(ctx, active, b.parent); err != nil {
			return nil, fmt.Errorf("prepare %s: %w", active, err)
		}
		if err := b.sn.Commit(ctx, committed, active); err != nil {
			return nil, fmt.Errorf("commit %s: %w", active, err)
		}
		if err := b.sn.Remove(ctx, committed); err != nil {
			return nil, fmt.Errorf("remove %s: %w", committed, err)
		}
		out = append(out, time.Since(start))
	}
	// Every cycle removed what it made: the snapshotter must be back to the
	// base chain alone, or the loop measured something that did not happen.
	var left []string
	if err := b.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if !b.inBaseChain(info.Name) {
			left = append(left, info.Name)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("walk snapshots: %w", err)
	}
	if len(left) > 0 {
		return nil, fmt.Errorf("%d snapshots left after the loop (e.g. %s)", len(left), left[0])
	}
	return out, nil
}

func (b *snapshotBench) inBaseChain(name string) bool {
	for _, id := range chainIDs(b.img) {
		if id.String() == name {
			return true
		}
	}
	return false
}

func (b *snapshotBench) cleanup(ctx context.Context) error {
	var errs []error
	if b.lease.ID != "" {
		if err := b.d.client.LeasesService().Delete(ctx, b.lease, leases.SynchronousDelete); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete lease: %w", err))
		}
	}
	if err := b.d.client.ImageService().Delete(ctx, b.img.Name, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete base image: %w", err))
	}
	return errors.Join(errs...)
}

// chainIDs are the snapshot names an unpack of img commits, bottom first.
// identity.ChainIDs rewrites its argument in place, hence the copy: the
// image is shared by every daemon's instance.
func chainIDs(img *testimage.Image) []digest.Digest {
	return identity.ChainIDs(slices.Clone(img.DiffIDs))
}

// lazyImage builds an image the first time a workload needs it: the unpack
// image holds its layers and archive in memory (twice its size), which a
// run that does not select it should not pay for.
func lazyImage(opts ...testimage.Option) func() (*testimage.Image, error) {
	return sync.OnceValues(func() (*testimage.Image, error) { return testimage.Busybox(opts...) })
}
