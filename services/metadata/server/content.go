package server

import (
	"context"

	eventstypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	contentserver "github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Content serves the namespaced containerd.services.content.v1 over the
// namespace's records. The gateway sends its Read and Write streams to the
// content process, which moves the bytes and asks metadata (Ingests) for the
// decisions; served here too, they reach the bytes through the content
// service's raw API.
type Content struct {
	*contentserver.Service
	pub *Publisher
}

func newContent(db *metadb.DB, pub *Publisher) *Content {
	return &Content{Service: contentserver.New(db.Content()), pub: pub}
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
