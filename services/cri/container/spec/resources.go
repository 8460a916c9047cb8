package spec

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func withResources(r *runtime.LinuxContainerResources) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		res := s.Linux.Resources
		if res.CPU == nil {
			res.CPU = &specs.LinuxCPU{}
		}
		if v := r.GetCpuShares(); v != 0 {
			shares := uint64(v)
			res.CPU.Shares = &shares
		}
		if v := r.GetCpuQuota(); v != 0 {
			res.CPU.Quota = &v
		}
		if v := r.GetCpuPeriod(); v != 0 {
			period := uint64(v)
			res.CPU.Period = &period
		}
		res.CPU.Cpus, res.CPU.Mems = r.GetCpusetCpus(), r.GetCpusetMems()
		limit, swap := r.GetMemoryLimitInBytes(), r.GetMemorySwapLimitInBytes()
		if limit != 0 || swap != 0 {
			if res.Memory == nil {
				res.Memory = &specs.LinuxMemory{}
			}
		}
		if limit != 0 {
			res.Memory.Limit = &limit
			// As containerd: memory and memory+swap limits alike keep
			// a container from swapping unless it asks to.
			if swap == 0 && swapControllerAvailable() {
				res.Memory.Swap = &limit
			}
		}
		if swap != 0 && swapControllerAvailable() {
			res.Memory.Swap = &swap
		}
		return nil
	}
}

// swapControllerAvailable says whether containers' swap can be limited,
// looked up once as containerd does: cgroup v1's memory.memsw files (a
// kernel with swap accounting), or memory.swap.max in this process's own
// cgroup v2 group (the root has none). A runtime asked to limit swap
// where it cannot fails to start the container.
var swapControllerAvailable = sync.OnceValue(func() bool {
	p := "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"
	if cgroups.Mode() == cgroups.Unified {
		_, unified, err := cgroups.ParseCgroupFileUnified("/proc/self/cgroup")
		if err != nil {
			return false
		}
		p = filepath.Join("/sys/fs/cgroup", unified, "memory.swap.max")
	}
	_, err := os.Stat(p)
	return err == nil
})

// Update is what an update of a container's resources applies to its
// spec.
func Update(r *runtime.LinuxContainerResources) []oci.SpecOpts {
	return []oci.SpecOpts{withResources(r), withMoreResources(r)}
}

// withMoreResources sets what withResources leaves out and only an update
// asks for in practice: cgroup v2 unified keys.
func withMoreResources(r *runtime.LinuxContainerResources) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		res := s.Linux.Resources
		if len(r.GetUnified()) > 0 {
			res.Unified = map[string]string{}
			for k, v := range r.GetUnified() {
				res.Unified[k] = v
			}
		}
		return nil
	}
}

// oomScoreAdj sets a process's oom_score_adj, raised to the daemon's
// own when lowering it is not allowed: without CAP_SYS_RESOURCE runc
// fails to set a value below the current one. restrict is containerd's
// restrict_oom_score_adj: always raised.
func oomScoreAdj(adj int, restrict bool) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, spec *oci.Spec) error {
		if restrict || !hasCapSysResource() {
			if own, err := ownOOMScoreAdj(); err == nil && adj < own {
				adj = own
			}
		}
		if spec.Process == nil {
			spec.Process = &specs.Process{}
		}
		spec.Process.OOMScoreAdj = &adj
		return nil
	}
}

func ownOOMScoreAdj() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// hasCapSysResource reads the effective capability set of this process.
func hasCapSysResource() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			const capSysResource = 24
			return err == nil && caps&(1<<capSysResource) != 0
		}
	}
	return false
}
