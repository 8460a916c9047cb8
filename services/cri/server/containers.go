package server

import (
	"context"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/flotilla-project/flotilla/services/cri/container"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/streaming"
)

// The container lifecycle is package container's; these are the CRI
// methods it serves and what it asks of the server.

func (s *Server) CreateContainer(ctx context.Context, req *runtime.CreateContainerRequest) (*runtime.CreateContainerResponse, error) {
	return s.containers.CreateContainer(ctx, req)
}

func (s *Server) StartContainer(ctx context.Context, req *runtime.StartContainerRequest) (*runtime.StartContainerResponse, error) {
	return s.containers.StartContainer(ctx, req)
}

func (s *Server) StopContainer(ctx context.Context, req *runtime.StopContainerRequest) (*runtime.StopContainerResponse, error) {
	return s.containers.StopContainer(ctx, req)
}

func (s *Server) RemoveContainer(ctx context.Context, req *runtime.RemoveContainerRequest) (*runtime.RemoveContainerResponse, error) {
	return s.containers.RemoveContainer(ctx, req)
}

func (s *Server) ContainerStatus(ctx context.Context, req *runtime.ContainerStatusRequest) (*runtime.ContainerStatusResponse, error) {
	return s.containers.ContainerStatus(ctx, req)
}

func (s *Server) ListContainers(ctx context.Context, req *runtime.ListContainersRequest) (*runtime.ListContainersResponse, error) {
	return s.containers.ListContainers(ctx, req)
}

func (s *Server) ExecSync(ctx context.Context, req *runtime.ExecSyncRequest) (*runtime.ExecSyncResponse, error) {
	return s.containers.ExecSync(ctx, req)
}

func (s *Server) UpdateContainerResources(ctx context.Context, req *runtime.UpdateContainerResourcesRequest) (*runtime.UpdateContainerResourcesResponse, error) {
	return s.containers.UpdateContainerResources(ctx, req)
}

func (s *Server) ReopenContainerLog(ctx context.Context, req *runtime.ReopenContainerLogRequest) (*runtime.ReopenContainerLogResponse, error) {
	return s.containers.ReopenContainerLog(ctx, req)
}

// Recover gives the containers running when this process started their
// exit watchers and log writers back; see container.Service.Recover.
func (s *Server) Recover(ctx context.Context) { s.containers.Recover(ctx) }

// Close stops the exit watchers and the streaming server; the containers
// run on.
func (s *Server) Close() {
	s.stop()
	s.stopStreaming()
}

// exitHooks are what the exit watchers ask of the server.
type exitHooks struct{ s *Server }

func (h exitHooks) OOMKilled(ctx context.Context, id string) bool { return h.s.oomKilled(ctx, id) }

func (h exitHooks) Exited(ctx context.Context, id string, code int32, at time.Time, oom bool) {
	h.s.containers.RecordExit(ctx, id, code, at, oom)
	h.s.nriContainerExited(ctx, id)
}

// containerPods are the server's pods as package container sees them.
type containerPods struct{ s *Server }

func (p containerPods) CreatedSandbox(ctx context.Context, id string) (*store.Sandbox, error) {
	return p.s.pods.Created(ctx, id)
}

func (p containerPods) SandboxReady(ctx context.Context, id string) (bool, uint32) {
	return p.s.pods.Ready(ctx, id)
}

func (p containerPods) SandboxDir(id string) string         { return p.s.pods.Dir(id) }
func (p containerPods) SandboxShm(sb *store.Sandbox) string { return p.s.pods.Shm(sb) }

// containerHooks are NRI's hooks (nri.go) and the server's per-container
// state as package container sees them.
type containerHooks struct{ s *Server }

func (h containerHooks) CreateHook(sb *store.Sandbox, m *store.Container) container.CreateHook {
	return h.s.nriCreateHook(sb, m)
}

func (h containerHooks) StartContainer(ctx context.Context, m *store.Container, rec containers.Container) error {
	return h.s.nriStartContainer(ctx, m, rec)
}

func (h containerHooks) PostStartContainer(ctx context.Context, m *store.Container, rec containers.Container) {
	h.s.nriPostStartContainer(ctx, m, rec)
}

func (h containerHooks) StopContainer(ctx context.Context, id string) { h.s.nriStopContainer(ctx, id) }
func (h containerHooks) RemoveContainer(ctx context.Context, id string) {
	h.s.nriRemoveContainer(ctx, id)
}

func (h containerHooks) UpdateContainer(ctx context.Context, id string, r *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error) {
	return h.s.nriUpdateContainer(ctx, id, r)
}

func (h containerHooks) PostUpdateContainer(ctx context.Context, id string) {
	h.s.nriPostUpdateContainer(ctx, id)
}

func (h containerHooks) AttachPoint(m *store.Container) *streaming.AttachPoint {
	return h.s.newAttachPoint(m)
}

func (h containerHooks) Forget(id string) { h.s.forget(id) }
