package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
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

// podState is what the cri process keeps in memory about running pods
// besides the store: exit watchers and log writers. All of it is rebuilt
// by Recover.
type podState struct {
	mu sync.Mutex
	// exits holds, per started container, a channel closed once its exit
	// has been recorded and its task deleted.
	exits map[string]chan struct{}
	// logs holds the log writer of each container whose output this
	// process writes, for ReopenContainerLog.
	logs map[string]*containerLog
	// ctx bounds the exit watchers and carries the process's logger;
	// cancelled when the process stops.
	ctx    context.Context
	cancel context.CancelFunc
}

func newPodState(ctx context.Context) podState {
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.WithoutCancel(ctx), Namespace))
	return podState{
		exits:  map[string]chan struct{}{},
		logs:   map[string]*containerLog{},
		ctx:    ctx,
		cancel: cancel,
	}
}

// forget drops all that is kept of a removed object.
func (s *Server) forget(id string) {
	s.store.Forget(id)
	s.pods.mu.Lock()
	delete(s.pods.exits, id)
	delete(s.pods.logs, id)
	s.pods.mu.Unlock()
	rates.Forget(id)
}

func nanos(t time.Time) int64 { return t.UnixNano() }
