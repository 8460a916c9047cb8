package sandbox

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// sandboxResourcesExtension holds, on a sandbox's record, the pod-level
// resources of its last UpdatePodSandboxResources: the request's overhead
// and resources, protobuf-encoded (as containerd keeps them in its
// sandbox's "updated resources" extension).
const sandboxResourcesExtension = "io.flotilla.cri.sandbox-resources.v1"

// UpdatePodSandboxResources is the kubelet's notice, after it resized the
// pod's cgroup for an in-place resize, of the pod's new resources. As in
// containerd the values are recorded on the sandbox; beyond containerd,
// whose pod cgroup the kubelet alone writes, they are written to the pod's
// cgroup parent too (resources plus overhead, what the kubelet writes
// there), so a client other than the kubelet resizes the pod as well. The
// containers' own cgroups change through UpdateContainerResources.
func (s *Service) UpdatePodSandboxResources(ctx context.Context, req *runtime.UpdatePodSandboxResourcesRequest) (*runtime.UpdatePodSandboxResourcesResponse, error) {
	ctx = withNamespace(ctx)
	sb, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	// NRI plugins hear of it first, as in containerd, and may refuse it.
	if err := s.hooks.UpdatePod(ctx, sb, req.GetOverhead(), req.GetResources()); err != nil {
		return nil, fmt.Errorf("NRI pod sandbox update of %s: %w", sb.ID, err)
	}
	rec := &runtime.UpdatePodSandboxResourcesRequest{Overhead: req.GetOverhead(), Resources: req.GetResources()}
	b, err := proto.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if _, err := s.client.ContainerService().Update(ctx, containers.Container{
		ID:         sb.ID,
		Extensions: map[string]typeurl.Any{sandboxResourcesExtension: &anypb.Any{TypeUrl: sandboxResourcesExtension, Value: b}},
	}, "extensions."+sandboxResourcesExtension); err != nil {
		return nil, fmt.Errorf("record resources of sandbox %s: %w", sb.ID, err)
	}
	if parent := sb.Config.GetLinux().GetCgroupParent(); parent != "" {
		if res := CgroupResources(req.GetResources(), req.GetOverhead()); res != nil {
			if err := UpdateCgroup(parent, res); err != nil {
				return nil, fmt.Errorf("resize cgroup %s of sandbox %s: %w", parent, sb.ID, err)
			}
			logging.G(ctx).Debug("pod cgroup resized", "sandbox", sb.ID, "cgroup", parent)
		}
	}
	s.hooks.PostUpdatePod(ctx, sb)
	return &runtime.UpdatePodSandboxResourcesResponse{}, nil
}

// sandboxResources is what the last UpdatePodSandboxResources recorded
// on a sandbox's record; nil before any.
func sandboxResources(rec containers.Container) (*runtime.UpdatePodSandboxResourcesRequest, error) {
	ext, ok := rec.Extensions[sandboxResourcesExtension]
	if !ok {
		return nil, nil
	}
	out := &runtime.UpdatePodSandboxResourcesRequest{}
	if err := proto.Unmarshal(ext.GetValue(), out); err != nil {
		return nil, fmt.Errorf("recorded resources of sandbox %s: %w", rec.ID, err)
	}
	return out, nil
}
