package server

import (
	"context"

	eventstypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	contentserver "github.com/flotilla-project/flotilla/services/content/server"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Content serves the namespaced containerd.services.content.v1 over the
// namespace's records, with the bytes in the content service.
type Content struct {
	*contentserver.Service
	pub *Publisher
}

func newContent(db *metadb.DB, pub *Publisher, s *contentserver.Service) *Content {
	return &Content{Service: s, pub: pub}
}

func (s *Content) Register(srv *grpc.Server) { api.RegisterContentServer(srv, s) }

func (s *Content) Delete(ctx context.Context, req *api.DeleteContentRequest) (*emptypb.Empty, error) {
	resp, err := s.Service.Delete(ctx, req)
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/content/delete", &eventstypes.ContentDelete{Digest: req.GetDigest()}, "")
	return resp, nil
}
