// Package stats turns the cgroup and network counters of containers and
// pods into what the CRI reports: the figures of ContainerStats and
// PodSandboxStats (Sample), and the cAdvisor-style series of
// ListPodSandboxMetrics (MetricSet). It reads cgroups (v1 and v2) and
// /proc itself; asking the shims for their tasks' metrics is the CRI
// server's, which hands them over decoded.
package stats

import (
	"fmt"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Sample is what a container's or pod's stats are made of, whichever
// cgroup version the shim (or this package) read them from.
type Sample struct {
	at           time.Time
	cpuNanos     uint64 // cumulative CPU time
	memUsage     uint64
	memLimit     uint64 // 0: none
	inactiveFile uint64
	rss          uint64
	pgFault      uint64
	pgMajFault   uint64
	pids         uint64
}

// noMemoryLimit is what cgroup v1 reports for an unlimited cgroup
// (PAGE_COUNTER_MAX pages) or more; anything above it means "no limit".
const noMemoryLimit = uint64(1) << 62

// sampleFromMetrics decodes what containerd-shim-runc-v2 answers to Stats:
// an Any holding io.containerd.cgroups.v1.Metrics on cgroup v1 hosts and
// io.containerd.cgroups.v2.Metrics on cgroup v2 hosts.
func sampleFromMetrics(data *anypb.Any, at time.Time) (Sample, error) {
	if data == nil {
		return Sample{}, fmt.Errorf("task metrics carry no data: %w", errdefs.ErrNotFound)
	}
	v, err := typeurl.UnmarshalAny(data)
	if err != nil {
		return Sample{}, fmt.Errorf("decode task metrics %s: %w", data.GetTypeUrl(), err)
	}
	return FromMetrics(v, at)
}

// FromMetrics makes a sample, taken at at, of a shim's decoded task
// metrics: a *v1stats.Metrics or a *v2stats.Metrics.
func FromMetrics(v any, at time.Time) (Sample, error) {
	s := Sample{at: at}
	switch m := v.(type) {
	case *v1stats.Metrics:
		s.cpuNanos = m.GetCPU().GetUsage().GetTotal()
		mem := m.GetMemory()
		s.memUsage, s.memLimit = mem.GetUsage().GetUsage(), mem.GetUsage().GetLimit()
		s.inactiveFile, s.rss = mem.GetTotalInactiveFile(), mem.GetTotalRSS()
		s.pgFault, s.pgMajFault = mem.GetTotalPgFault(), mem.GetTotalPgMajFault()
		s.pids = m.GetPids().GetCurrent()
	case *v2stats.Metrics:
		s.cpuNanos = m.GetCPU().GetUsageUsec() * 1000
		mem := m.GetMemory()
		s.memUsage, s.memLimit = mem.GetUsage(), mem.GetUsageLimit()
		s.inactiveFile, s.rss = mem.GetInactiveFile(), mem.GetAnon()
		s.pgFault, s.pgMajFault = mem.GetPgfault(), mem.GetPgmajfault()
		s.pids = m.GetPids().GetCurrent()
	default:
		return Sample{}, fmt.Errorf("task metrics of type %T: %w", v, errdefs.ErrNotImplemented)
	}
	if s.memLimit >= noMemoryLimit {
		s.memLimit = 0
	}
	return s, nil
}

// OOMKilled tells whether a shim's decoded task metrics count a kill by
// the kernel's OOM killer; false for metrics it cannot read.
func OOMKilled(v any) bool {
	switch m := v.(type) {
	case *v1stats.Metrics:
		return m.GetMemoryOomControl().GetOomKill() > 0
	case *v2stats.Metrics:
		return m.GetMemoryEvents().GetOomKill() > 0
	}
	return false
}

// Add sums two samples (a pod without a cgroup of its own is the sum of
// its containers).
func (s Sample) Add(o Sample) Sample {
	if o.at.After(s.at) {
		s.at = o.at
	}
	s.cpuNanos += o.cpuNanos
	s.memUsage += o.memUsage
	s.inactiveFile += o.inactiveFile
	s.rss += o.rss
	s.pgFault += o.pgFault
	s.pgMajFault += o.pgMajFault
	s.pids += o.pids
	return s
}

// workingSet is usage less the inactive file cache, the kubelet's
// eviction signal (as cAdvisor and containerd compute it).
func (s Sample) workingSet() uint64 {
	if s.inactiveFile < s.memUsage {
		return s.memUsage - s.inactiveFile
	}
	return 0
}

func u64(v uint64) *runtime.UInt64Value { return &runtime.UInt64Value{Value: v} }

// CPU is the sample's CPU usage; nanoCores, the rate since the last
// sample (see CPURates), is left out when nil.
func (s Sample) CPU(nanoCores *uint64) *runtime.CpuUsage {
	c := &runtime.CpuUsage{Timestamp: s.at.UnixNano(), UsageCoreNanoSeconds: u64(s.cpuNanos)}
	if nanoCores != nil {
		c.UsageNanoCores = u64(*nanoCores)
	}
	return c
}

// Memory is the sample's memory usage; the available bytes only when the
// cgroup has a limit.
func (s Sample) Memory() *runtime.MemoryUsage {
	ws := s.workingSet()
	m := &runtime.MemoryUsage{
		Timestamp:       s.at.UnixNano(),
		WorkingSetBytes: u64(ws),
		UsageBytes:      u64(s.memUsage),
		RssBytes:        u64(s.rss),
		PageFaults:      u64(s.pgFault),
		MajorPageFaults: u64(s.pgMajFault),
	}
	if s.memLimit > 0 {
		avail := uint64(0)
		if s.memLimit > ws {
			avail = s.memLimit - ws
		}
		m.AvailableBytes = u64(avail)
	}
	return m
}

// Process is the sample's process count.
func (s Sample) Process() *runtime.ProcessUsage {
	return &runtime.ProcessUsage{Timestamp: s.at.UnixNano(), ProcessCount: u64(s.pids)}
}
