// Package server serves containerd's raw Snapshots API
// (containerd.services.snapshots.v1.Snapshots) over one
// snapshots.Snapshotter, without namespaces: exactly what a containerd proxy
// snapshotter serves, so that containerd can use this process as a
// proxy_plugins entry and Flotilla can use any proxy snapshotter in its
// place. The request's snapshotter name is ignored, as proxy plugins do:
// this process is one snapshotter. Errors are errdefs sentinels; the
// process's gRPC server maps them to status codes.
package server

import (
	"context"
	"fmt"
	"log/slog"

	api "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// listBatch and listBatchBytes bound one List response: the 16 MiB
	// message limit must hold even when labels are large.
	listBatch      = 100
	listBatchBytes = 1 << 20
)

// Service is the Snapshots API over one snapshotter.
type Service struct {
	api.UnimplementedSnapshotsServer
	sn     snapshots.Snapshotter
	logger *slog.Logger
}

// New serves sn.
func New(sn snapshots.Snapshotter, logger *slog.Logger) *Service {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Service{sn: sn, logger: logger}
}

// Register adds the Snapshots API to srv.
func (s *Service) Register(srv grpc.ServiceRegistrar) { api.RegisterSnapshotsServer(srv, s) }

func withLabels(labels map[string]string) []snapshots.Opt {
	if labels == nil {
		return nil
	}
	return []snapshots.Opt{snapshots.WithLabels(labels)}
}

func (s *Service) Prepare(ctx context.Context, req *api.PrepareSnapshotRequest) (*api.PrepareSnapshotResponse, error) {
	mounts, err := s.sn.Prepare(ctx, req.GetKey(), req.GetParent(), withLabels(req.GetLabels())...)
	if err != nil {
		return nil, err
	}
	return &api.PrepareSnapshotResponse{Mounts: mount.ToProto(mounts)}, nil
}

func (s *Service) View(ctx context.Context, req *api.ViewSnapshotRequest) (*api.ViewSnapshotResponse, error) {
	mounts, err := s.sn.View(ctx, req.GetKey(), req.GetParent(), withLabels(req.GetLabels())...)
	if err != nil {
		return nil, err
	}
	return &api.ViewSnapshotResponse{Mounts: mount.ToProto(mounts)}, nil
}

func (s *Service) Mounts(ctx context.Context, req *api.MountsRequest) (*api.MountsResponse, error) {
	mounts, err := s.sn.Mounts(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	return &api.MountsResponse{Mounts: mount.ToProto(mounts)}, nil
}

func (s *Service) Commit(ctx context.Context, req *api.CommitSnapshotRequest) (*emptypb.Empty, error) {
	opts := withLabels(req.GetLabels())
	if req.GetParent() != "" {
		opts = append(opts, snapshots.WithParent(req.GetParent()))
	}
	if err := s.sn.Commit(ctx, req.GetName(), req.GetKey(), opts...); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) Remove(ctx context.Context, req *api.RemoveSnapshotRequest) (*emptypb.Empty, error) {
	if err := s.sn.Remove(ctx, req.GetKey()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) Stat(ctx context.Context, req *api.StatSnapshotRequest) (*api.StatSnapshotResponse, error) {
	info, err := s.sn.Stat(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	return &api.StatSnapshotResponse{Info: infoToProto(info)}, nil
}

func (s *Service) Update(ctx context.Context, req *api.UpdateSnapshotRequest) (*api.UpdateSnapshotResponse, error) {
	if req.GetInfo() == nil {
		return nil, fmt.Errorf("update without info: %w", errdefs.ErrInvalidArgument)
	}
	info, err := s.sn.Update(ctx, infoFromProto(req.Info), req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	return &api.UpdateSnapshotResponse{Info: infoToProto(info)}, nil
}

func (s *Service) List(req *api.ListSnapshotsRequest, stream api.Snapshots_ListServer) error {
	var (
		batch []*api.Info
		size  int
	)
	send := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&api.ListSnapshotsResponse{Info: batch})
		batch, size = nil, 0
		return err
	}
	err := s.sn.Walk(stream.Context(), func(ctx context.Context, info snapshots.Info) error {
		pi := infoToProto(info)
		batch = append(batch, pi)
		size += proto.Size(pi)
		if len(batch) >= listBatch || size >= listBatchBytes {
			return send()
		}
		return nil
	}, req.GetFilters()...)
	if err != nil {
		return err
	}
	return send()
}

func (s *Service) Usage(ctx context.Context, req *api.UsageRequest) (*api.UsageResponse, error) {
	u, err := s.sn.Usage(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	return &api.UsageResponse{Size: u.Size, Inodes: u.Inodes}, nil
}

func (s *Service) Cleanup(ctx context.Context, _ *api.CleanupRequest) (*emptypb.Empty, error) {
	c, ok := s.sn.(snapshots.Cleaner)
	if !ok {
		return nil, fmt.Errorf("snapshotter has no cleanup: %w", errdefs.ErrNotImplemented)
	}
	if err := c.Cleanup(ctx); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func kindToProto(k snapshots.Kind) api.Kind {
	switch k {
	case snapshots.KindActive:
		return api.Kind_ACTIVE
	case snapshots.KindView:
		return api.Kind_VIEW
	case snapshots.KindCommitted:
		return api.Kind_COMMITTED
	}
	return api.Kind_UNKNOWN
}

func kindFromProto(k api.Kind) snapshots.Kind {
	switch k {
	case api.Kind_ACTIVE:
		return snapshots.KindActive
	case api.Kind_VIEW:
		return snapshots.KindView
	case api.Kind_COMMITTED:
		return snapshots.KindCommitted
	}
	return snapshots.KindUnknown
}

func infoToProto(info snapshots.Info) *api.Info {
	return &api.Info{
		Name:      info.Name,
		Parent:    info.Parent,
		Kind:      kindToProto(info.Kind),
		CreatedAt: timestamppb.New(info.Created),
		UpdatedAt: timestamppb.New(info.Updated),
		Labels:    info.Labels,
	}
}

func infoFromProto(info *api.Info) snapshots.Info {
	out := snapshots.Info{
		Name:   info.GetName(),
		Parent: info.GetParent(),
		Kind:   kindFromProto(info.GetKind()),
		Labels: info.GetLabels(),
	}
	if info.CreatedAt != nil {
		out.Created = info.CreatedAt.AsTime()
	}
	if info.UpdatedAt != nil {
		out.Updated = info.UpdatedAt.AsTime()
	}
	return out
}
