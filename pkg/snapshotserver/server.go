// Package snapshotserver serves containerd's Snapshots API
// (containerd.services.snapshots.v1.Snapshots) over snapshots.Snapshotter
// implementations. A snapshotter process serves its one snapshotter, raw and
// without namespaces — exactly what a containerd proxy snapshotter serves,
// so containerd can use it as a proxy_plugins entry and Flotilla can use any
// proxy snapshotter in its place; such a server ignores the request's
// snapshotter name, as proxy plugins do. The metadata service serves the
// namespaced API, picking the snapshotter by the request's name. Errors are
// errdefs sentinels; the process's gRPC server maps them to status codes.
package snapshotserver

import (
	"context"
	"fmt"

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

// Service is the Snapshots API over snapshotters picked by name.
type Service struct {
	api.UnimplementedSnapshotsServer
	pick func(name string) (snapshots.Snapshotter, error)
}

// New serves sn, whatever name a request gives.
func New(sn snapshots.Snapshotter) *Service {
	return NewPicking(func(string) (snapshots.Snapshotter, error) { return sn, nil })
}

// NewPicking serves the snapshotter pick returns for each request's name.
func NewPicking(pick func(name string) (snapshots.Snapshotter, error)) *Service {
	return &Service{pick: pick}
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
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	mounts, err := sn.Prepare(ctx, req.GetKey(), req.GetParent(), withLabels(req.GetLabels())...)
	if err != nil {
		return nil, err
	}
	return &api.PrepareSnapshotResponse{Mounts: mount.ToProto(mounts)}, nil
}

func (s *Service) View(ctx context.Context, req *api.ViewSnapshotRequest) (*api.ViewSnapshotResponse, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	mounts, err := sn.View(ctx, req.GetKey(), req.GetParent(), withLabels(req.GetLabels())...)
	if err != nil {
		return nil, err
	}
	return &api.ViewSnapshotResponse{Mounts: mount.ToProto(mounts)}, nil
}

func (s *Service) Mounts(ctx context.Context, req *api.MountsRequest) (*api.MountsResponse, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	mounts, err := sn.Mounts(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	return &api.MountsResponse{Mounts: mount.ToProto(mounts)}, nil
}

func (s *Service) Commit(ctx context.Context, req *api.CommitSnapshotRequest) (*emptypb.Empty, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	opts := withLabels(req.GetLabels())
	if req.GetParent() != "" {
		opts = append(opts, snapshots.WithParent(req.GetParent()))
	}
	if err := sn.Commit(ctx, req.GetName(), req.GetKey(), opts...); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) Remove(ctx context.Context, req *api.RemoveSnapshotRequest) (*emptypb.Empty, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	if err := sn.Remove(ctx, req.GetKey()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) Stat(ctx context.Context, req *api.StatSnapshotRequest) (*api.StatSnapshotResponse, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	info, err := sn.Stat(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	return &api.StatSnapshotResponse{Info: infoToProto(info)}, nil
}

func (s *Service) Update(ctx context.Context, req *api.UpdateSnapshotRequest) (*api.UpdateSnapshotResponse, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	if req.GetInfo() == nil {
		return nil, fmt.Errorf("update without info: %w", errdefs.ErrInvalidArgument)
	}
	info, err := sn.Update(ctx, infoFromProto(req.Info), req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	return &api.UpdateSnapshotResponse{Info: infoToProto(info)}, nil
}

func (s *Service) List(req *api.ListSnapshotsRequest, stream api.Snapshots_ListServer) error {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return err
	}
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
	err = sn.Walk(stream.Context(), func(ctx context.Context, info snapshots.Info) error {
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
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	u, err := sn.Usage(ctx, req.GetKey())
	if err != nil {
		return nil, err
	}
	return &api.UsageResponse{Size: u.Size, Inodes: u.Inodes}, nil
}

func (s *Service) Cleanup(ctx context.Context, req *api.CleanupRequest) (*emptypb.Empty, error) {
	sn, err := s.pick(req.GetSnapshotter())
	if err != nil {
		return nil, err
	}
	c, ok := sn.(snapshots.Cleaner)
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
