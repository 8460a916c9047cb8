package stats

import (
	"strings"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
)

func TestShimMetricsOfEitherCgroupVersionBecomeStats(t *testing.T) {
	at := time.Unix(100, 0)
	for _, tc := range []struct {
		name    string
		metrics any
	}{
		{"cgroup v1", &v1stats.Metrics{
			CPU:    &v1stats.CPUStat{Usage: &v1stats.CPUUsage{Total: 5_000_000}},
			Memory: &v1stats.MemoryStat{Usage: &v1stats.MemoryEntry{Usage: 10 << 20, Limit: 1<<63 - 4096}, TotalInactiveFile: 2 << 20, TotalRSS: 6 << 20},
			Pids:   &v1stats.PidsStat{Current: 3},
		}},
		{"cgroup v2", &v2stats.Metrics{
			CPU:    &v2stats.CPUStat{UsageUsec: 5000},
			Memory: &v2stats.MemoryStat{Usage: 10 << 20, UsageLimit: 1<<63 - 1, InactiveFile: 2 << 20, Anon: 6 << 20},
			Pids:   &v2stats.PidsStat{Current: 3},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := typeurl.MarshalAnyToProto(tc.metrics)
			if err != nil {
				t.Fatal(err)
			}
			s, err := sampleFromMetrics(a, at)
			if err != nil {
				t.Fatal(err)
			}
			mem := s.Memory()
			if s.cpuNanos != 5_000_000 || mem.GetWorkingSetBytes().GetValue() != 8<<20 || mem.GetRssBytes().GetValue() != 6<<20 || s.pids != 3 {
				t.Fatalf("sample %+v, memory %v", s, mem)
			}
			if mem.AvailableBytes != nil {
				t.Errorf("an unlimited cgroup reports available bytes %v", mem.AvailableBytes)
			}
		})
	}
}

func TestNanoCoresComeFromTwoSamples(t *testing.T) {
	r := NewCPURates()
	t0 := time.Unix(100, 0)
	if v := r.NanoCores("c", Sample{at: t0, cpuNanos: 1e9}); v != nil {
		t.Fatalf("first sample has a rate: %d", *v)
	}
	// Half a CPU over two seconds.
	v := r.NanoCores("c", Sample{at: t0.Add(2 * time.Second), cpuNanos: 2e9})
	if v == nil || *v != 5e8 {
		t.Fatalf("nano-cores %v, want 5e8", v)
	}
}

func TestNetDevCountsPodInterfacesButLoopback(t *testing.T) {
	const netDev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    1500      12    1    0    0     0          0         0      700       7    2    0    0     0       0          0
`
	n, err := parseNetDev(strings.NewReader(netDev), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Interfaces) != 1 || n.DefaultInterface.GetName() != "eth0" {
		t.Fatalf("interfaces %v", n.Interfaces)
	}
	d := n.DefaultInterface
	if d.RxBytes.Value != 1500 || d.RxErrors.Value != 1 || d.TxBytes.Value != 700 || d.TxErrors.Value != 2 {
		t.Fatalf("eth0 counters %v", d)
	}
}
