// Package server is containerd's Transfer API
// (containerd.services.transfer.v1.Transfer) over the transfer engine: it
// turns a request's source and destination into containerd's transfer types
// (core/transfer/image, archive, and a registry of its own, registry.go),
// wiring the streams they name (an archive's bytes, registry credentials)
// to the client's, and streams the engine's progress back.
package server

import (
	"context"
	"fmt"
	"sync"

	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	"github.com/containerd/containerd/api/types"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/streaming"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/archive"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Transferrer runs a transfer (the engine).
type Transferrer interface {
	Transfer(ctx context.Context, src, dst any, progress transfer.ProgressFunc) error
}

// Config is what the Transfer API adds to what a request says.
type Config struct {
	// HostDir is the directory of registry hosts.toml files used when a
	// request names none.
	HostDir string
}

// Server serves the Transfer API.
type Server struct {
	transferapi.UnimplementedTransferServer
	engine  Transferrer
	streams streaming.StreamGetter
	config  Config
}

// New returns the Transfer API over engine, finding the streams requests
// name in streams.
func New(engine Transferrer, streams streaming.StreamGetter, config Config) *Server {
	return &Server{engine: engine, streams: streams, config: config}
}

// Register serves the Transfer API on srv.
func (s *Server) Register(srv grpc.ServiceRegistrar) {
	transferapi.RegisterTransferServer(srv, s)
}

// Transfer runs the transfer a request describes; its progress goes to the
// progress stream the request names, if any.
func (s *Server) Transfer(ctx context.Context, req *transferapi.TransferRequest) (*emptypb.Empty, error) {
	ctx = callContext(ctx)
	// Every stream the transfer takes ends with it: the client's side of
	// each (a reader of credentials questions, say) then ends too.
	streams := &callStreams{StreamGetter: s.streams}
	defer streams.closeAll()
	var pf transfer.ProgressFunc
	if id := req.GetOptions().GetProgressStream(); id != "" {
		stream, err := streams.Get(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("progress stream: %w", err)
		}
		pf = func(p transfer.Progress) {
			var desc *types.Descriptor
			if p.Desc != nil {
				desc = oci.DescriptorToProto(*p.Desc)
			}
			a, err := typeurl.MarshalAny(&transfertypes.Progress{
				Event: p.Event, Name: p.Name, Parents: p.Parents,
				Progress: p.Progress, Total: p.Total, Desc: desc,
			})
			if err != nil {
				return
			}
			if err := stream.Send(a); err != nil {
				logging.G(ctx).Debug("progress not sent", "event", p.Event, "name", p.Name, "error", err)
			}
		}
	}
	src, err := s.decode(ctx, streams, req.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := s.decode(ctx, streams, req.GetDestination())
	if err != nil {
		return nil, err
	}
	if err := s.engine.Transfer(ctx, src, dst, pf); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// decode turns a transfer object of a request into its transfer type.
func (s *Server) decode(ctx context.Context, streams streaming.StreamGetter, a *anypb.Any) (any, error) {
	if a == nil {
		return nil, fmt.Errorf("transfer without a source or destination: %w", errdefs.ErrInvalidArgument)
	}
	switch {
	case a.MessageIs(&transfertypes.OCIRegistry{}):
		return newRegistry(ctx, a, streams, s.config.HostDir)
	case a.MessageIs(&transfertypes.ImageStore{}):
		var is image.Store
		return &is, is.UnmarshalAny(ctx, streams, a)
	case a.MessageIs(&transfertypes.ImageImportStream{}):
		var is archive.ImageImportStream
		return &is, is.UnmarshalAny(ctx, streams, a)
	case a.MessageIs(&transfertypes.ImageExportStream{}):
		var es archive.ImageExportStream
		return &es, es.UnmarshalAny(ctx, streams, a)
	}
	return nil, fmt.Errorf("transfer type %s: %w", a.GetTypeUrl(), errdefs.ErrNotImplemented)
}

// callStreams are the streams one transfer took.
type callStreams struct {
	streaming.StreamGetter
	mu  sync.Mutex
	got []streaming.Stream
}

func (c *callStreams) Get(ctx context.Context, id string) (streaming.Stream, error) {
	s, err := c.StreamGetter.Get(ctx, id)
	if err == nil {
		c.mu.Lock()
		c.got = append(c.got, s)
		c.mu.Unlock()
	}
	return s, err
}

func (c *callStreams) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.got {
		_ = s.Close()
	}
}

// callContext gives the context the namespace and lease the call names in
// its metadata, so that they travel with every call the transfer makes.
func callContext(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(namespaces.GRPCHeader); len(v) > 0 && v[0] != "" {
		ctx = namespaces.WithNamespace(ctx, v[0])
	}
	if v := md.Get(leaseHeader); len(v) > 0 && v[0] != "" {
		ctx = leases.WithLease(ctx, v[0])
	}
	return ctx
}

// leaseHeader is the gRPC header containerd clients send their lease in.
const leaseHeader = "containerd-lease"
