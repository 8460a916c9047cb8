// Package diff is containerd's Diff service (containerd.services.diff.v1.Diff)
// as the snapshotter process serves it: Apply unpacks a layer blob from the
// content store onto a snapshot's mounts, Compare turns two sets of mounts
// into a new layer blob in the content store.
//
// Layer tars are untrusted input. Every header is vetted before
// containerd's pkg/archive acts on it (see guard.go): absolute paths, paths
// climbing out with "..", writes through symbolic links and hard links to
// anything outside the layer's root are refused with ErrInvalidArgument
// instead of being silently rewritten. An apply that fails part way leaves
// a half-written snapshot behind; the caller removes it.
package diff

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Content is the part of a content store the Diff service uses: reading
// layers for Apply, writing and labelling new layers for Compare.
// content.Store satisfies it; in production it is containerd's
// core/content/proxy client over the metadata service's namespaced Content
// API, so every call must carry the caller's namespace (see server.go).
type Content interface {
	content.Provider
	content.Ingester
	Info(ctx context.Context, dgst digest.Digest) (content.Info, error)
	Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error)
	Abort(ctx context.Context, ref string) error
}

// Streamer is a Content that can also send a whole blob as one stream.
type Streamer interface {
	Stream(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error)
}

// Service applies and creates layers. It implements containerd's
// diff.Applier and diff.Comparer.
type Service struct {
	content Content
}

var (
	_ diff.Applier  = (*Service)(nil)
	_ diff.Comparer = (*Service)(nil)
)

// New returns a Diff service reading and writing layers through cs.
func New(cs Content) *Service {
	return &Service{content: cs}
}

// Apply unpacks the layer desc onto mounts and returns the descriptor of
// what was applied: the uncompressed tar (application/vnd.oci.image.layer.v1.tar)
// with its digest, the layer's diff ID, as containerd does.
//
// The blob is fetched, hashed and decompressed ahead of the tar being
// written (readahead.go); its digest is checked once it has been read to
// the end, so a blob that does not match desc fails with
// ErrFailedPrecondition after the snapshot has been written to.
func (s *Service) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	start := time.Now()
	var cfg diff.ApplyConfig
	for _, o := range opts {
		if err := o(ctx, desc, &cfg); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("apply option: %w", err)
		}
	}
	// Payloads are for a stream processor registered for the layer's
	// media type (containerd's [stream_processors], imgcrypt's decoder).
	// None is here: a plain layer is applied and its payloads ignored, as
	// containerd ignores them (nerdctl sends imgcrypt's with every layer);
	// a layer that needs a processor is refused by its media type.
	if err := checkLayer(desc, mounts); err != nil {
		return ocispec.Descriptor{}, err
	}
	if len(cfg.ProcessorPayloads) > 0 {
		logging.G(ctx).Debug("stream processor payloads ignored: no processor is needed for the layer's media type",
			"digest", desc.Digest, "media_type", desc.MediaType, "payloads", len(cfg.ProcessorPayloads))
	}

	ra, err := s.content.ReaderAt(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("open layer %s: %w", desc.Digest, err)
	}
	defer ra.Close()
	// A size mismatch is known before anything is written: refuse early.
	if desc.Size > 0 && ra.Size() != desc.Size {
		return ocispec.Descriptor{}, fmt.Errorf("layer %s is %d bytes in the content store, its descriptor says %d: %w",
			desc.Digest, ra.Size(), desc.Size, errdefs.ErrFailedPrecondition)
	}

	if cfg.Progress != nil {
		cfg.Progress(0)
	}
	var src io.Reader = content.NewReader(ra)
	if st, ok := s.content.(Streamer); ok {
		// One stream for the whole blob instead of a call per chunk:
		// the difference between a pipeline and a round trip to another
		// process per MiB.
		rc, err := st.Stream(ctx, desc.Digest)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("open layer %s: %w", desc.Digest, err)
		}
		defer rc.Close()
		src = rc
	}
	applied, err := applyBlob(ctx, desc, mounts, src, cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	logging.G(ctx).Debug("layer applied", "digest", desc.Digest, "diff_id", applied.Digest,
		"media_type", desc.MediaType, "size", desc.Size, "duration", time.Since(start))
	return applied, nil
}

// checkLayer refuses, before anything is written, a layer Apply cannot
// unpack: an unknown or encrypted media type, a malformed digest, no mounts.
func checkLayer(desc ocispec.Descriptor, mounts []mount.Mount) error {
	if err := checkLayerMediaType(desc.MediaType); err != nil {
		return err
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("layer digest %q: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if len(mounts) == 0 {
		return fmt.Errorf("apply layer %s: no mounts to apply onto: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	return nil
}

// applyBlob unpacks the layer blob read from src onto mounts: the blob is
// read and hashed ahead of the decompressor (readahead.go), the tar is
// written as it is decompressed, and the blob's digest is checked once it
// has been read to the end.
func applyBlob(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, src io.Reader, cfg diff.ApplyConfig) (ocispec.Descriptor, error) {
	blob := newReadAhead(src, desc.Digest.Algorithm(), cfg.Progress)
	defer blob.Close()
	layer, err := openLayer(blob)
	if err != nil {
		return ocispec.Descriptor{}, layerError(desc, err)
	}
	defer layer.Close()

	tarStream := &hashingReader{r: layer, d: digest.Canonical.Digester()}
	if err := applyMounts(ctx, mounts, tarStream, cfg.SyncFs); err != nil {
		return ocispec.Descriptor{}, layerError(desc, err)
	}
	// archive.Apply stops at the tar's end marker, but the diff ID covers
	// the whole uncompressed stream and the digest the whole blob.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return ocispec.Descriptor{}, layerError(desc, err)
	}
	// The decompressor may still read the blob from its own goroutine
	// until closed; only then is the blob ours to drain.
	if err := layer.Close(); err != nil {
		return ocispec.Descriptor{}, layerError(desc, err)
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return ocispec.Descriptor{}, layerError(desc, err)
	}
	if got := blob.Digest(); got != desc.Digest {
		return ocispec.Descriptor{}, fmt.Errorf("layer %s: content read has digest %s: %w", desc.Digest, got, errdefs.ErrFailedPrecondition)
	}

	return ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayer,
		Digest:    tarStream.d.Digest(),
		Size:      tarStream.n,
	}, nil
}

// checkLayerMediaType accepts the OCI and Docker layer media types,
// compressed with gzip or zstd or not at all. The compression actually used
// is read from the blob's first bytes, as containerd does, because images
// exist whose Docker media type claims gzip for a plain tar.
func checkLayerMediaType(mt string) error {
	if strings.Contains(mt, "+encrypted") {
		return fmt.Errorf("layer media type %q is encrypted and no stream processor to decrypt it is configured: %w", mt, errdefs.ErrNotImplemented)
	}
	c, err := images.DiffCompression(context.Background(), mt)
	if err != nil {
		return fmt.Errorf("layer media type %q: %w", mt, errdefs.ErrNotImplemented)
	}
	switch c {
	case "gzip", "zstd", "unknown":
		return nil
	case "":
		// "" is also DiffCompression's answer for a Docker type wrapped in
		// another (+encrypted and the like): only bare tar types pass.
		if mt == ocispec.MediaTypeImageLayer || mt == ocispec.MediaTypeImageLayerNonDistributable { //nolint:staticcheck // still found in the wild
			return nil
		}
	}
	return fmt.Errorf("layer media type %q: %w", mt, errdefs.ErrNotImplemented)
}

// layerError gives an apply failure a clear errdefs class: failures already
// classified (our own refusals, the content store's answers) and context
// errors keep theirs; a blob that does not decompress or a tar that does
// not parse is the layer's fault (InvalidArgument); anything else, such as
// a full disk, stays unclassified.
func layerError(desc ocispec.Descriptor, err error) error {
	var fe *formatError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	case !errors.Is(errdefs.Resolve(err), errdefs.ErrUnknown):
	case errors.As(err, &fe), errors.Is(err, tar.ErrHeader), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("apply layer %s: malformed layer: %w: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("apply layer %s: %w", desc.Digest, err)
}

// hashingReader computes the diff ID of the tar stream as archive.Apply
// reads it.
type hashingReader struct {
	r io.Reader
	d digest.Digester
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.d.Hash().Write(p[:n])
		h.n += int64(n)
	}
	return n, err
}
