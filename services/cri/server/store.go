package server

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/services/cri/store"
)

// createdSandbox is getSandbox answered from the record this process
// created when it has it: for CreateContainer, whose pod is usually one
// this process just ran.
func (s *Server) createdSandbox(ctx context.Context, id string) (*store.Sandbox, error) {
	if r, ok := s.store.Created(store.KindSandbox, id); ok {
		return store.DecodeSandbox(r.Record)
	}
	return s.getSandbox(ctx, id)
}

// getSandbox is the sandbox record by ID or unique prefix; a pod still
// being run is not found yet.
func (s *Server) getSandbox(ctx context.Context, id string) (*store.Sandbox, error) {
	c, err := s.store.Get(ctx, store.KindSandbox, id)
	if err != nil {
		return nil, err
	}
	if s.isStarting(c.ID) {
		return nil, fmt.Errorf("sandbox %s is being created: %w", c.ID, errdefs.ErrNotFound)
	}
	return store.DecodeSandbox(c)
}

// forget drops all that is kept of a removed object.
func (s *Server) forget(id string) {
	s.store.Forget(id)
	s.exits.Forget(id)
	rates.Forget(id)
}

func nanos(t time.Time) int64 { return t.UnixNano() }
