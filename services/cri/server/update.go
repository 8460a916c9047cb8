package server

import (
	"context"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
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
