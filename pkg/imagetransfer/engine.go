// Package imagetransfer is Flotilla's transfer engine: what containerd's local
// transfer service does (pull, push, import, export, tag), written for a
// graph of processes. It runs beside the stores and reaches them through
// the interfaces in Stores; what a pull downloads goes to the content store
// and, for a layer, to the snapshotter that unpacks it, as it arrives.
//
// A pull fetches the image's layers in parallel and unpacks each while it
// downloads: on a snapshotter that can rebase (overlayfs), every layer is
// applied into a snapshot of its own at once and the snapshots are committed
// onto their parents in order; elsewhere layers are applied in order, the
// first as it downloads, the others from the content store they were
// fetched into meanwhile. Concurrent pulls of one blob share its download,
// and of one layer its unpack (flight.go).
//
// Every transfer runs under a lease (the client's, or one of its own that it
// deletes at the end), so what a failed transfer wrote is collected.
package imagetransfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Stores are what the engine works on, in the namespace and lease of each
// call's context.
type Stores struct {
	Content content.Store
	Images  images.Store
	Leases  leases.Manager
	// Snapshotter returns the namespaced snapshotter of that name.
	Snapshotter func(name string) snapshots.Snapshotter
	// Applier unpacks a layer from the content store (the Diff API).
	Applier diff.Applier
	// Streamer returns what applies a layer from its bytes as they arrive
	// on the named snapshotter, or nil when it cannot (a snapshotter
	// Flotilla does not run).
	Streamer func(ctx context.Context, name string) StreamApplier
	// Capabilities returns the capabilities of the named snapshotter
	// (snapshots.RebaseCap lets a pull unpack layers in parallel).
	Capabilities func(ctx context.Context, name string) ([]string, error)
	// RemoteSnapshotAnnotations, when not nil, says whether the named
	// snapshotter asks for the snapshot labels of lazy snapshotters (it
	// exports enable_remote_snapshot_annotations, as containerd reads it).
	RemoteSnapshotAnnotations func(ctx context.Context, name string) bool
}

// SnapshotAnnotator is an image destination that wants every unpacked
// layer's snapshot labelled for lazy snapshotters whatever the snapshotter
// says (containerd's CRI pulls always label them): the image reference,
// the layer's digest and the image's layers (pkg/snapshotters).
type SnapshotAnnotator interface {
	AnnotateSnapshots() bool
}

// StreamApplier applies a layer from its blob's bytes as they arrive.
type StreamApplier interface {
	// Open starts applying the layer desc onto mounts.
	Open(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount) (LayerWriter, error)
}

// LayerWriter takes a layer blob's bytes in order.
type LayerWriter interface {
	io.Writer
	// Commit says the whole blob was written and returns what was
	// applied (the uncompressed tar's descriptor: its digest is the
	// layer's diff ID).
	Commit() (ocispec.Descriptor, error)
	// Abort gives up the apply; the snapshot is the caller's to remove.
	Abort()
}

// Config tunes the engine.
type Config struct {
	// MaxConcurrentDownloads bounds the blobs one engine downloads at
	// once; 0: 3, as containerd.
	MaxConcurrentDownloads int
	// MaxConcurrentUploads bounds the blobs one push uploads at once; 0:
	// 3, as containerd.
	MaxConcurrentUploads int
	// MaxConcurrentUnpacks bounds the layers one pull unpacks at once on a
	// snapshotter that can rebase; 1 unpacks them in order.
	MaxConcurrentUnpacks int
	// Snapshotter unpacks images whose transfer names none.
	Snapshotter string
	// Platforms are those images are unpacked for (the host's when
	// empty); an image of another platform is fetched, not unpacked.
	Platforms []ocispec.Platform
}

// Engine runs transfers.
type Engine struct {
	stores    Stores
	config    Config
	platforms platforms.MatchComparer
	downloads *semaphore.Weighted
	uploads   *semaphore.Weighted
	// blobs and chains are the downloads and unpacks in flight, shared by
	// the pulls that want them.
	blobs  flights
	chains locks
}

// New returns an engine over stores.
func New(stores Stores, config Config) *Engine {
	if config.MaxConcurrentDownloads <= 0 {
		config.MaxConcurrentDownloads = 3
	}
	if config.MaxConcurrentUploads <= 0 {
		config.MaxConcurrentUploads = 3
	}
	if config.MaxConcurrentUnpacks <= 0 {
		config.MaxConcurrentUnpacks = 1
	}
	if config.Snapshotter == "" {
		config.Snapshotter = "overlayfs"
	}
	if len(config.Platforms) == 0 {
		config.Platforms = []ocispec.Platform{platforms.DefaultSpec()}
	}
	return &Engine{
		stores:    stores,
		config:    config,
		platforms: platforms.Any(config.Platforms...),
		downloads: semaphore.NewWeighted(int64(config.MaxConcurrentDownloads)),
		uploads:   semaphore.NewWeighted(int64(config.MaxConcurrentUploads)),
	}
}

// Transfer moves an image from src to dst, the transfer types of
// containerd's core/transfer: a registry (transfer.ImageFetcher,
// transfer.ImagePusher), the image store (core/transfer/image), an archive
// stream (core/transfer/archive). progress, when not nil, is told how it
// goes. A pair no transfer joins is ErrNotImplemented.
func (e *Engine) Transfer(ctx context.Context, src, dst any, progress transfer.ProgressFunc) error {
	p := progressOf(progress)
	switch s := src.(type) {
	case transfer.ImageFetcher:
		if d, ok := dst.(transfer.ImageStorer); ok {
			return e.pull(ctx, s, d, p)
		}
	case transfer.ImageGetter:
		switch d := dst.(type) {
		case transfer.ImagePusher:
			return e.push(ctx, s, d, p)
		case transfer.ImageExporter:
			return e.export(ctx, s, d, p)
		case transfer.ImageStorer:
			return e.tag(ctx, s, d)
		}
	case transfer.ImageImporter:
		switch d := dst.(type) {
		case transfer.ImageExportStreamer:
			return e.echo(ctx, s, d)
		case transfer.ImageStorer:
			return e.importArchive(ctx, s, d, p)
		}
	}
	return fmt.Errorf("no transfer from %s to %s: %w", nameOf(src), nameOf(dst), errdefs.ErrNotImplemented)
}

// registryError gives a registry's refusal of the caller a class:
// Unauthenticated for a 401 (no or wrong credentials), PermissionDenied for
// a 403, where containerd leaves both Unknown.
func registryError(err error) error {
	var us remoteerrors.ErrUnexpectedStatus
	if err == nil || !errors.As(err, &us) || !errdefs.IsUnknown(errdefs.Resolve(err)) {
		return err
	}
	switch us.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%v: %w", err, errdefs.ErrUnauthenticated)
	case http.StatusForbidden:
		return fmt.Errorf("%v: %w", err, errdefs.ErrPermissionDenied)
	}
	return err
}

func nameOf(v any) string {
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", v)
}

// transferLease is the lease a transfer writes under: one of its own,
// deleted when the transfer ends, so that whatever a failed or cancelled
// transfer wrote is collected (a client cannot be relied on to delete its
// own lease: ctr deletes it with the context it was cancelled with). What a
// transfer that succeeds keeps for the client (an image it stored) is also
// added to the client's lease, as containerd's transfer service, which
// writes under the client's lease, leaves it.
type transferLease struct {
	e      *Engine
	own    leases.Lease
	client string
	keep   []ocispec.Descriptor
}

// withLease returns ctx under a lease of the transfer's own; end ends it.
func (e *Engine) withLease(ctx context.Context) (context.Context, *transferLease, error) {
	l := &transferLease{e: e}
	if e.stores.Leases == nil {
		return ctx, l, nil
	}
	l.client, _ = leases.FromContext(ctx)
	own, err := e.stores.Leases.Create(ctx, leases.WithRandomID(), leases.WithExpiration(24*time.Hour))
	if err != nil {
		return ctx, nil, fmt.Errorf("create the transfer's lease: %w", err)
	}
	l.own = own
	return leases.WithLease(ctx, own.ID), l, nil
}

// hold records blobs to add to the client's lease when the transfer ends.
func (l *transferLease) hold(descs ...ocispec.Descriptor) {
	l.keep = append(l.keep, descs...)
}

// end hands what the transfer holds to the client's lease and deletes the
// transfer's own; it runs even when the call was cancelled.
func (l *transferLease) end(ctx context.Context) {
	if l == nil || l.own.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	ls := l.e.stores.Leases
	if l.client != "" {
		for _, d := range l.keep {
			r := leases.Resource{ID: d.Digest.String(), Type: "content"}
			if err := ls.AddResource(ctx, leases.Lease{ID: l.client}, r); err != nil {
				logging.G(ctx).Warn("add to the client's lease", "lease", l.client, "digest", d.Digest, "error", err)
			}
		}
	}
	if err := ls.Delete(ctx, l.own); err != nil && !errdefs.IsNotFound(err) {
		logging.G(ctx).Warn("delete the transfer's lease; it expires in a day", "lease", l.own.ID, "error", err)
	}
}

// echo copies an import stream to an export stream unchanged: containerd's
// test of the Streaming API.
func (e *Engine) echo(ctx context.Context, i transfer.ImageImporter, x transfer.ImageExportStreamer) error {
	is, ok := i.(transfer.ImageImportStreamer)
	if !ok {
		return fmt.Errorf("echo needs the import's raw stream: %w", errdefs.ErrNotImplemented)
	}
	r, _, err := is.ImportStream(ctx)
	if err != nil {
		return err
	}
	w, _, err := x.ExportStream(ctx)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// tag stores the image src names under the names dst gives.
func (e *Engine) tag(ctx context.Context, src transfer.ImageGetter, dst transfer.ImageStorer) error {
	img, err := src.Get(ctx, e.stores.Images)
	if err != nil {
		return err
	}
	_, err = dst.Store(ctx, img.Target, e.stores.Images)
	return err
}
