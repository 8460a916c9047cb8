package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// cgroupSample is what a container's or pod's stats are made of, whichever
// cgroup version the shim (or this process) read them from.
type cgroupSample struct {
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
func sampleFromMetrics(data *anypb.Any, at time.Time) (cgroupSample, error) {
	if data == nil {
		return cgroupSample{}, fmt.Errorf("task metrics carry no data: %w", errdefs.ErrNotFound)
	}
	v, err := typeurl.UnmarshalAny(data)
	if err != nil {
		return cgroupSample{}, fmt.Errorf("decode task metrics %s: %w", data.GetTypeUrl(), err)
	}
	return sampleFrom(v, at)
}

func sampleFrom(v any, at time.Time) (cgroupSample, error) {
	s := cgroupSample{at: at}
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
		return cgroupSample{}, fmt.Errorf("task metrics of type %T: %w", v, errdefs.ErrNotImplemented)
	}
	if s.memLimit >= noMemoryLimit {
		s.memLimit = 0
	}
	return s, nil
}

// add sums two samples (a pod without a cgroup of its own is the sum of
// its containers).
func (s cgroupSample) add(o cgroupSample) cgroupSample {
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
func (s cgroupSample) workingSet() uint64 {
	if s.inactiveFile < s.memUsage {
		return s.memUsage - s.inactiveFile
	}
	return 0
}

func u64(v uint64) *runtime.UInt64Value { return &runtime.UInt64Value{Value: v} }

func (s cgroupSample) cpu(nanoCores *uint64) *runtime.CpuUsage {
	c := &runtime.CpuUsage{Timestamp: s.at.UnixNano(), UsageCoreNanoSeconds: u64(s.cpuNanos)}
	if nanoCores != nil {
		c.UsageNanoCores = u64(*nanoCores)
	}
	return c
}

func (s cgroupSample) memory() *runtime.MemoryUsage {
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

// cpuRates turns cumulative CPU time into nano-cores, from the previous
// sample of the same object. The samples live in this process only: after
// a restart the first call reports no rate, as a new object's does.
type cpuRates struct {
	mu   sync.Mutex
	last map[string]cgroupSample
}

var rates = &cpuRates{last: map[string]cgroupSample{}}

func (r *cpuRates) nanoCores(id string, s cgroupSample) *uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, ok := r.last[id]
	if !ok || !s.at.After(prev.at) {
		if !ok {
			r.last[id] = s
		}
		return nil
	}
	r.last[id] = s
	if s.cpuNanos < prev.cpuNanos {
		return nil
	}
	v := uint64(float64(s.cpuNanos-prev.cpuNanos) / float64(s.at.Sub(prev.at).Nanoseconds()) * 1e9)
	return &v
}

func (r *cpuRates) forget(id string) {
	r.mu.Lock()
	delete(r.last, id)
	r.mu.Unlock()
}

// taskSamples asks the tasks service for the metrics of the given tasks
// (all in the namespace when ids is empty).
func (s *Server) taskSamples(ctx context.Context, ids ...string) (map[string]cgroupSample, error) {
	raw, err := s.taskMetrics(ctx, ids...)
	if err != nil {
		return nil, err
	}
	out := map[string]cgroupSample{}
	for id, m := range raw {
		sample, err := sampleFrom(m.v, m.at)
		if err != nil {
			logging.G(ctx).Debug("unreadable task metrics", "task", id, "error", err)
			continue
		}
		out[id] = sample
	}
	return out, nil
}

// containerStats builds one container's stats from its task's sample
// (none for a container that does not run) and its writable layer.
func (s *Server) containerStats(ctx context.Context, m *containerMeta, sample *cgroupSample) *runtime.ContainerStats {
	st := &runtime.ContainerStats{Attributes: &runtime.ContainerAttributes{
		Id:          m.ID,
		Metadata:    m.config.GetMetadata(),
		Labels:      m.config.GetLabels(),
		Annotations: m.config.GetAnnotations(),
	}}
	if sample != nil {
		st.Cpu = sample.cpu(rates.nanoCores(m.ID, *sample))
		st.Memory = sample.memory()
	}
	st.WritableLayer = s.writableLayer(ctx, m.ID)
	return st
}

// writableLayer is the usage of a container's active snapshot (keyed by
// the container's ID), asked of the snapshotter through metadata.
func (s *Server) writableLayer(ctx context.Context, id string) *runtime.FilesystemUsage {
	u, err := s.client.SnapshotService(s.cfg.Snapshotter).Usage(ctx, id)
	if err != nil {
		logging.G(ctx).Debug("writable layer usage", "container", id, "error", err)
		return nil
	}
	return &runtime.FilesystemUsage{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtime.FilesystemIdentifier{Mountpoint: s.cfg.ImageFSPath},
		UsedBytes:  u64(uint64(u.Size)),
		InodesUsed: u64(uint64(u.Inodes)),
	}
}

// ContainerStats reports one container's CPU, memory and writable layer.
func (s *Server) ContainerStats(ctx context.Context, req *runtime.ContainerStatsRequest) (*runtime.ContainerStatsResponse, error) {
	ctx = withNamespace(ctx)
	m, _, err := s.getContainer(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	var sample *cgroupSample
	if v, ok := samples[m.ID]; ok {
		sample = &v
	}
	return &runtime.ContainerStatsResponse{Stats: s.containerStats(ctx, m, sample)}, nil
}

// ListContainerStats reports the stats of the containers the filter
// selects, from one metrics call for all tasks.
func (s *Server) ListContainerStats(ctx context.Context, req *runtime.ListContainerStatsRequest) (*runtime.ListContainerStatsResponse, error) {
	ctx = withNamespace(ctx)
	f := req.GetFilter()
	recs, err := s.listKind(ctx, kindContainer)
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx)
	if err != nil {
		return nil, err
	}
	out := []*runtime.ContainerStats{}
	for _, c := range recs {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) {
			continue
		}
		m, err := decodeContainer(c)
		if err != nil {
			continue
		}
		if f.GetPodSandboxId() != "" && !strings.HasPrefix(m.SandboxID, f.GetPodSandboxId()) {
			continue
		}
		if !matchLabels(m.config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		var sample *cgroupSample
		if v, ok := samples[m.ID]; ok {
			sample = &v
		}
		out = append(out, s.containerStats(ctx, m, sample))
	}
	return &runtime.ListContainerStatsResponse{Stats: out}, nil
}

// PodSandboxStats reports a pod's CPU, memory, processes and network,
// with the stats of each of its containers.
func (s *Server) PodSandboxStats(ctx context.Context, req *runtime.PodSandboxStatsRequest) (*runtime.PodSandboxStatsResponse, error) {
	ctx = withNamespace(ctx)
	sb, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := s.sandboxContainers(ctx, sb.ID)
	if err != nil {
		return nil, err
	}
	return &runtime.PodSandboxStatsResponse{Stats: s.podStats(ctx, sb, cs, samples)}, nil
}

// ListPodSandboxStats reports the stats of the pods the filter selects.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtime.ListPodSandboxStatsRequest) (*runtime.ListPodSandboxStatsResponse, error) {
	ctx = withNamespace(ctx)
	f := req.GetFilter()
	sbs, err := s.listKind(ctx, kindSandbox)
	if err != nil {
		return nil, err
	}
	ctrs, err := s.listKind(ctx, kindContainer)
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx)
	if err != nil {
		return nil, err
	}
	bySandbox := map[string][]containers.Container{}
	for _, c := range ctrs {
		bySandbox[c.Labels[sandboxIDLabel]] = append(bySandbox[c.Labels[sandboxIDLabel]], c)
	}
	out := []*runtime.PodSandboxStats{}
	for _, c := range sbs {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) {
			continue
		}
		sb, err := decodeSandbox(c)
		if err != nil {
			continue
		}
		if !matchLabels(sb.config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		out = append(out, s.podStats(ctx, sb, bySandbox[sb.ID], samples))
	}
	return &runtime.ListPodSandboxStatsResponse{Stats: out}, nil
}

func (s *Server) podStats(ctx context.Context, sb *sandboxMeta, cs []containers.Container, samples map[string]cgroupSample) *runtime.PodSandboxStats {
	st := &runtime.PodSandboxStats{
		Attributes: &runtime.PodSandboxAttributes{
			Id:          sb.ID,
			Metadata:    sb.config.GetMetadata(),
			Labels:      sb.config.GetLabels(),
			Annotations: sb.config.GetAnnotations(),
		},
		Linux: &runtime.LinuxPodSandboxStats{},
	}
	// The pod as a whole: its cgroup parent when it has one (the
	// kubelet's pod cgroup holds the pause and every container), else
	// the sum of its tasks.
	var pod *cgroupSample
	if parent := sb.config.GetLinux().GetCgroupParent(); parent != "" {
		if v, err := readCgroup(parent); err == nil {
			pod = &v
		} else {
			logging.G(ctx).Debug("pod cgroup stats", "sandbox", sb.ID, "cgroup", parent, "error", err)
		}
	}
	if pod == nil {
		if v, ok := samples[sb.ID]; ok {
			pod = &v
			for _, c := range cs {
				if cv, ok := samples[c.ID]; ok {
					*pod = pod.add(cv)
				}
			}
		}
	}
	if pod != nil {
		st.Linux.Cpu = pod.cpu(rates.nanoCores(sb.ID, *pod))
		st.Linux.Memory = pod.memory()
		st.Linux.Process = &runtime.ProcessUsage{Timestamp: pod.at.UnixNano(), ProcessCount: u64(pod.pids)}
	}
	if ready, pid := s.sandboxReady(ctx, sb.ID); ready && pid != 0 && sb.NetNS != "" {
		if n, err := readNetDev(fmt.Sprintf("/proc/%d/net/dev", pid)); err == nil {
			st.Linux.Network = n
		} else {
			logging.G(ctx).Debug("pod network stats", "sandbox", sb.ID, "error", err)
		}
	}
	for _, c := range cs {
		m, err := decodeContainer(c)
		if err != nil {
			continue
		}
		var sample *cgroupSample
		if v, ok := samples[m.ID]; ok {
			sample = &v
		}
		st.Linux.Containers = append(st.Linux.Containers, s.containerStats(ctx, m, sample))
	}
	return st
}

// readCgroup reads a cgroup's stats with the cgroupfs layout runc uses
// for an absolute cgroupsPath: /sys/fs/cgroup/<controller>/<path> on
// cgroup v1 (and hybrid) hosts, /sys/fs/cgroup/<path> on cgroup v2 hosts.
func readCgroup(path string) (cgroupSample, error) {
	if cgroups.Mode() == cgroups.Unified {
		return readCgroup2(cgroupRoot, path)
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return cgroupSample{}, err
	}
	st, err := cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return cgroupSample{}, err
	}
	return sampleFrom(st, time.Now())
}

// cgroupRoot is where the cgroup hierarchy is mounted (the unified one on
// a cgroup v2 host).
const cgroupRoot = "/sys/fs/cgroup"

// readCgroup2 reads the cgroup v2 group path of the hierarchy mounted at
// root.
func readCgroup2(root, path string) (cgroupSample, error) {
	m, err := cgroup2.Load(path, cgroup2.WithMountpoint(root))
	if err != nil {
		return cgroupSample{}, err
	}
	st, err := m.Stat()
	if err != nil {
		return cgroupSample{}, err
	}
	return sampleFrom(st, time.Now())
}

// readNetDev reads a network namespace's interface counters from
// /proc/<pid>/net/dev of a process inside it; eth0 (the CNI default) is
// the default interface, the loopback is left out.
func readNetDev(path string) (*runtime.NetworkUsage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseNetDev(f, time.Now())
}

func parseNetDev(r io.Reader, at time.Time) (*runtime.NetworkUsage, error) {
	ifaces, err := parseNetCounters(r)
	if err != nil {
		return nil, err
	}
	n := &runtime.NetworkUsage{Timestamp: at.UnixNano()}
	def := defaultInterface(ifaces)
	for _, c := range ifaces {
		iface := &runtime.NetworkInterfaceUsage{Name: c.name, RxBytes: u64(c.rxBytes), RxErrors: u64(c.rxErrors), TxBytes: u64(c.txBytes), TxErrors: u64(c.txErrors)}
		n.Interfaces = append(n.Interfaces, iface)
		if def != nil && c.name == def.name {
			n.DefaultInterface = iface
		}
	}
	return n, nil
}

// netCounters is one interface's line of /proc/<pid>/net/dev.
type netCounters struct {
	name                                    string
	rxBytes, rxPackets, rxErrors, rxDropped uint64
	txBytes, txPackets, txErrors, txDropped uint64
}

// readNetCounters reads the interface counters of the network namespace
// of a process inside it, from its /proc/<pid>/net/dev; the loopback is
// left out.
func readNetCounters(path string) ([]netCounters, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseNetCounters(f)
}

func parseNetCounters(r io.Reader) ([]netCounters, error) {
	var out []netCounters
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue // the two header lines
		}
		name = strings.TrimSpace(name)
		fields := strings.Fields(rest)
		// receive: bytes packets errs drop fifo frame compressed
		// multicast; transmit: bytes packets errs drop ...
		if name == "lo" || len(fields) < 12 {
			continue
		}
		num := func(i int) uint64 {
			v, _ := strconv.ParseUint(fields[i], 10, 64)
			return v
		}
		out = append(out, netCounters{
			name:    name,
			rxBytes: num(0), rxPackets: num(1), rxErrors: num(2), rxDropped: num(3),
			txBytes: num(8), txPackets: num(9), txErrors: num(10), txDropped: num(11),
		})
	}
	return out, sc.Err()
}

// defaultInterface is eth0, the CNI default, or else the first interface.
func defaultInterface(ifaces []netCounters) *netCounters {
	for i := range ifaces {
		if ifaces[i].name == "eth0" {
			return &ifaces[i]
		}
	}
	if len(ifaces) > 0 {
		return &ifaces[0]
	}
	return nil
}

// oomKilled asks the task's cgroup whether the kernel's OOM killer took
// one of its processes; false when that cannot be told. ctx's logger names
// the container.
func (s *Server) oomKilled(ctx context.Context, id string) bool {
	resp, err := s.client.TaskService().Metrics(ctx, &tasksapi.MetricsRequest{Filters: []string{"id==" + id}})
	if err != nil {
		logging.G(ctx).Debug("metrics of exited container", "error", err)
		return false
	}
	for _, m := range resp.GetMetrics() {
		v, err := typeurl.UnmarshalAny(m.GetData())
		if err != nil {
			continue
		}
		switch mt := v.(type) {
		case *v1stats.Metrics:
			return mt.GetMemoryOomControl().GetOomKill() > 0
		case *v2stats.Metrics:
			return mt.GetMemoryEvents().GetOomKill() > 0
		}
	}
	return false
}
