package spec

import (
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestMemorySwapFollowsTheLimit: as containerd, a memory limit without a
// swap limit sets memory+swap to the same (no swapping), an explicit swap
// limit wins, and neither is set where swap cannot be limited; an update
// that changes the limit alone moves swap with it.
func TestMemorySwapFollowsTheLimit(t *testing.T) {
	const mib = 1 << 20
	swapOK := swapControllerAvailable()
	swap := func(s *specs.Spec) int64 {
		if s.Linux.Resources.Memory == nil || s.Linux.Resources.Memory.Swap == nil {
			return 0
		}
		return *s.Linux.Resources.Memory.Swap
	}
	want := func(v int64) int64 {
		if !swapOK {
			return 0
		}
		return v
	}
	for name, tc := range map[string]struct {
		r    *runtime.LinuxContainerResources
		swap int64
	}{
		"limit alone":    {&runtime.LinuxContainerResources{MemoryLimitInBytes: 64 * mib}, want(64 * mib)},
		"limit and swap": {&runtime.LinuxContainerResources{MemoryLimitInBytes: 64 * mib, MemorySwapLimitInBytes: 128 * mib}, want(128 * mib)},
		"no limit":       {&runtime.LinuxContainerResources{CpuShares: 512}, 0},
	} {
		s := genSpec(t, withResources(tc.r))
		if got := swap(s); got != tc.swap {
			t.Errorf("%s: swap limit %d, want %d (swap controller: %v)", name, got, tc.swap, swapOK)
		}
	}

	s := genSpec(t, withResources(&runtime.LinuxContainerResources{MemoryLimitInBytes: 64 * mib}))
	if err := withResources(&runtime.LinuxContainerResources{MemoryLimitInBytes: 32 * mib})(nil, nil, nil, s); err != nil {
		t.Fatal(err)
	}
	if got := swap(s); got != want(32*mib) || *s.Linux.Resources.Memory.Limit != 32*mib {
		t.Errorf("after lowering the limit to 32MiB: limit %d, swap %d; want swap %d", *s.Linux.Resources.Memory.Limit, got, want(32*mib))
	}
}
