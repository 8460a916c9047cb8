package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/stats"
)

// CgroupResources is what the pod's cgroup gets: the containers'
// resources plus the pod's overhead, as the kubelet sizes a pod cgroup.
// Unset (zero) values are left as the cgroup has them; nil when nothing
// is set.
func CgroupResources(r, overhead *runtime.LinuxContainerResources) *specs.LinuxResources {
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

// UpdateCgroup writes res into the cgroupfs group path, of the host's
// cgroup version.
func UpdateCgroup(path string, res *specs.LinuxResources) error {
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
