package contentserver

import (
	"context"
	"errors"
	"fmt"
	"io"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Write is one ingest session. The first message names the ref (and may
// declare the expected total and digest); the writer it opens holds the ref
// until the stream ends, so a second session on the same ref fails with
// Unavailable. Each message is answered once: STAT with the ingest's status,
// WRITE with the new offset, COMMIT with the committed size and digest, after
// which the session ends. Data goes straight from the request to the file.
func (s *Service) Write(stream api.Content_WriteServer) error {
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	sess, err := s.openSession(ctx, req)
	if err != nil {
		return err
	}
	defer sess.close()
	for {
		resp, err := sess.handle(ctx, req)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		if req.Action == api.WriteAction_COMMIT {
			return nil
		}
		req, err = stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

type writeSession struct {
	store    content.Store
	w        content.Writer
	ref      string
	total    int64
	expected digest.Digest
	// offset is where the ingest stands, once known: asking the writer
	// for every chunk would cost a round trip per chunk when the writer is
	// itself remote (the metadata service's is).
	offset      int64
	offsetKnown bool
}

func (s *Service) openSession(ctx context.Context, req *api.WriteContentRequest) (*writeSession, error) {
	if req.Ref == "" {
		return nil, fmt.Errorf("first write message must name a ref: %w", errdefs.ErrInvalidArgument)
	}
	if req.Total < 0 {
		return nil, fmt.Errorf("ref %q: negative total %d: %w", req.Ref, req.Total, errdefs.ErrInvalidArgument)
	}
	expected, err := parseExpected(req.Expected)
	if err != nil {
		return nil, err
	}
	w, err := s.store.Writer(ctx, content.WithRef(req.Ref),
		content.WithDescriptor(ocispec.Descriptor{Size: req.Total, Digest: expected}))
	if err != nil {
		return nil, err
	}
	return &writeSession{store: s.store, w: w, ref: req.Ref, total: req.Total, expected: expected}, nil
}

func (ws *writeSession) close() {
	if ws.w != nil {
		ws.w.Close()
	}
}

func (ws *writeSession) handle(ctx context.Context, req *api.WriteContentRequest) (*api.WriteContentResponse, error) {
	if req.Ref != "" && req.Ref != ws.ref {
		return nil, fmt.Errorf("write session of ref %q got a message for ref %q: %w", ws.ref, req.Ref, errdefs.ErrInvalidArgument)
	}
	if req.Total < 0 {
		return nil, fmt.Errorf("ref %q: negative total %d: %w", ws.ref, req.Total, errdefs.ErrInvalidArgument)
	}
	if req.Expected != "" {
		d, err := parseExpected(req.Expected)
		if err != nil {
			return nil, err
		}
		ws.expected = d
		if _, err := ws.store.Info(ctx, d); err == nil {
			// As containerd: the content is already here, so the ingest is
			// of no further use to anyone.
			ws.w.Close()
			ws.w = nil
			if err := ws.store.Abort(ctx, ws.ref); err != nil && !errdefs.IsNotFound(err) {
				return nil, fmt.Errorf("ref %q: abort after finding %s: %w", ws.ref, d, err)
			}
			return nil, fmt.Errorf("content %s: %w", d, errdefs.ErrAlreadyExists)
		}
	}
	if req.Total > 0 {
		ws.total = req.Total
	}

	resp := &api.WriteContentResponse{Action: req.Action}
	switch req.Action {
	case api.WriteAction_STAT:
		st, err := ws.w.Status()
		if err != nil {
			return nil, err
		}
		ws.offset, ws.offsetKnown = st.Offset, true
		resp.Offset = st.Offset
		resp.Total = ws.total
		if resp.Total == 0 {
			resp.Total = st.Total
		}
		resp.Digest = ws.w.Digest().String()
		resp.StartedAt = timestamppb.New(st.StartedAt)
		resp.UpdatedAt = timestamppb.New(st.UpdatedAt)
		return resp, nil

	case api.WriteAction_WRITE, api.WriteAction_COMMIT:
		if !ws.offsetKnown {
			st, err := ws.w.Status()
			if err != nil {
				return nil, err
			}
			ws.offset, ws.offsetKnown = st.Offset, true
		}
		offset := ws.offset
		switch {
		case req.Offset < 0:
			return nil, fmt.Errorf("ref %q: negative offset %d: %w", ws.ref, req.Offset, errdefs.ErrInvalidArgument)
		case req.Offset > 0 && req.Offset != offset:
			return nil, fmt.Errorf("ref %q: write at %d must be at the current offset %d: %w", ws.ref, req.Offset, offset, errdefs.ErrOutOfRange)
		case req.Offset == 0 && offset > 0:
			// containerd's protocol: offset 0 restarts the ingest. A
			// client's Truncate(0) travels this way.
			if err := ws.w.Truncate(0); err != nil {
				return nil, err
			}
			offset = 0
		}
		if len(req.Data) > 0 {
			n, err := ws.w.Write(req.Data)
			if err != nil {
				return nil, err
			}
			if n != len(req.Data) {
				return nil, fmt.Errorf("ref %q: wrote %d of %d bytes: %w", ws.ref, n, len(req.Data), errdefs.ErrDataLoss)
			}
			offset += int64(n)
		}
		ws.offset = offset
		if req.Action == api.WriteAction_COMMIT {
			var opts []content.Opt
			if req.Labels != nil {
				opts = append(opts, content.WithLabels(req.Labels))
			}
			w := ws.w
			ws.w = nil // Commit closes it, whatever the outcome
			if err := w.Commit(ctx, ws.total, ws.expected, opts...); err != nil {
				return nil, err
			}
			resp.Digest = w.Digest().String()
		} else {
			resp.Digest = ws.w.Digest().String()
		}
		resp.Offset = offset
		resp.Total = ws.total
		return resp, nil
	}
	return nil, fmt.Errorf("ref %q: unknown write action %d: %w", ws.ref, req.Action, errdefs.ErrInvalidArgument)
}
