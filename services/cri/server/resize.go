package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/stats"
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
func (s *Server) UpdatePodSandboxResources(ctx context.Context, req *runtime.UpdatePodSandboxResourcesRequest) (*runtime.UpdatePodSandboxResourcesResponse, error) {
	ctx = withNamespace(ctx)
	sb, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
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
		res := podCgroupResources(req.GetResources(), req.GetOverhead())
		if res == nil {
			return &runtime.UpdatePodSandboxResourcesResponse{}, nil
		}
		if err := updateCgroup(parent, res); err != nil {
			return nil, fmt.Errorf("resize cgroup %s of sandbox %s: %w", parent, sb.ID, err)
		}
		logging.G(ctx).Debug("pod cgroup resized", "sandbox", sb.ID, "cgroup", parent)
	}
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

// podCgroupResources is what the pod's cgroup gets: the containers'
// resources plus the pod's overhead, as the kubelet sizes a pod cgroup.
// Unset (zero) values are left as the cgroup has them; nil when nothing
// is set.
func podCgroupResources(r, overhead *runtime.LinuxContainerResources) *specs.LinuxResources {
	var out specs.LinuxResources
	if shares := r.GetCpuShares() + overhead.GetCpuShares(); shares > 0 {
		v := uint64(shares)
		out.CPU = &specs.LinuxCPU{Shares: &v}
	}
	if r.GetCpuQuota() > 0 {
		period := r.GetCpuPeriod()
		if period <= 0 {
			period = 100000 // the kernel's default CFS period
		}
		quota := r.GetCpuQuota()
		if oq := overhead.GetCpuQuota(); oq > 0 {
			// The overhead's quota in the resources' period.
			op := overhead.GetCpuPeriod()
			if op <= 0 {
				op = 100000
			}
			quota += oq * period / op
		}
		if out.CPU == nil {
			out.CPU = &specs.LinuxCPU{}
		}
		p := uint64(period)
		out.CPU.Quota, out.CPU.Period = &quota, &p
	}
	if r.GetMemoryLimitInBytes() > 0 {
		limit := r.GetMemoryLimitInBytes() + max(overhead.GetMemoryLimitInBytes(), 0)
		out.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	// cgroup v2 keys (cgroup v1 ignores them).
	if len(r.GetUnified()) > 0 {
		out.Unified = map[string]string{}
		for k, v := range r.GetUnified() {
			out.Unified[k] = v
		}
	}
	if out.CPU == nil && out.Memory == nil && out.Unified == nil {
		return nil
	}
	return &out
}

// updateCgroup writes res into the cgroupfs group path, of the host's
// cgroup version.
func updateCgroup(path string, res *specs.LinuxResources) error {
	if cgroups.Mode() == cgroups.Unified {
		return updateCgroup2(stats.CgroupRoot, path, res)
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		if errdefs.IsNotFound(err) || err == cgroup1.ErrCgroupDeleted {
			return fmt.Errorf("no cgroup %s: %w", path, errdefs.ErrFailedPrecondition)
		}
		return err
	}
	return cg.Update(res)
}

// updateCgroup2 writes res into the cgroup v2 group path of the hierarchy
// mounted at root.
func updateCgroup2(root, path string, res *specs.LinuxResources) error {
	m, err := cgroup2.Load(path, cgroup2.WithMountpoint(root))
	if err != nil {
		return err
	}
	if err := m.Update(cgroup2.ToResources(res)); err != nil {
		return err
	}
	// Unified keys are cgroup v2 interface files, written as given (the
	// library's resources do not carry them).
	for k, v := range res.Unified {
		if k == "" || k != filepath.Base(k) || strings.HasPrefix(k, ".") {
			return fmt.Errorf("unified cgroup key %q: %w", k, errdefs.ErrInvalidArgument)
		}
		if err := os.WriteFile(filepath.Join(root, path, k), []byte(v), 0); err != nil {
			return fmt.Errorf("unified cgroup key %s: %w", k, err)
		}
	}
	return nil
}
