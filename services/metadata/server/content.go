package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	eventstypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/contentread"
	contentserver "github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Content serves the namespaced containerd.services.content.v1 over the
// namespace's records, with the bytes in the content service.
type Content struct {
	*contentserver.Service
	store  *metadb.Content
	raw    *grpc.ClientConn
	pub    *Publisher
	logger *slog.Logger
}

func newContent(db *metadb.DB, raw *grpc.ClientConn, pub *Publisher, logger *slog.Logger) *Content {
	store := db.Content()
	return &Content{Service: contentserver.New(store, logger), store: store, raw: raw, pub: pub, logger: logger}
}

var readDesc = &grpc.StreamDesc{ServerStreams: true}

// Read checks that the namespace holds the blob, then relays the content
// service's own Read stream as undecoded frames: bytes are neither copied
// into messages nor re-encoded here, and chunks flow without a round trip
// per chunk. When the content process goes away mid-blob (a restart), the
// stream is opened again from the first byte not yet relayed.
func (s *Content) Read(req *api.ReadContentRequest, stream api.Content_ReadServer) error {
	ctx := stream.Context()
	d, err := digest.Parse(req.GetDigest())
	if err != nil {
		return fmt.Errorf("digest %q: %v: %w", req.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	if err := s.store.Visible(ctx, d); err != nil {
		return err
	}
	resume := contentread.New(req)
	for attempt := 1; ; attempt++ {
		err := s.relayRead(ctx, req, stream, resume)
		if err == nil || attempt == maxReadAttempts || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		rest, more := resume.Rest()
		if !more {
			return nil
		}
		s.logger.Debug("content went away mid-read, resuming", "digest", d, "offset", rest.GetOffset(), "error", err)
		req = rest
	}
}

// maxReadAttempts bounds how many restarts of the content process one Read
// rides out.
const maxReadAttempts = 3

func (s *Content) relayRead(ctx context.Context, req *api.ReadContentRequest, stream api.Content_ReadServer, resume *contentread.Resume) error {
	cs, err := s.raw.NewStream(ctx, readDesc, contentread.Method, grpc.ForceCodecV2(rpc.FrameCodec{}))
	if err != nil {
		return err
	}
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	for {
		f := &rpc.Frame{}
		if err := cs.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := resume.Relayed(f.Head(contentread.HeadSize), f.Len()); err != nil {
			f.Free()
			return err
		}
		if err := stream.SendMsg(f); err != nil {
			f.Free()
			return err
		}
	}
}

func (s *Content) Register(srv grpc.ServiceRegistrar) { api.RegisterContentServer(srv, s) }

func (s *Content) Delete(ctx context.Context, req *api.DeleteContentRequest) (*emptypb.Empty, error) {
	resp, err := s.Service.Delete(ctx, req)
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/content/delete", &eventstypes.ContentDelete{Digest: req.GetDigest()}, "")
	return resp, nil
}
