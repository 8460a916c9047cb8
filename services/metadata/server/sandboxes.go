package server

import (
	"context"

	api "github.com/containerd/containerd/api/services/sandbox/v1"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Sandboxes serves containerd.services.sandbox.v1.Store: the records of
// sandboxes, whatever controller runs them. Like containerd's, it publishes
// no events; the controllers do.
type Sandboxes struct {
	api.UnimplementedStoreServer
	db *metadb.DB
}

func (s *Sandboxes) Register(srv grpc.ServiceRegistrar) { api.RegisterStoreServer(srv, s) }

func (s *Sandboxes) Create(ctx context.Context, req *api.StoreCreateRequest) (*api.StoreCreateResponse, error) {
	sb, err := s.db.CreateSandbox(ctx, req.GetSandbox())
	if err != nil {
		return nil, err
	}
	return &api.StoreCreateResponse{Sandbox: sb}, nil
}

func (s *Sandboxes) Update(ctx context.Context, req *api.StoreUpdateRequest) (*api.StoreUpdateResponse, error) {
	sb, err := s.db.UpdateSandbox(ctx, req.GetSandbox(), req.GetFields()...)
	if err != nil {
		return nil, err
	}
	return &api.StoreUpdateResponse{Sandbox: sb}, nil
}

func (s *Sandboxes) List(ctx context.Context, req *api.StoreListRequest) (*api.StoreListResponse, error) {
	sbs, err := s.db.ListSandboxes(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	return &api.StoreListResponse{List: sbs}, nil
}

func (s *Sandboxes) Get(ctx context.Context, req *api.StoreGetRequest) (*api.StoreGetResponse, error) {
	sb, err := s.db.GetSandbox(ctx, req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	return &api.StoreGetResponse{Sandbox: sb}, nil
}

func (s *Sandboxes) Delete(ctx context.Context, req *api.StoreDeleteRequest) (*api.StoreDeleteResponse, error) {
	if err := s.db.DeleteSandbox(ctx, req.GetSandboxID()); err != nil {
		return nil, err
	}
	return &api.StoreDeleteResponse{}, nil
}
