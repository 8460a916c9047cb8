package manager

import (
	"context"
	"fmt"

	api "github.com/containerd/containerd/api/services/mounts/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/mount/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Server is containerd's Mounts API (containerd.services.mounts.v1.Mounts)
// over a Manager. Errors are errdefs sentinels; the process's gRPC server
// maps them to status codes.
type Server struct {
	api.UnimplementedMountsServer
	m *Manager
}

// NewServer serves m.
func NewServer(m *Manager) *Server { return &Server{m: m} }

// Register adds the Mounts API to srv.
func (s *Server) Register(srv grpc.ServiceRegistrar) { api.RegisterMountsServer(srv, s) }

func (s *Server) Activate(ctx context.Context, r *api.ActivateRequest) (*api.ActivateResponse, error) {
	var opts []mount.ActivateOpt
	if r.Temporary {
		opts = append(opts, mount.WithTemporary)
	}
	if r.Labels != nil {
		opts = append(opts, mount.WithLabels(r.Labels))
	}
	info, err := s.m.Activate(ctx, r.Name, mount.FromProto(r.Mounts), opts...)
	if err != nil {
		return nil, err
	}
	return &api.ActivateResponse{Info: proxy.ActivationInfoToProto(info)}, nil
}

func (s *Server) Deactivate(ctx context.Context, r *api.DeactivateRequest) (*emptypb.Empty, error) {
	if err := s.m.Deactivate(ctx, r.Name); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Server) Info(ctx context.Context, r *api.InfoRequest) (*api.InfoResponse, error) {
	info, err := s.m.Info(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	return &api.InfoResponse{Info: proxy.ActivationInfoToProto(info)}, nil
}

func (s *Server) Update(ctx context.Context, r *api.UpdateRequest) (*api.UpdateResponse, error) {
	if r.Info == nil {
		return nil, fmt.Errorf("update without info: %w", errdefs.ErrInvalidArgument)
	}
	info, err := s.m.Update(ctx, proxy.ActivationInfoFromProto(r.Info), r.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	return &api.UpdateResponse{Info: proxy.ActivationInfoToProto(info)}, nil
}

func (s *Server) List(r *api.ListRequest, stream api.Mounts_ListServer) error {
	infos, err := s.m.List(stream.Context(), r.Filters...)
	if err != nil {
		return err
	}
	for _, info := range infos {
		if err := stream.Send(&api.ListMessage{Info: proxy.ActivationInfoToProto(info)}); err != nil {
			return err
		}
	}
	return nil
}
