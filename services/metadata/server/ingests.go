package server

import (
	"context"
	"fmt"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	ingestpb "github.com/flotilla-project/flotilla/proto/ingest/v1"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Ingests is the control path of a namespaced content write for the
// content process, which moves the bytes: metadata decides and records, and
// never sees them.
type Ingests struct {
	ingestpb.UnimplementedIngestsServer
	store *metadb.Content
	pub   *Publisher
}

func (s *Ingests) Register(srv grpc.ServiceRegistrar) { ingestpb.RegisterIngestsServer(srv, s) }

func (s *Ingests) Open(ctx context.Context, req *ingestpb.OpenRequest) (*ingestpb.OpenResponse, error) {
	desc := ocispec.Descriptor{Size: req.GetSize()}
	if req.GetExpected() != "" {
		d, err := digest.Parse(req.GetExpected())
		if err != nil {
			return nil, fmt.Errorf("expected digest %q: %v: %w", req.GetExpected(), err, errdefs.ErrInvalidArgument)
		}
		desc.Digest = d
	}
	var stored *content.Info
	if req.GetStored() && desc.Digest != "" {
		stored = &content.Info{Digest: desc.Digest, Size: req.GetStoredSize()}
	}
	bref, err := s.store.OpenIngest(ctx, req.GetRef(), desc, stored)
	if err != nil {
		return nil, err
	}
	return &ingestpb.OpenResponse{BackendRef: bref}, nil
}

func (s *Ingests) Commit(ctx context.Context, req *ingestpb.CommitRequest) (*ingestpb.CommitResponse, error) {
	d, err := digest.Parse(req.GetDigest())
	if err != nil {
		return nil, fmt.Errorf("digest %q: %v: %w", req.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	if err := s.store.CommitIngest(ctx, req.GetRef(), content.Info{Digest: d, Size: req.GetSize()}, req.GetLabels()); err != nil {
		return nil, err
	}
	// As containerd's namespaced writer announces a commit.
	s.pub.Publish(ctx, "/content/create", &eventstypes.ContentCreate{Digest: d.String(), Size: req.GetSize()}, "")
	return &ingestpb.CommitResponse{}, nil
}

func (s *Ingests) Forget(ctx context.Context, req *ingestpb.ForgetRequest) (*ingestpb.ForgetResponse, error) {
	if err := s.store.ForgetIngest(ctx, req.GetRef()); err != nil {
		return nil, err
	}
	return &ingestpb.ForgetResponse{}, nil
}
