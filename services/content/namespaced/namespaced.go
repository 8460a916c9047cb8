// Package namespaced is the content process's view of its blob store as a
// namespace sees it, for the namespaced Content API's Read and Write streams:
// the bytes move between the client's stream and the files here, in this
// process alone, while every decision and record is metadata's (whether the
// namespace holds a blob, which ingest a ref is, the blob's record once
// committed), asked with small calls. So a blob's bytes cross one process
// boundary between a client and the disk — the gateway's — as containerd's
// do.
//
// The namespace and lease of a call travel in its metadata (containerd's
// headers), from the client through the gateway to this process and on to
// metadata.
package namespaced

import (
	"context"
	"fmt"
	"os"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/pkg/logging"
	ingestpb "github.com/flotilla-project/flotilla/proto/ingest/v1"
	"github.com/flotilla-project/flotilla/services/content/blobs"
)

// Store is the namespaced content store whose bytes are local. Calls that
// move no bytes (Info, Update, Walk, Delete, Status, ListStatuses) are
// metadata's namespaced API's own.
type Store struct {
	content.Store // metadata's namespaced Content API
	blobs         *blobs.Store
	ingests       ingestpb.IngestsClient
}

var _ content.Store = (*Store)(nil)

// New serves the namespaced view of local over metadata, the connection to
// the metadata service.
func New(local *blobs.Store, metadata grpc.ClientConnInterface) *Store {
	return &Store{
		Store:   proxy.NewContentStore(contentapi.NewContentClient(metadata)),
		blobs:   local,
		ingests: ingestpb.NewIngestsClient(metadata),
	}
}

// outgoing carries the call's namespace and lease on to metadata.
func outgoing(ctx context.Context) (context.Context, string, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, "", err
	}
	ctx = namespaces.WithNamespace(ctx, ns)
	if lease, ok := leases.FromContext(ctx); ok && lease != "" {
		ctx = leases.WithLease(ctx, lease)
	}
	return ctx, ns, nil
}

func (s *Store) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	ctx, _, err := outgoing(ctx)
	if err != nil {
		return content.Info{}, err
	}
	info, err := s.Store.Info(ctx, d)
	return info, errgrpc.ToNative(err)
}

// ReaderAt reads a blob the namespace holds from the local file.
func (s *Store) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if _, err := s.Info(ctx, desc.Digest); err != nil {
		return nil, err
	}
	return s.blobs.ReaderAt(ctx, desc)
}

// OpenFile opens the file of a blob the namespace holds, for a process that
// reads it itself (pkg/blobfd).
func (s *Store) OpenFile(ctx context.Context, dgst string) (*os.File, error) {
	d, err := digest.Parse(dgst)
	if err != nil {
		return nil, fmt.Errorf("digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	if _, err := s.Info(ctx, d); err != nil {
		return nil, err
	}
	return s.blobs.OpenFile(d)
}

// backendRef is the local ingest of a namespace's ref, as metadata names it
// (namespaces never contain "/", so refs of two cannot collide).
func backendRef(ns, ref string) string { return ns + "/" + ref }

// Abort drops an ingest of the namespace, here and in metadata.
func (s *Store) Abort(ctx context.Context, ref string) error {
	octx, ns, err := outgoing(ctx)
	if err != nil {
		return err
	}
	if err := s.blobs.Abort(ctx, backendRef(ns, ref)); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	_, err = s.ingests.Forget(octx, &ingestpb.ForgetRequest{Ref: ref})
	return errgrpc.ToNative(err)
}

// Writer opens an ingest of the call's namespace: metadata records it (or
// says the namespace has the blob: AlreadyExists) and names the local ingest
// that holds its bytes. Bytes another namespace stored already are not sent
// again: the writer reports them written, and its commit only records them.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if err := blobs.ValidateRef(wo.Ref); err != nil {
		return nil, err
	}
	octx, ns, err := outgoing(ctx)
	if err != nil {
		return nil, err
	}
	req := &ingestpb.OpenRequest{Ref: wo.Ref, Size: wo.Desc.Size}
	if wo.Desc.Digest != "" {
		if err := wo.Desc.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("expected digest %q: %v: %w", wo.Desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		req.Expected = wo.Desc.Digest.String()
		// Bytes stored already are held from metadata's collector until
		// the writer is done: the namespace that had them may have just
		// let them go (an image removed and pulled again), and metadata
		// is told they are here only while they are sure to stay.
		release := s.blobs.Hold(wo.Desc.Digest)
		if info, err := s.blobs.Info(ctx, wo.Desc.Digest); err == nil {
			req.Stored, req.StoredSize = true, info.Size
			resp, err := s.ingests.Open(octx, req)
			if err != nil {
				release()
				return nil, errgrpc.ToNative(err)
			}
			if resp.GetBackendRef() == "" {
				return &contentserver.StoredWriter{Ref: wo.Ref, Info: info, Started: time.Now().UTC(), Release: release,
					Record: func(ctx context.Context, labels map[string]string) error {
						octx, _, err := outgoing(ctx)
						if err != nil {
							return err
						}
						_, err = s.ingests.Commit(octx, &ingestpb.CommitRequest{Ref: wo.Ref, Digest: info.Digest.String(), Size: info.Size, Labels: labels})
						return errgrpc.ToNative(err)
					}}, nil
			}
			release()
			return s.localWriter(ctx, octx, ns, wo, resp.GetBackendRef())
		}
		release()
	}
	resp, err := s.ingests.Open(octx, req)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return s.localWriter(ctx, octx, ns, wo, resp.GetBackendRef())
}

// localWriter is the writer of an ingest whose bytes are sent here, under
// the local name metadata gave it.
func (s *Store) localWriter(ctx, octx context.Context, ns string, wo content.WriterOpts, bref string) (content.Writer, error) {
	if want := backendRef(ns, wo.Ref); bref != want {
		// Abort and Status find the ingest by this name.
		return nil, fmt.Errorf("metadata names the ingest of %q %q, want %q: %w", wo.Ref, bref, want, errdefs.ErrFailedPrecondition)
	}
	lease, leased := leases.FromContext(ctx)
	w, err := s.blobs.Writer(ctx, content.WithRef(bref), content.WithDescriptor(wo.Desc))
	if err != nil {
		if errdefs.IsAlreadyExists(err) && wo.Desc.Digest != "" {
			// Stored since the look-up (another namespace committed the
			// same bytes): they are this namespace's too.
			release := s.blobs.Hold(wo.Desc.Digest)
			defer release()
			if info, ierr := s.blobs.Info(ctx, wo.Desc.Digest); ierr == nil {
				if _, cerr := s.ingests.Commit(octx, &ingestpb.CommitRequest{Ref: wo.Ref, Digest: info.Digest.String(), Size: info.Size}); cerr != nil && !errdefs.IsAlreadyExists(errgrpc.ToNative(cerr)) {
					return nil, errgrpc.ToNative(cerr)
				}
			}
		}
		return nil, err
	}
	return &writer{Writer: w, s: s, ns: ns, ref: wo.Ref, leased: leased && lease != ""}, nil
}

func commitLabels(opts []content.Opt) (map[string]string, error) {
	var base content.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	return base.Labels, blobs.ValidateLabels(base.Labels)
}

// writer is a local ingest of a namespace's ref.
type writer struct {
	content.Writer
	s       *Store
	ns, ref string
	leased  bool
}

// Commit commits the bytes here, then has metadata record them in the
// namespace. The blob is held from collection in between: metadata's
// collector would see a blob no namespace records.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	labels, err := commitLabels(opts)
	if err != nil {
		w.Writer.Close()
		return err
	}
	octx, _, err := outgoing(ctx)
	if err != nil {
		w.Writer.Close()
		return err
	}
	d := expected
	if d == "" {
		d = w.Writer.Digest()
	}
	release := w.s.blobs.Hold(d)
	defer release()
	if err := w.Writer.Commit(ctx, size, expected); err != nil {
		if errdefs.IsFailedPrecondition(err) {
			// The bytes are not what the client declared. In a lease the
			// ingest stays for the client to fix and commit again, as in
			// containerd; without one nothing promised to keep it, so bad
			// input leaves nothing behind.
			if !w.leased {
				w.drop(ctx, octx)
			}
			return err
		}
		if !errdefs.IsAlreadyExists(err) {
			return err
		}
		// Stored already (for another namespace): this namespace's too.
	}
	if size <= 0 {
		info, err := w.s.blobs.Info(ctx, d)
		if err != nil {
			return fmt.Errorf("content %s committed but not found after: %w", d, err)
		}
		size = info.Size
	}
	_, err = w.s.ingests.Commit(octx, &ingestpb.CommitRequest{Ref: w.ref, Digest: d.String(), Size: size, Labels: labels})
	return errgrpc.ToNative(err)
}

// drop aborts a failed ingest and has metadata forget it.
func (w *writer) drop(ctx, octx context.Context) {
	if err := w.s.blobs.Abort(ctx, backendRef(w.ns, w.ref)); err != nil && !errdefs.IsNotFound(err) {
		logging.G(ctx).Warn("abort of a failed ingest", "ref", w.ref, "namespace", w.ns, "error", err)
	}
	if _, err := w.s.ingests.Forget(octx, &ingestpb.ForgetRequest{Ref: w.ref}); err != nil {
		logging.G(ctx).Warn("forget a failed ingest", "ref", w.ref, "namespace", w.ns, "error", err)
	}
}
