package stats

import (
	"strings"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// metricValues indexes a set's series by name and extra label values.
func metricValues(t *testing.T, ms *MetricSet) map[string]uint64 {
	t.Helper()
	described := map[string]*runtime.MetricDescriptor{}
	for _, d := range metricDescriptors {
		described[d.Name] = d
	}
	out := map[string]uint64{}
	for _, m := range ms.out {
		d, ok := described[m.Name]
		if !ok {
			t.Errorf("series %s is not in ListMetricDescriptors: the kubelet would drop it", m.Name)
			continue
		}
		if len(m.LabelValues) != len(d.LabelKeys) {
			t.Errorf("series %s has label values %q for keys %q", m.Name, m.LabelValues, d.LabelKeys)
		}
		key := strings.Join(append([]string{m.Name}, m.LabelValues[len(baseLabelKeys):]...), "/")
		out[key] = m.Value.GetValue()
	}
	return out
}

func TestCgroupMetricsOfEitherVersionBecomeCAdvisorSeries(t *testing.T) {
	for _, tc := range []struct {
		name    string
		metrics any
		want    map[string]uint64
	}{
		{"cgroup v1", &v1stats.Metrics{
			CPU: &v1stats.CPUStat{
				Usage:      &v1stats.CPUUsage{Total: 3_500_000_000, User: 2_000_000_000, Kernel: 1_000_000_000},
				Throttling: &v1stats.Throttle{Periods: 7, ThrottledPeriods: 2, ThrottledTime: 1_000_000_000},
			},
			Memory: &v1stats.MemoryStat{
				Usage:             &v1stats.MemoryEntry{Usage: 10 << 20, Max: 12 << 20, Failcnt: 1},
				TotalInactiveFile: 2 << 20, TotalActiveFile: 1 << 20, TotalRSS: 6 << 20, TotalCache: 3 << 20,
				PgFault: 100, PgMajFault: 4,
			},
			MemoryOomControl: &v1stats.MemoryOomControl{OomKill: 1},
			Blkio: &v1stats.BlkIOStat{
				IoServiceBytesRecursive: []*v1stats.BlkIOEntry{{Op: "Read", Major: 8, Minor: 0, Value: 4096}, {Op: "Write", Major: 8, Minor: 0, Value: 8192}},
				IoServicedRecursive:     []*v1stats.BlkIOEntry{{Op: "Read", Major: 8, Minor: 0, Value: 1}, {Op: "Write", Major: 8, Minor: 0, Value: 2}},
			},
			Pids: &v1stats.PidsStat{Current: 3, Limit: 100},
		}, map[string]uint64{
			"container_cpu_usage_seconds_total":                    3,
			"container_cpu_user_seconds_total":                     2,
			"container_cpu_system_seconds_total":                   1,
			"container_cpu_cfs_periods_total":                      7,
			"container_cpu_cfs_throttled_periods_total":            2,
			"container_cpu_cfs_throttled_seconds_total":            1,
			"container_memory_usage_bytes":                         10 << 20,
			"container_memory_working_set_bytes":                   8 << 20,
			"container_memory_max_usage_bytes":                     12 << 20,
			"container_memory_rss":                                 6 << 20,
			"container_memory_cache":                               3 << 20,
			"container_memory_failcnt":                             1,
			"container_memory_failures_total/pgmajfault/container": 4,
			"container_oom_events_total":                           1,
			"container_fs_reads_bytes_total/8:0":                   4096,
			"container_fs_writes_bytes_total/8:0":                  8192,
			"container_fs_reads_total/8:0":                         1,
			"container_fs_writes_total/8:0":                        2,
			"container_blkio_device_usage_total/8:0/8/0/Write":     8192,
			"container_processes":                                  3,
			"container_threads_max":                                100,
		}},
		{"cgroup v2", &v2stats.Metrics{
			CPU: &v2stats.CPUStat{UsageUsec: 3_500_000, UserUsec: 2_000_000, SystemUsec: 1_000_000, NrPeriods: 7, NrThrottled: 2, ThrottledUsec: 1_000_000},
			Memory: &v2stats.MemoryStat{
				Usage: 10 << 20, MaxUsage: 12 << 20, UsageLimit: 64 << 20, InactiveFile: 2 << 20, ActiveFile: 1 << 20,
				Anon: 6 << 20, File: 3 << 20, Pgfault: 100, Pgmajfault: 4,
			},
			MemoryEvents: &v2stats.MemoryEvents{OomKill: 1},
			Io:           &v2stats.IOStat{Usage: []*v2stats.IOEntry{{Major: 8, Minor: 0, Rbytes: 4096, Wbytes: 8192, Rios: 1, Wios: 2}}},
			Pids:         &v2stats.PidsStat{Current: 3, Limit: 100},
		}, map[string]uint64{
			"container_cpu_usage_seconds_total":                    3,
			"container_cpu_user_seconds_total":                     2,
			"container_cpu_system_seconds_total":                   1,
			"container_cpu_cfs_periods_total":                      7,
			"container_cpu_cfs_throttled_periods_total":            2,
			"container_cpu_cfs_throttled_seconds_total":            1,
			"container_memory_usage_bytes":                         10 << 20,
			"container_memory_working_set_bytes":                   8 << 20,
			"container_memory_max_usage_bytes":                     12 << 20,
			"container_memory_rss":                                 6 << 20,
			"container_memory_cache":                               3 << 20,
			"container_memory_failures_total/pgmajfault/container": 4,
			"container_oom_events_total":                           1,
			"container_fs_reads_bytes_total/8:0":                   4096,
			"container_fs_writes_bytes_total/8:0":                  8192,
			"container_fs_reads_total/8:0":                         1,
			"container_fs_writes_total/8:0":                        2,
			"container_processes":                                  3,
			"container_threads_max":                                100,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := NewMetricSet(time.Unix(100, 0), "pod", "ns", "ctr", "id", "busybox")
			ms.Cgroup(tc.metrics)
			got := metricValues(t, ms)
			for k, v := range tc.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %d (present %v), want %d", k, g, ok, v)
				}
			}
			for _, m := range ms.out {
				if strings.Join(m.LabelValues[:5], ",") != "pod,ns,ctr,id,busybox" || m.Timestamp != time.Unix(100, 0).UnixNano() {
					t.Errorf("series %s labels %q at %d", m.Name, m.LabelValues, m.Timestamp)
				}
			}
		})
	}
}

func TestSpecAndNetworkSeries(t *testing.T) {
	ms := NewMetricSet(time.Unix(100, 0), "pod", "ns", "", "sb", "")
	limit, period, shares := int64(64<<20), uint64(100000), uint64(512)
	ms.Spec(&specs.Spec{
		Process: &specs.Process{Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 4096}}},
		Linux:   &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Period: &period, Shares: &shares}}},
	})
	ifaces, err := parseNetCounters(strings.NewReader(netDevSample))
	if err != nil {
		t.Fatal(err)
	}
	ms.Network(*DefaultInterface(ifaces))
	got := metricValues(t, ms)
	for k, v := range map[string]uint64{
		"container_ulimits_soft/RLIMIT_NOFILE":                  1024,
		"container_spec_memory_limit_bytes":                     64 << 20,
		"container_spec_cpu_period":                             100000,
		"container_spec_cpu_shares":                             512,
		"container_network_receive_bytes_total/eth0":            1000,
		"container_network_receive_packets_total/eth0":          10,
		"container_network_receive_packets_dropped_total/eth0":  3,
		"container_network_transmit_bytes_total/eth0":           2000,
		"container_network_transmit_packets_total/eth0":         20,
		"container_network_transmit_errors_total/eth0":          5,
		"container_network_transmit_packets_dropped_total/eth0": 6,
	} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %d (present %v), want %d", k, g, ok, v)
		}
	}
}

const netDevSample = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    1000      10    1    3    0     0          0         0     2000      20    5    6    0     0       0          0
`

func TestDescriptorsAreUniqueAndCoverCAdvisorsCoreSeries(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range metricDescriptors {
		if seen[d.Name] {
			t.Errorf("descriptor %s listed twice", d.Name)
		}
		seen[d.Name] = true
	}
	for _, name := range []string{"container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
		"container_fs_usage_bytes", "container_network_receive_bytes_total", "container_start_time_seconds"} {
		if !seen[name] {
			t.Errorf("no descriptor for %s", name)
		}
	}
}
