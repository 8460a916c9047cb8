package server

import (
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/container/spec"
)

// RuntimeConfig reports the cgroup driver: cgroupfs, the only one the cri
// service builds cgroup paths for.
func (s *Server) RuntimeConfig(context.Context, *runtime.RuntimeConfigRequest) (*runtime.RuntimeConfigResponse, error) {
	return &runtime.RuntimeConfigResponse{Linux: &runtime.LinuxRuntimeConfiguration{
		CgroupDriver: runtime.CgroupDriver_CGROUPFS,
	}}, nil
}

// UpdateRuntimeConfig accepts the node's pod CIDR. The CNI configuration
// on disk decides pod addresses, so there is nothing to change.
func (s *Server) UpdateRuntimeConfig(ctx context.Context, req *runtime.UpdateRuntimeConfigRequest) (*runtime.UpdateRuntimeConfigResponse, error) {
	if cidr := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr(); cidr != "" {
		logging.G(ctx).Debug("pod CIDR from the kubelet, CNI configuration decides", "cidr", cidr)
	}
	return &runtime.UpdateRuntimeConfigResponse{}, nil
}

// UpdateContainerResources changes a container's CPU and memory
// resources: in its running task's cgroup (runc update through the shim),
// then in its spec and record, so that a later start, status or restart
// of the cri process sees the new values.
func (s *Server) UpdateContainerResources(ctx context.Context, req *runtime.UpdateContainerResourcesRequest) (*runtime.UpdateContainerResourcesResponse, error) {
	ctx = withNamespace(ctx)
	if req.GetLinux() == nil {
		return &runtime.UpdateContainerResourcesResponse{}, nil
	}
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	// NRI plugins may change what is applied.
	r, err := s.nriUpdateContainer(ctx, m.ID, req.GetLinux())
	if err != nil {
		return nil, err
	}
	if err := s.updateContainerResources(ctx, m.ID, r); err != nil {
		return nil, err
	}
	s.nriPostUpdateContainer(ctx, m.ID)
	return &runtime.UpdateContainerResourcesResponse{}, nil
}

// updateContainerResources is UpdateContainerResources without NRI: also
// what NRI plugins' own updates go through.
func (s *Server) updateContainerResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error {
	m, _, err := s.store.Container(ctx, id)
	if err != nil {
		return err
	}
	unlock := s.store.Lock(m.ID)
	defer unlock()
	// Again under the lock: a start or exit may have rewritten it.
	m, _, err = s.store.Container(ctx, m.ID)
	if err != nil {
		return err
	}
	c, err := s.client.LoadContainer(ctx, m.ID)
	if err != nil {
		return err
	}
	sp, err := c.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec of container %s: %w", m.ID, err)
	}
	for _, opt := range spec.Update(r) {
		if err := opt(ctx, nil, nil, sp); err != nil {
			return err
		}
	}
	if state, _, _ := s.containerState(ctx, m); state == runtime.ContainerState_CONTAINER_RUNNING {
		task, err := c.Task(ctx, nil)
		if err != nil {
			return fmt.Errorf("task of container %s: %w", m.ID, err)
		}
		if err := task.Update(ctx, containerd.WithResources(sp.Linux.Resources)); err != nil {
			return fmt.Errorf("update resources of container %s: %w", m.ID, err)
		}
	}
	specAny, err := typeurl.MarshalAnyToProto(sp)
	if err != nil {
		return err
	}
	if _, err := s.client.ContainerService().Update(ctx, containers.Container{ID: m.ID, Spec: specAny}, "spec"); err != nil {
		return fmt.Errorf("record spec of container %s: %w", m.ID, err)
	}
	cfg := proto.Clone(m.Config).(*runtime.ContainerConfig)
	if cfg.Linux == nil {
		cfg.Linux = &runtime.LinuxContainerConfig{}
	}
	cfg.Linux.Resources = r
	if m.RawConfig, err = proto.Marshal(cfg); err != nil {
		return err
	}
	m.Config = cfg
	if err := s.store.SaveContainer(ctx, m); err != nil {
		return err
	}
	return nil
}

// ReopenContainerLog closes a running container's log file and opens its
// path again: the kubelet renames the file to rotate it, then asks for
// this so that new lines go to a new file.
func (s *Server) ReopenContainerLog(ctx context.Context, req *runtime.ReopenContainerLogRequest) (*runtime.ReopenContainerLogResponse, error) {
	ctx = withNamespace(ctx)
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if state, _, _ := s.containerState(ctx, m); state != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is not running: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	lg := s.exits.Log(m.ID)
	if lg == nil || lg.File() == nil {
		return nil, fmt.Errorf("container %s has no log this process writes: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	if err := lg.File().Reopen(); err != nil {
		return nil, err
	}
	return &runtime.ReopenContainerLogResponse{}, nil
}
