package stats

import (
	"os"
	"path/filepath"
	"testing"
)

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

func TestPodStatsReadACgroupV2PodCgroup(t *testing.T) {
	root := fakeCgroup2(t, "kubepods/pod1", map[string]string{
		"cgroup.controllers": "cpu memory pids",
		"cpu.stat":           "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
		"memory.current":     "10485760\n",
		"memory.max":         "67108864\n",
		"memory.stat":        "anon 6291456\nfile 4194304\ninactive_file 2097152\nactive_file 1048576\npgfault 100\npgmajfault 4\n",
		"pids.current":       "3\n",
		"pids.max":           "max\n",
	})
	s, err := ReadCgroup2(root, "/kubepods/pod1")
	if err != nil {
		t.Fatal(err)
	}
	mem := s.Memory()
	if s.cpuNanos != 2_500_000_000 || s.memUsage != 10<<20 || mem.GetWorkingSetBytes().GetValue() != 8<<20 ||
		mem.GetRssBytes().GetValue() != 6<<20 || s.pids != 3 || mem.GetAvailableBytes().GetValue() != 56<<20 {
		t.Errorf("sample %+v, memory %v", s, mem)
	}
}
