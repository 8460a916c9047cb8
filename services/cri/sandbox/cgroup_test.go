package sandbox

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestPodCgroupGetsResourcesPlusOverhead(t *testing.T) {
	res := CgroupResources(
		&runtime.LinuxContainerResources{CpuShares: 1024, CpuQuota: 100000, CpuPeriod: 100000, MemoryLimitInBytes: 256 << 20},
		&runtime.LinuxContainerResources{CpuShares: 102, CpuQuota: 5000, CpuPeriod: 50000, MemoryLimitInBytes: 16 << 20},
	)
	if res == nil || res.CPU == nil || res.Memory == nil {
		t.Fatalf("resources %+v", res)
	}
	if *res.CPU.Shares != 1126 || *res.CPU.Quota != 110000 || *res.CPU.Period != 100000 || *res.Memory.Limit != 272<<20 {
		t.Errorf("shares %d quota %d period %d memory %d; want 1126, 110000 (the overhead's 5000/50000 in a 100000 period), 100000, 272 MiB",
			*res.CPU.Shares, *res.CPU.Quota, *res.CPU.Period, *res.Memory.Limit)
	}
	// Nothing set changes nothing: an unlimited pod stays as it is.
	if res := CgroupResources(&runtime.LinuxContainerResources{}, nil); res != nil {
		t.Errorf("empty resources give %+v, want nothing to write", res)
	}
}

// fakeCgroup2 lays out a cgroup v2 group in a temp dir as the kernel
// shows it, for a host that has no unified hierarchy (this one: v1).
func fakeCgroup2(t *testing.T, group string, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, group)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResizeWritesACgroupV2PodCgroup(t *testing.T) {
	root := fakeCgroup2(t, "kubepods/pod1", map[string]string{
		"cgroup.controllers": "cpu memory pids", "cpu.weight": "100", "cpu.max": "max 100000", "memory.max": "max",
	})
	res := CgroupResources(&runtime.LinuxContainerResources{CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: 128 << 20,
		Unified: map[string]string{"memory.high": "100000000"}}, nil)
	if err := updateCgroup2(root, "/kubepods/pod1", res); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root, "kubepods/pod1", name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	// cpu.weight is the shares converted as the cgroups library (and runc) do.
	weight := strconv.FormatUint(cgroup2.ConvertCPUSharesToCgroupV2Value(512), 10)
	for name, want := range map[string]string{"cpu.max": "50000 100000", "memory.max": "134217728", "cpu.weight": weight, "memory.high": "100000000"} {
		if got := read(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if err := updateCgroup2(root, "/kubepods/gone", res); err == nil {
		t.Error("resizing a cgroup that does not exist succeeded")
	}
}
