package diff

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/logging"
	layerspb "github.com/flotilla-project/flotilla/proto/layers/v1"
)

// StreamServer serves Flotilla's Layers API (flotilla.layers.v1.Layers):
// layer apply from the bytes the call carries, as the caller receives them,
// rather than from the content store. It needs no content store, so every
// snapshotter process serves it for its own snapshots.
type StreamServer struct {
	layerspb.UnimplementedLayersServer
}

// NewStreamServer returns the Layers API.
func NewStreamServer() *StreamServer { return &StreamServer{} }

// Register serves the Layers API on srv.
func (s *StreamServer) Register(srv grpc.ServiceRegistrar) {
	layerspb.RegisterLayersServer(srv, s)
}

// Apply unpacks the layer the stream carries onto the mounts its first
// message names. The blob's digest is checked once the client has sent it
// all; an apply that fails part way leaves its snapshot half-written for the
// caller to remove, as Diff.Apply does.
func (s *StreamServer) Apply(stream layerspb.Layers_ApplyServer) error {
	start := time.Now()
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("apply: no layer descriptor: %w", errdefs.ErrInvalidArgument)
		}
		return err
	}
	if first.GetLayer() == nil {
		return fmt.Errorf("apply: no layer descriptor: %w", errdefs.ErrInvalidArgument)
	}
	desc := descriptorFromProto(first.GetLayer())
	mounts := mount.FromProto(first.GetMounts())
	if err := checkLayer(desc, mounts); err != nil {
		return err
	}
	src := &requestReader{stream: stream, buf: first.GetData()}
	applied, err := applyBlob(ctx, desc, mounts, src, diff.ApplyConfig{SyncFs: first.GetSyncFs()})
	if err != nil {
		return err
	}
	if desc.Size > 0 && src.n != desc.Size {
		return fmt.Errorf("layer %s: %d bytes sent, its descriptor says %d: %w", desc.Digest, src.n, desc.Size, errdefs.ErrFailedPrecondition)
	}
	logging.G(ctx).Debug("layer applied from stream", "digest", desc.Digest, "diff_id", applied.Digest,
		"media_type", desc.MediaType, "size", src.n, "duration", time.Since(start))
	return stream.SendAndClose(&layerspb.ApplyResponse{Applied: descriptorToProto(applied)})
}

// requestReader reads the blob bytes of an Apply stream.
type requestReader struct {
	stream layerspb.Layers_ApplyServer
	buf    []byte
	n      int64
	err    error
}

func (r *requestReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		req, err := r.stream.Recv()
		if err != nil {
			r.err = err
			continue
		}
		if req.GetLayer() != nil || len(req.GetMounts()) > 0 {
			r.err = fmt.Errorf("apply: layer and mounts come in the first message only: %w", errdefs.ErrInvalidArgument)
			continue
		}
		r.buf = req.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.n += int64(n)
	return n, nil
}
