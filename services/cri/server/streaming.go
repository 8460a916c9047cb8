package server

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/streaming"
)

// Exec, Attach and PortForward are served by package streaming; this file
// is what it asks of the server's records.

// StartStreaming starts the streaming server on address:port ("0" picks a
// free port); the URLs Exec, Attach and PortForward return point at it.
func (s *Server) StartStreaming(address, port string) error {
	return s.streams.Start(s.bg, address, port)
}

// stopStreaming closes the streaming server's listener and idle
// connections; sessions already upgraded end with their processes.
func (s *Server) stopStreaming() { s.streams.Stop() }

// Exec prepares a streaming exec session and returns its URL.
func (s *Server) Exec(ctx context.Context, req *runtime.ExecRequest) (*runtime.ExecResponse, error) {
	return s.streams.Exec(withNamespace(ctx), req)
}

// Attach prepares a streaming attach session and returns its URL.
func (s *Server) Attach(ctx context.Context, req *runtime.AttachRequest) (*runtime.AttachResponse, error) {
	return s.streams.Attach(withNamespace(ctx), req)
}

// PortForward prepares a streaming port forward session and returns its
// URL.
func (s *Server) PortForward(ctx context.Context, req *runtime.PortForwardRequest) (*runtime.PortForwardResponse, error) {
	return s.streams.PortForward(withNamespace(ctx), req)
}

// newAttachPoint registers the attach point of a container about to
// start (or reattached after a restart), replacing any older one.
func (s *Server) newAttachPoint(m *store.Container) *streaming.AttachPoint {
	return s.streams.NewAttachPoint(m.ID, m.Config)
}

// streamContainers answers the streaming server's questions from the
// server's records. Its methods cannot live on Server, whose exported
// methods are the CRI.
type streamContainers struct{ s *Server }

var _ streaming.Containers = streamContainers{}

func (c streamContainers) RunningContainer(ctx context.Context, id string) (string, error) {
	m, _, err := c.s.store.Container(ctx, id)
	if err != nil {
		return "", err
	}
	if state, _, _ := c.s.containers.State(ctx, m); state != runtime.ContainerState_CONTAINER_RUNNING {
		return "", fmt.Errorf("container %s is not running: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	return m.ID, nil
}

func (c streamContainers) Sandbox(ctx context.Context, id string) (string, string, error) {
	sb, err := c.s.pods.Get(ctx, id)
	if err != nil {
		return "", "", err
	}
	return sb.ID, sb.NetNS, nil
}

func (c streamContainers) SandboxReady(ctx context.Context, id string) bool {
	ready, _ := c.s.pods.Ready(ctx, id)
	return ready
}

func (c streamContainers) Exited(id string) <-chan struct{} {
	return c.s.exits.Done(id)
}
