package diff

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Compare writes the changes from lower to upper as a layer into the
// content store and returns its descriptor. The layer is gzip-compressed
// (application/vnd.oci.image.layer.v1.tar+gzip) unless the options ask for
// the plain tar or zstd; a compressed layer is labelled
// containerd.io/uncompressed with its diff ID. Both mount sets are mounted
// read-only.
func (s *Service) Compare(ctx context.Context, lower, upper []mount.Mount, opts ...diff.Opt) (ocispec.Descriptor, error) {
	var cfg diff.Config
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("diff option: %w", err)
		}
	}
	if cfg.Compressor != nil && cfg.MediaType == "" {
		return ocispec.Descriptor{}, fmt.Errorf("a custom compressor needs an explicit media type: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.MediaType == "" {
		cfg.MediaType = ocispec.MediaTypeImageLayerGzip
	}
	if cfg.Compressor == nil {
		if _, err := compressorFor(cfg.MediaType); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	var desc ocispec.Descriptor
	err := mount.WithReadonlyTempMount(ctx, lower, func(lowerRoot string) error {
		return mount.WithReadonlyTempMount(ctx, upper, func(upperRoot string) error {
			var err error
			desc, err = s.writeDiff(ctx, lowerRoot, upperRoot, cfg)
			return err
		})
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// compressor wraps the content writer; nil means the tar is stored as is.
type compressor func(io.Writer) (io.WriteCloser, error)

func compressorFor(mediaType string) (compressor, error) {
	switch mediaType {
	case ocispec.MediaTypeImageLayer:
		return nil, nil
	case ocispec.MediaTypeImageLayerGzip:
		// pgzip compresses blocks on every core; the output is one
		// ordinary gzip member.
		return func(w io.Writer) (io.WriteCloser, error) { return pgzip.NewWriter(w), nil }, nil
	case ocispec.MediaTypeImageLayerZstd:
		return func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) }, nil
	}
	return nil, fmt.Errorf("diff media type %q: %w", mediaType, errdefs.ErrNotImplemented)
}

// writeDiff streams the diff of two directories into a new content blob.
func (s *Service) writeDiff(ctx context.Context, lowerRoot, upperRoot string, cfg diff.Config) (ocispec.Descriptor, error) {
	compress, err := compressorFor(cfg.MediaType)
	if cfg.Compressor != nil {
		compress, err = func(w io.Writer) (io.WriteCloser, error) { return cfg.Compressor(w, cfg.MediaType) }, nil
	}
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	ref := cfg.Reference
	if ref == "" {
		ref = uniqueRef()
	}
	cw, err := s.content.Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{MediaType: cfg.MediaType}))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("open content writer %q: %w", ref, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		cw.Close()
		if cfg.Reference == "" {
			if err := s.content.Abort(ctx, ref); err != nil && !errdefs.IsNotFound(err) {
				logging.G(ctx).Warn("abandoned diff upload not removed", "ref", ref, "error", err)
			}
		}
	}()
	if cfg.Reference != "" {
		// A caller-chosen ref may hold an earlier, interrupted attempt.
		if err := cw.Truncate(0); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("reset content writer %q: %w", ref, err)
		}
	}

	blob := &countingWriter{w: cw}
	tarOut := io.WriteCloser(nopWriteCloser{blob})
	if compress != nil {
		if tarOut, err = compress(blob); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("start compressor: %w", err)
		}
	}
	diffID := digest.Canonical.Digester()
	var wopts []archive.WriteDiffOpt
	if cfg.SourceDateEpoch != nil {
		wopts = append(wopts, archive.WithSourceDateEpoch(cfg.SourceDateEpoch))
	}
	err = archive.WriteDiff(ctx, io.MultiWriter(tarOut, diffID.Hash()), lowerRoot, upperRoot, wopts...)
	if cerr := tarOut.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write diff: %w", err)
	}

	lbls := maps.Clone(cfg.Labels)
	if compress != nil {
		if lbls == nil {
			lbls = map[string]string{}
		}
		lbls[labels.LabelUncompressed] = diffID.Digest().String()
	}
	dgst := cw.Digest()
	err = cw.Commit(ctx, blob.n, dgst, content.WithLabels(lbls))
	switch {
	case err == nil:
		committed = true
	case errdefs.IsAlreadyExists(err):
		// The same layer is already stored; make sure it carries the label.
		committed = true
		if err := s.ensureUncompressedLabel(ctx, dgst, lbls); err != nil {
			return ocispec.Descriptor{}, err
		}
	default:
		return ocispec.Descriptor{}, fmt.Errorf("commit diff %s: %w", dgst, err)
	}
	return ocispec.Descriptor{MediaType: cfg.MediaType, Digest: dgst, Size: blob.n}, nil
}

func (s *Service) ensureUncompressedLabel(ctx context.Context, dgst digest.Digest, lbls map[string]string) error {
	want, ok := lbls[labels.LabelUncompressed]
	if !ok {
		return nil
	}
	info, err := s.content.Info(ctx, dgst)
	if err != nil {
		return fmt.Errorf("inspect existing diff %s: %w", dgst, err)
	}
	if info.Labels[labels.LabelUncompressed] == want {
		return nil
	}
	info.Labels = map[string]string{labels.LabelUncompressed: want}
	if _, err := s.content.Update(ctx, info, "labels."+labels.LabelUncompressed); err != nil {
		return fmt.Errorf("label existing diff %s: %w", dgst, err)
	}
	return nil
}

func uniqueRef() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("flotilla-diff-%d-%s", time.Now().UnixNano(), hex.EncodeToString(b[:]))
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
