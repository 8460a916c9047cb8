package diff

import (
	"context"
	"fmt"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Register serves the Diff API (containerd.services.diff.v1.Diff) on srv.
func (s *Service) Register(srv grpc.ServiceRegistrar) {
	diffapi.RegisterDiffServer(srv, &grpcServer{svc: s})
}

type grpcServer struct {
	diffapi.UnimplementedDiffServer
	svc *Service
}

func (g *grpcServer) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	if req.Diff == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply: no layer descriptor: %w", errdefs.ErrInvalidArgument))
	}
	ctx = forwardCallerContext(ctx)
	opts := []diff.ApplyOpt{diff.WithSyncFs(req.SyncFs)}
	if len(req.Payloads) > 0 {
		// Apply ignores them unless the layer needs a stream processor,
		// which it then refuses to apply without.
		payloads := make(map[string]typeurl.Any, len(req.Payloads))
		for k, v := range req.Payloads {
			payloads[k] = v
		}
		opts = append(opts, diff.WithPayloads(payloads))
	}
	applied, err := g.svc.Apply(ctx, descriptorFromProto(req.Diff), mount.FromProto(req.Mounts), opts...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &diffapi.ApplyResponse{Applied: descriptorToProto(applied)}, nil
}

func (g *grpcServer) Diff(ctx context.Context, req *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	ctx = forwardCallerContext(ctx)
	var opts []diff.Opt
	if req.MediaType != "" {
		opts = append(opts, diff.WithMediaType(req.MediaType))
	}
	if req.Ref != "" {
		opts = append(opts, diff.WithReference(req.Ref))
	}
	if req.Labels != nil {
		opts = append(opts, diff.WithLabels(req.Labels))
	}
	if req.SourceDateEpoch != nil {
		tm := req.SourceDateEpoch.AsTime()
		opts = append(opts, diff.WithSourceDateEpoch(&tm))
	}
	desc, err := g.svc.Compare(ctx, mount.FromProto(req.Left), mount.FromProto(req.Right), opts...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &diffapi.DiffResponse{Diff: descriptorToProto(desc)}, nil
}

// forwardCallerContext carries the caller's namespace and lease onto the
// calls the handler makes to the content store.
//
// In production the content store is containerd's core/content/proxy
// client talking to the metadata service's namespaced Content API on its
// socket. gRPC never copies incoming metadata to outgoing calls, so
// without this the content calls would arrive with no namespace (and be
// refused), and a blob written by Compare would belong to no lease and be
// garbage-collected before the caller could reference it.
// namespaces.WithNamespace and leases.WithLease set both the context value
// and the outgoing gRPC header (containerd-namespace, containerd-lease).
func forwardCallerContext(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(namespaces.GRPCHeader); len(v) > 0 && v[0] != "" {
		ctx = namespaces.WithNamespace(ctx, v[0])
	}
	if v := md.Get(leaseHeader); len(v) > 0 && v[0] != "" {
		ctx = leases.WithLease(ctx, v[0])
	}
	return ctx
}

// leaseHeader is the gRPC header containerd clients send their lease in
// (core/leases keeps its name unexported).
const leaseHeader = "containerd-lease"

func descriptorFromProto(d *types.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType:   d.MediaType,
		Digest:      digest.Digest(d.Digest),
		Size:        d.Size,
		Annotations: d.Annotations,
	}
}

func descriptorToProto(d ocispec.Descriptor) *types.Descriptor {
	return &types.Descriptor{
		MediaType:   d.MediaType,
		Digest:      d.Digest.String(),
		Size:        d.Size,
		Annotations: d.Annotations,
	}
}
