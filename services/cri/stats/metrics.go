package stats

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The series of a MetricSet are cAdvisor's container_* series, named,
// labelled and grouped as containerd's CRI names them, so that a kubelet with PodAndContainerStatsFromCRI serves /metrics/cadvisor from
// the runtime with the series cAdvisor gave it.
var (
	baseLabelKeys    = []string{"pod", "namespace", "container", "id", "image"}
	networkLabelKeys = withKeys(baseLabelKeys, "interface")
	diskLabelKeys    = withKeys(baseLabelKeys, "device")
)

func withKeys(keys []string, more ...string) []string {
	return append(append([]string(nil), keys...), more...)
}

func descriptor(name, help string, keys []string) *runtime.MetricDescriptor {
	return &runtime.MetricDescriptor{Name: name, Help: help, LabelKeys: keys}
}

var (
	mCPUUser            = descriptor("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", baseLabelKeys)
	mCPUSystem          = descriptor("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", baseLabelKeys)
	mCPUUsage           = descriptor("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", baseLabelKeys)
	mCPUPeriods         = descriptor("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", baseLabelKeys)
	mCPUThrottled       = descriptor("container_cpu_cfs_throttled_periods_total", "Number of CPU throttled period intervals.", baseLabelKeys)
	mCPUThrottledTime   = descriptor("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", baseLabelKeys)
	mMemCache           = descriptor("container_memory_cache", "Number of bytes of memory used by the container for caching purposes.", baseLabelKeys)
	mMemRSS             = descriptor("container_memory_rss", "Size of RSS in bytes, total anonymous memory and swap cache memory used by the container.", baseLabelKeys)
	mMemKernel          = descriptor("container_memory_kernel_usage", "Size of kernel memory allocated to the container in bytes, includes page tables, socket buffers...", baseLabelKeys)
	mMemMapped          = descriptor("container_memory_mapped_file", "Size of container's memory mapped files in bytes.", baseLabelKeys)
	mMemSwap            = descriptor("container_memory_swap", "Container swap usage in bytes.", baseLabelKeys)
	mMemFailcnt         = descriptor("container_memory_failcnt", "Number of times container memory usage has hit its cgroup v1 upper memory limit, for cg2 this value is not currently supported", baseLabelKeys)
	mMemUsage           = descriptor("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", baseLabelKeys)
	mMemMaxUsage        = descriptor("container_memory_max_usage_bytes", "Maximum container memory usage recorded in bytes", baseLabelKeys)
	mMemWorkingSet      = descriptor("container_memory_working_set_bytes", "Amount of memory that is actively used by the container, excluding cached memory.", baseLabelKeys)
	mMemActiveFile      = descriptor("container_memory_total_active_file_bytes", "Amount of cache memory bytes, in use by the container, in file on disk.", baseLabelKeys)
	mMemInactiveFile    = descriptor("container_memory_total_inactive_file_bytes", "Amount of inactive cache memory bytes, for the container, in file on disk.", baseLabelKeys)
	mMemFailures        = descriptor("container_memory_failures_total", "Cumulative count of container memory allocation failures.", withKeys(baseLabelKeys, "failure_type", "scope"))
	mOOMEvents          = descriptor("container_oom_events_total", "Count of out of memory events observed for the container", baseLabelKeys)
	mFsInodesFree       = descriptor("container_fs_inodes_free", "Number of available Inodes", diskLabelKeys)
	mFsInodesTotal      = descriptor("container_fs_inodes_total", "Number of Inodes", diskLabelKeys)
	mFsLimit            = descriptor("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", diskLabelKeys)
	mFsUsage            = descriptor("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", diskLabelKeys)
	mFsReadBytes        = descriptor("container_fs_reads_bytes_total", "Cumulative count of bytes read", diskLabelKeys)
	mFsReads            = descriptor("container_fs_reads_total", "Cumulative count of reads completed", diskLabelKeys)
	mFsWriteBytes       = descriptor("container_fs_writes_bytes_total", "Cumulative count of bytes written", diskLabelKeys)
	mFsWrites           = descriptor("container_fs_writes_total", "Cumulative count of writes completed", diskLabelKeys)
	mBlkioUsage         = descriptor("container_blkio_device_usage_total", "Blkio device bytes usage", withKeys(diskLabelKeys, "major", "minor", "operation"))
	mNetRxBytes         = descriptor("container_network_receive_bytes_total", "Cumulative count of bytes received", networkLabelKeys)
	mNetRxPackets       = descriptor("container_network_receive_packets_total", "Cumulative count of packets received", networkLabelKeys)
	mNetRxDropped       = descriptor("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", networkLabelKeys)
	mNetRxErrors        = descriptor("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", networkLabelKeys)
	mNetTxBytes         = descriptor("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", networkLabelKeys)
	mNetTxPackets       = descriptor("container_network_transmit_packets_total", "Cumulative count of packets transmitted", networkLabelKeys)
	mNetTxDropped       = descriptor("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting", networkLabelKeys)
	mNetTxErrors        = descriptor("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", networkLabelKeys)
	mProcesses          = descriptor("container_processes", "Number of processes running inside the container.", baseLabelKeys)
	mFileDescriptors    = descriptor("container_file_descriptors", "Number of open file descriptors for the container.", baseLabelKeys)
	mSockets            = descriptor("container_sockets", "Number of open sockets for the container.", baseLabelKeys)
	mThreadsMax         = descriptor("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", baseLabelKeys)
	mThreads            = descriptor("container_threads", "Number of threads running inside the container", baseLabelKeys)
	mUlimitsSoft        = descriptor("container_ulimits_soft", "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice", withKeys(baseLabelKeys, "ulimit"))
	mLastSeen           = descriptor("container_last_seen", "Last time a container was seen by the exporter", baseLabelKeys)
	mStartTime          = descriptor("container_start_time_seconds", "Start time of the container since unix epoch in seconds", baseLabelKeys)
	mSpecCPUPeriod      = descriptor("container_spec_cpu_period", "CPU period of the container", baseLabelKeys)
	mSpecCPUShares      = descriptor("container_spec_cpu_shares", "CPU share of the container", baseLabelKeys)
	mSpecMemLimit       = descriptor("container_spec_memory_limit_bytes", "Memory limit for the container", baseLabelKeys)
	mSpecMemReservation = descriptor("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container", baseLabelKeys)
	mSpecMemSwapLimit   = descriptor("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container", baseLabelKeys)
)

// metricDescriptors is every series a MetricSet may carry; the kubelet
// drops a series it was not told of in ListMetricDescriptors, so the list
// is fixed.
var metricDescriptors = []*runtime.MetricDescriptor{
	mCPUUser, mCPUSystem, mCPUUsage, mCPUPeriods, mCPUThrottled, mCPUThrottledTime,
	mMemCache, mMemRSS, mMemKernel, mMemMapped, mMemSwap, mMemFailcnt, mMemUsage, mMemMaxUsage,
	mMemWorkingSet, mMemActiveFile, mMemInactiveFile, mMemFailures, mOOMEvents,
	mNetRxBytes, mNetRxPackets, mNetRxDropped, mNetRxErrors, mNetTxBytes, mNetTxPackets, mNetTxDropped, mNetTxErrors,
	mFsInodesFree, mFsInodesTotal, mFsLimit, mFsUsage,
	mFsReadBytes, mFsReads, mFsWriteBytes, mFsWrites, mBlkioUsage,
	mProcesses, mFileDescriptors, mSockets, mThreadsMax, mThreads, mUlimitsSoft,
	mLastSeen, mStartTime,
	mSpecCPUPeriod, mSpecCPUShares, mSpecMemLimit, mSpecMemReservation, mSpecMemSwapLimit,
}

// Descriptors names every series a MetricSet may carry, for
// ListMetricDescriptors.
func Descriptors() []*runtime.MetricDescriptor { return metricDescriptors }

// MetricSet gathers the series of one pod or container: every metric
// carries the same timestamp and base label values.
type MetricSet struct {
	ts     int64
	labels []string
	out    []*runtime.Metric
}

// NewMetricSet starts the series of one pod or container taken at at;
// the label values are the pod's name and namespace, the container's name
// (empty for the pod), the container's or pod's ID and the image.
func NewMetricSet(at time.Time, labels ...string) *MetricSet {
	return &MetricSet{ts: at.UnixNano(), labels: labels}
}

func (m *MetricSet) add(d *runtime.MetricDescriptor, t runtime.MetricType, v uint64, extra ...string) {
	m.out = append(m.out, &runtime.Metric{
		Name:        d.Name,
		Timestamp:   m.ts,
		MetricType:  t,
		LabelValues: withKeys(m.labels, extra...),
		Value:       &runtime.UInt64Value{Value: v},
	})
}

func (m *MetricSet) counter(d *runtime.MetricDescriptor, v uint64, extra ...string) {
	m.add(d, runtime.MetricType_COUNTER, v, extra...)
}

func (m *MetricSet) gauge(d *runtime.MetricDescriptor, v uint64, extra ...string) {
	m.add(d, runtime.MetricType_GAUGE, v, extra...)
}

// Metrics is the series gathered so far.
func (m *MetricSet) Metrics() []*runtime.Metric { return m.out }

// Lifetime adds when the container was last seen and when it started.
func (m *MetricSet) Lifetime(seen, started time.Time) {
	m.gauge(mLastSeen, uint64(seen.Unix()))
	m.gauge(mStartTime, uint64(started.Unix()))
}

// WritableLayer adds the bytes the container's writable layer uses on the
// image filesystem.
func (m *MetricSet) WritableLayer(used uint64) {
	m.gauge(mFsUsage, used, "/")
}

// ImageFilesystem adds the size and inodes of the filesystem the writable
// layer is on, its limit.
func (m *MetricSet) ImageFilesystem(capacity, inodes, inodesFree uint64) {
	m.gauge(mFsLimit, capacity, "/")
	m.gauge(mFsInodesTotal, inodes, "/")
	m.gauge(mFsInodesFree, inodesFree, "/")
}

// OpenFiles adds the container's open file descriptors and, of them, its
// sockets (see CountOpenFiles).
func (m *MetricSet) OpenFiles(fds, sockets uint64) {
	m.gauge(mFileDescriptors, fds)
	m.gauge(mSockets, sockets)
}

// seconds is what the CRI's integer values can carry of a duration in
// seconds (containerd truncates the same way).
func seconds(nanos uint64) uint64 { return nanos / uint64(time.Second) }

// Cgroup adds the CPU, memory, block I/O and process series of a shim's
// metrics, decoded: a *v1stats.Metrics or a *v2stats.Metrics.
func (m *MetricSet) Cgroup(v any) {
	switch s := v.(type) {
	case *v1stats.Metrics:
		if u := s.GetCPU().GetUsage(); u != nil {
			m.counter(mCPUUsage, seconds(u.GetTotal()))
			m.counter(mCPUUser, seconds(u.GetUser()))
			m.counter(mCPUSystem, seconds(u.GetKernel()))
			if t := s.GetCPU().GetThrottling(); t != nil {
				m.counter(mCPUPeriods, t.GetPeriods())
				m.counter(mCPUThrottled, t.GetThrottledPeriods())
				m.counter(mCPUThrottledTime, seconds(t.GetThrottledTime()))
			}
		}
		if mem := s.GetMemory(); mem != nil {
			if u := mem.GetUsage(); u != nil {
				m.gauge(mMemUsage, u.GetUsage())
				ws := uint64(0)
				if u.GetUsage() > mem.GetTotalInactiveFile() {
					ws = u.GetUsage() - mem.GetTotalInactiveFile()
				}
				m.gauge(mMemWorkingSet, ws)
				m.gauge(mMemMaxUsage, u.GetMax())
				m.counter(mMemFailcnt, u.GetFailcnt())
			}
			m.gauge(mMemRSS, mem.GetTotalRSS())
			m.gauge(mMemCache, mem.GetTotalCache())
			m.gauge(mMemMapped, mem.GetTotalMappedFile())
			m.gauge(mMemActiveFile, mem.GetTotalActiveFile())
			m.gauge(mMemInactiveFile, mem.GetTotalInactiveFile())
			m.counter(mMemFailures, mem.GetPgFault(), "pgfault", "container")
			m.counter(mMemFailures, mem.GetPgMajFault(), "pgmajfault", "container")
			if k := mem.GetKernel(); k != nil {
				m.gauge(mMemKernel, k.GetUsage())
			}
			if sw := mem.GetSwap(); sw != nil {
				m.gauge(mMemSwap, sw.GetUsage())
			}
		}
		if oom := s.GetMemoryOomControl(); oom != nil {
			m.counter(mOOMEvents, oom.GetOomKill())
		}
		for _, e := range s.GetBlkio().GetIoServiceBytesRecursive() {
			m.counter(mBlkioUsage, e.GetValue(), blkioDevice(e), strconv.FormatUint(e.GetMajor(), 10), strconv.FormatUint(e.GetMinor(), 10), e.GetOp())
			switch strings.ToLower(e.GetOp()) {
			case "read":
				m.counter(mFsReadBytes, e.GetValue(), blkioDevice(e))
			case "write":
				m.counter(mFsWriteBytes, e.GetValue(), blkioDevice(e))
			}
		}
		for _, e := range s.GetBlkio().GetIoServicedRecursive() {
			switch strings.ToLower(e.GetOp()) {
			case "read":
				m.counter(mFsReads, e.GetValue(), blkioDevice(e))
			case "write":
				m.counter(mFsWrites, e.GetValue(), blkioDevice(e))
			}
		}
		if p := s.GetPids(); p != nil {
			m.gauge(mProcesses, p.GetCurrent())
			m.gauge(mThreadsMax, p.GetLimit())
			m.gauge(mThreads, p.GetCurrent())
		}
	case *v2stats.Metrics:
		if c := s.GetCPU(); c != nil {
			m.counter(mCPUUsage, seconds(c.GetUsageUsec()*1000))
			m.counter(mCPUUser, seconds(c.GetUserUsec()*1000))
			m.counter(mCPUSystem, seconds(c.GetSystemUsec()*1000))
			m.counter(mCPUPeriods, c.GetNrPeriods())
			m.counter(mCPUThrottled, c.GetNrThrottled())
			m.counter(mCPUThrottledTime, seconds(c.GetThrottledUsec()*1000))
		}
		if mem := s.GetMemory(); mem != nil {
			ws := uint64(0)
			if mem.GetUsage() > mem.GetInactiveFile() {
				ws = mem.GetUsage() - mem.GetInactiveFile()
			}
			m.gauge(mMemUsage, mem.GetUsage())
			// memory.peak, which cAdvisor reports here (containerd
			// reports the limit).
			m.gauge(mMemMaxUsage, mem.GetMaxUsage())
			m.gauge(mMemWorkingSet, ws)
			m.gauge(mMemRSS, mem.GetAnon())
			m.gauge(mMemCache, mem.GetFile())
			m.gauge(mMemKernel, mem.GetKernelStack())
			m.gauge(mMemMapped, mem.GetFileMapped())
			m.gauge(mMemSwap, mem.GetSwapUsage())
			m.counter(mMemFailcnt, 0) // cgroup v2 has no failcnt
			m.gauge(mMemActiveFile, mem.GetActiveFile())
			m.gauge(mMemInactiveFile, mem.GetInactiveFile())
			m.counter(mMemFailures, mem.GetPgfault(), "pgfault", "container")
			m.counter(mMemFailures, mem.GetPgmajfault(), "pgmajfault", "container")
		}
		if ev := s.GetMemoryEvents(); ev != nil {
			m.counter(mOOMEvents, ev.GetOomKill())
		}
		for _, e := range s.GetIo().GetUsage() {
			dev := fmt.Sprintf("%d:%d", e.GetMajor(), e.GetMinor())
			m.counter(mFsReadBytes, e.GetRbytes(), dev)
			m.counter(mFsWriteBytes, e.GetWbytes(), dev)
			m.counter(mFsReads, e.GetRios(), dev)
			m.counter(mFsWrites, e.GetWios(), dev)
		}
		if p := s.GetPids(); p != nil {
			m.gauge(mProcesses, p.GetCurrent())
			m.gauge(mThreadsMax, p.GetLimit())
			m.gauge(mThreads, p.GetCurrent())
		}
	}
}

// blkioDevice names a cgroup v1 blkio entry's device: the shim's device
// path when it found one, else major:minor.
func blkioDevice(e *v1stats.BlkIOEntry) string {
	if e.GetDevice() != "" {
		return e.GetDevice()
	}
	return fmt.Sprintf("%d:%d", e.GetMajor(), e.GetMinor())
}

// Spec adds what the container's OCI spec asks for: its rlimits and its
// CPU and memory resources.
func (m *MetricSet) Spec(sp *specs.Spec) {
	if sp == nil {
		return
	}
	if sp.Process != nil {
		for _, r := range sp.Process.Rlimits {
			m.gauge(mUlimitsSoft, r.Soft, r.Type)
		}
	}
	if sp.Linux == nil || sp.Linux.Resources == nil {
		return
	}
	if c := sp.Linux.Resources.CPU; c != nil {
		if c.Period != nil {
			m.gauge(mSpecCPUPeriod, *c.Period)
		}
		if c.Shares != nil {
			m.gauge(mSpecCPUShares, *c.Shares)
		}
	}
	if mem := sp.Linux.Resources.Memory; mem != nil {
		if mem.Limit != nil {
			m.gauge(mSpecMemLimit, uint64(*mem.Limit))
		}
		if mem.Reservation != nil {
			m.gauge(mSpecMemReservation, uint64(*mem.Reservation))
		}
		if mem.Swap != nil {
			m.gauge(mSpecMemSwapLimit, uint64(*mem.Swap))
		}
	}
}

// Network adds one interface's counters, labelled with its name.
func (m *MetricSet) Network(c NetCounters) {
	m.counter(mNetRxBytes, c.rxBytes, c.name)
	m.counter(mNetRxPackets, c.rxPackets, c.name)
	m.counter(mNetRxDropped, c.rxDropped, c.name)
	m.counter(mNetRxErrors, c.rxErrors, c.name)
	m.counter(mNetTxBytes, c.txBytes, c.name)
	m.counter(mNetTxPackets, c.txPackets, c.name)
	m.counter(mNetTxDropped, c.txDropped, c.name)
	m.counter(mNetTxErrors, c.txErrors, c.name)
}

// CountOpenFiles counts the open files of a process, and of them the
// sockets, from its fd directory (as cAdvisor does); a process that is
// gone counts nothing.
func CountOpenFiles(fdDir string) (fds, sockets uint64) {
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return 0, 0
	}
	for _, e := range entries {
		fds++
		if target, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && strings.HasPrefix(target, "socket:") {
			sockets++
		}
	}
	return fds, sockets
}
