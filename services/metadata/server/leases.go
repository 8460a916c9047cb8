package server

import (
	"context"
	"fmt"

	api "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Leases serves containerd.services.leases.v1.
type Leases struct {
	api.UnimplementedLeasesServer
	db *metadb.DB
}

func (s *Leases) Register(srv grpc.ServiceRegistrar) { api.RegisterLeasesServer(srv, s) }

func (s *Leases) Create(ctx context.Context, req *api.CreateRequest) (*api.CreateResponse, error) {
	l := leases.Lease{ID: req.GetID(), Labels: req.GetLabels()}
	if l.ID == "" {
		// As containerd's service: a lease asked for without an id gets one.
		if err := leases.WithRandomID()(&l); err != nil {
			return nil, err
		}
	}
	l, err := s.db.CreateLease(ctx, l)
	if err != nil {
		return nil, err
	}
	return &api.CreateResponse{Lease: leaseToProto(l)}, nil
}

func (s *Leases) Delete(ctx context.Context, req *api.DeleteRequest) (*emptypb.Empty, error) {
	if err := s.db.DeleteLease(ctx, req.GetID(), req.GetSync()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Leases) List(ctx context.Context, req *api.ListRequest) (*api.ListResponse, error) {
	ls, err := s.db.ListLeases(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	resp := &api.ListResponse{Leases: make([]*api.Lease, 0, len(ls))}
	for _, l := range ls {
		resp.Leases = append(resp.Leases, leaseToProto(l))
	}
	return resp, nil
}

func (s *Leases) AddResource(ctx context.Context, req *api.AddResourceRequest) (*emptypb.Empty, error) {
	r, err := resourceFromProto(req.GetResource())
	if err != nil {
		return nil, err
	}
	if err := s.db.AddLeaseResource(ctx, req.GetID(), r); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Leases) DeleteResource(ctx context.Context, req *api.DeleteResourceRequest) (*emptypb.Empty, error) {
	r, err := resourceFromProto(req.GetResource())
	if err != nil {
		return nil, err
	}
	if err := s.db.DeleteLeaseResource(ctx, req.GetID(), r); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Leases) ListResources(ctx context.Context, req *api.ListResourcesRequest) (*api.ListResourcesResponse, error) {
	rs, err := s.db.ListLeaseResources(ctx, req.GetID())
	if err != nil {
		return nil, err
	}
	resp := &api.ListResourcesResponse{Resources: make([]*api.Resource, 0, len(rs))}
	for _, r := range rs {
		resp.Resources = append(resp.Resources, &api.Resource{ID: r.ID, Type: r.Type})
	}
	return resp, nil
}

func leaseToProto(l leases.Lease) *api.Lease {
	return &api.Lease{ID: l.ID, Labels: l.Labels, CreatedAt: timestamppb.New(l.CreatedAt)}
}

func resourceFromProto(r *api.Resource) (leases.Resource, error) {
	if r == nil {
		return leases.Resource{}, fmt.Errorf("request carries no resource: %w", errdefs.ErrInvalidArgument)
	}
	return leases.Resource{ID: r.GetID(), Type: r.GetType()}, nil
}
