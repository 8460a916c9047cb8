// Package contentserver serves containerd's Content API
// (containerd.services.content.v1.Content) over a content.Store: raw in the
// content service, namespaced in metadata and in the content process's
// namespaced view. Errors are
// returned as errdefs sentinels; the process's gRPC server maps them to
// status codes.
package contentserver

import (
	"context"
	// go-digest only offers the algorithms whose hash is linked in; OCI's
	// registered sha384 and sha512 are accepted on this package's account.
	_ "crypto/sha512"
	"errors"
	"fmt"
	"io"
	"sync"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// readChunk is the data carried by one Read response.
	readChunk = 1 << 20
	// listBatch and listBatchBytes bound one List response: many small
	// messages cost round trips, one huge one could pass the 16 MiB limit
	// when labels are large.
	listBatch      = 100
	listBatchBytes = 1 << 20
)

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// Service is the Content API over a store.
type Service struct {
	api.UnimplementedContentServer
	store content.Store
}

// New serves store.
func New(store content.Store) *Service {
	return &Service{store: store}
}

// Register adds the Content API to srv.
func (s *Service) Register(srv grpc.ServiceRegistrar) { api.RegisterContentServer(srv, s) }

func (s *Service) Info(ctx context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	d, err := parseDigest(req.GetDigest())
	if err != nil {
		return nil, err
	}
	info, err := s.store.Info(ctx, d)
	if err != nil {
		return nil, err
	}
	return &api.InfoResponse{Info: infoToProto(info)}, nil
}

func (s *Service) Update(ctx context.Context, req *api.UpdateRequest) (*api.UpdateResponse, error) {
	if req.GetInfo() == nil {
		return nil, fmt.Errorf("update without info: %w", errdefs.ErrInvalidArgument)
	}
	d, err := parseDigest(req.Info.Digest)
	if err != nil {
		return nil, err
	}
	info, err := s.store.Update(ctx, content.Info{Digest: d, Labels: req.Info.Labels}, req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	return &api.UpdateResponse{Info: infoToProto(info)}, nil
}

func (s *Service) List(req *api.ListContentRequest, stream api.Content_ListServer) error {
	var (
		batch []*api.Info
		bytes int
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&api.ListContentResponse{Info: batch})
		batch, bytes = nil, 0
		return err
	}
	err := s.store.Walk(stream.Context(), func(info content.Info) error {
		pi := infoToProto(info)
		batch = append(batch, pi)
		bytes += proto.Size(pi)
		if len(batch) >= listBatch || bytes >= listBatchBytes {
			return flush()
		}
		return nil
	}, req.GetFilters()...)
	if err != nil {
		return err
	}
	return flush()
}

func (s *Service) Delete(ctx context.Context, req *api.DeleteContentRequest) (*emptypb.Empty, error) {
	d, err := parseDigest(req.GetDigest())
	if err != nil {
		return nil, err
	}
	if err := s.store.Delete(ctx, d); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Read streams size bytes of a blob from offset, in chunks of readChunk; a
// size of zero (or one past the end) reads to the end, as containerd does.
func (s *Service) Read(req *api.ReadContentRequest, stream api.Content_ReadServer) error {
	d, err := parseDigest(req.GetDigest())
	if err != nil {
		return err
	}
	ra, err := s.store.ReaderAt(stream.Context(), ocispec.Descriptor{Digest: d})
	if err != nil {
		return err
	}
	defer ra.Close()

	return SendRange(ra, ra.Size(), d, req.GetOffset(), req.GetSize(), stream.Send)
}

// SendRange sends size bytes of blob d (total bytes, read from ra) from
// offset as Read responses of readChunk each; a size of zero (or one past
// the end) sends to the end, as containerd does. A Read served from the
// blob's file anywhere (the gateway's) answers through it.
func SendRange(ra io.ReaderAt, total int64, d digest.Digest, offset, size int64, send func(*api.ReadContentResponse) error) error {
	offset = max(offset, 0)
	if offset > total {
		return fmt.Errorf("read of %s at %d past its %d bytes: %w", d, offset, total, errdefs.ErrOutOfRange)
	}
	remaining := size
	if remaining <= 0 || remaining > total-offset {
		remaining = total - offset
	}
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	buf := *bp
	for remaining > 0 {
		n, err := ra.ReadAt(buf[:min(remaining, int64(len(buf)))], offset)
		if n > 0 {
			// Send marshals before it returns, so buf is free again after.
			if serr := send(&api.ReadContentResponse{Offset: offset, Data: buf[:n]}); serr != nil {
				return serr
			}
			offset += int64(n)
			remaining -= int64(n)
		}
		if err != nil {
			if errors.Is(err, io.EOF) && remaining > 0 {
				return fmt.Errorf("read of %s: blob shorter than its %d bytes: %w", d, total, errdefs.ErrDataLoss)
			}
			if !errors.Is(err, io.EOF) {
				return fmt.Errorf("read of %s: %w", d, err)
			}
		}
	}
	return nil
}

func (s *Service) Status(ctx context.Context, req *api.StatusRequest) (*api.StatusResponse, error) {
	st, err := s.store.Status(ctx, req.GetRef())
	if err != nil {
		return nil, err
	}
	return &api.StatusResponse{Status: statusToProto(st)}, nil
}

func (s *Service) ListStatuses(ctx context.Context, req *api.ListStatusesRequest) (*api.ListStatusesResponse, error) {
	sts, err := s.store.ListStatuses(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	resp := &api.ListStatusesResponse{Statuses: make([]*api.Status, 0, len(sts))}
	for _, st := range sts {
		resp.Statuses = append(resp.Statuses, statusToProto(st))
	}
	return resp, nil
}

func (s *Service) Abort(ctx context.Context, req *api.AbortRequest) (*emptypb.Empty, error) {
	if err := s.store.Abort(ctx, req.GetRef()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func infoToProto(info content.Info) *api.Info {
	return &api.Info{
		Digest:    info.Digest.String(),
		Size:      info.Size,
		CreatedAt: timestamppb.New(info.CreatedAt),
		UpdatedAt: timestamppb.New(info.UpdatedAt),
		Labels:    info.Labels,
	}
}

func statusToProto(st content.Status) *api.Status {
	return &api.Status{
		Ref:       st.Ref,
		Offset:    st.Offset,
		Total:     st.Total,
		Expected:  st.Expected.String(),
		StartedAt: timestamppb.New(st.StartedAt),
		UpdatedAt: timestamppb.New(st.UpdatedAt),
	}
}

// parseDigest parses a digest received from a client. Only digests that
// name an available algorithm with a well-formed encoding pass, so a digest
// can never carry a path separator or "..".
func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("digest %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// parseExpected parses an optional digest.
func parseExpected(s string) (digest.Digest, error) {
	if s == "" {
		return "", nil
	}
	return parseDigest(s)
}
