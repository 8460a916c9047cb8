package server

import (
	"context"

	"github.com/containerd/containerd/v2/core/containers"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/store"
)

// The pod lifecycle is package sandbox's; these are the CRI methods it
// serves and what it asks of the server.

func (s *Server) RunPodSandbox(ctx context.Context, req *runtime.RunPodSandboxRequest) (*runtime.RunPodSandboxResponse, error) {
	return s.pods.RunPodSandbox(ctx, req)
}

func (s *Server) StopPodSandbox(ctx context.Context, req *runtime.StopPodSandboxRequest) (*runtime.StopPodSandboxResponse, error) {
	return s.pods.StopPodSandbox(ctx, req)
}

func (s *Server) RemovePodSandbox(ctx context.Context, req *runtime.RemovePodSandboxRequest) (*runtime.RemovePodSandboxResponse, error) {
	return s.pods.RemovePodSandbox(ctx, req)
}

func (s *Server) PodSandboxStatus(ctx context.Context, req *runtime.PodSandboxStatusRequest) (*runtime.PodSandboxStatusResponse, error) {
	return s.pods.PodSandboxStatus(ctx, req)
}

func (s *Server) ListPodSandbox(ctx context.Context, req *runtime.ListPodSandboxRequest) (*runtime.ListPodSandboxResponse, error) {
	return s.pods.ListPodSandbox(ctx, req)
}

func (s *Server) UpdatePodSandboxResources(ctx context.Context, req *runtime.UpdatePodSandboxResourcesRequest) (*runtime.UpdatePodSandboxResourcesResponse, error) {
	return s.pods.UpdatePodSandboxResources(ctx, req)
}

// podHooks are NRI's hooks (nri.go), the Sandbox Store's records
// (sandboxapi.go) and the server's per-pod state as package sandbox sees
// them.
type podHooks struct{ s *Server }

func (h podHooks) RunPod(ctx context.Context, m *store.Sandbox, rec containers.Container) error {
	return h.s.nriRunPod(ctx, m, rec)
}

func (h podHooks) StopPod(ctx context.Context, m *store.Sandbox) { h.s.nriStopPod(ctx, m) }
func (h podHooks) UpdatePod(ctx context.Context, m *store.Sandbox, overhead, resources *runtime.LinuxContainerResources) error {
	return h.s.nriUpdatePod(ctx, m, overhead, resources)
}
func (h podHooks) PostUpdatePod(ctx context.Context, m *store.Sandbox) { h.s.nriPostUpdatePod(ctx, m) }
func (h podHooks) RemovePod(ctx context.Context, m *store.Sandbox)     { h.s.nriRemovePod(ctx, m) }

func (h podHooks) CreatePodRecord(ctx context.Context, rec containers.Container) error {
	return h.s.createPodRecord(ctx, rec)
}

func (h podHooks) RefreshPodRecord(ctx context.Context, id string) error {
	return h.s.refreshPodRecord(ctx, id)
}

func (h podHooks) DeletePodRecord(ctx context.Context, id string) error {
	return h.s.deletePodRecord(ctx, id)
}

func (h podHooks) Forget(id string) { h.s.forget(id) }
