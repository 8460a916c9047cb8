package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/typeurl/v2"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/stats"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// rates gives the stats their CPU rates; forget drops an
// object's samples with the object.
var rates = stats.NewCPURates()

// taskSamples asks the tasks service for the metrics of the given tasks
// (all in the namespace when ids is empty).
func (s *Server) taskSamples(ctx context.Context, ids ...string) (map[string]stats.Sample, error) {
	raw, err := s.taskMetrics(ctx, ids...)
	if err != nil {
		return nil, err
	}
	out := map[string]stats.Sample{}
	for id, m := range raw {
		sample, err := stats.FromMetrics(m.v, m.at)
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
func (s *Server) containerStats(ctx context.Context, m *store.Container, sample *stats.Sample) *runtime.ContainerStats {
	st := &runtime.ContainerStats{Attributes: &runtime.ContainerAttributes{
		Id:          m.ID,
		Metadata:    m.Config.GetMetadata(),
		Labels:      m.Config.GetLabels(),
		Annotations: m.Config.GetAnnotations(),
	}}
	if sample != nil {
		st.Cpu = sample.CPU(rates.NanoCores(m.ID, *sample))
		st.Memory = sample.Memory()
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
		UsedBytes:  &runtime.UInt64Value{Value: uint64(u.Size)},
		InodesUsed: &runtime.UInt64Value{Value: uint64(u.Inodes)},
	}
}

// ContainerStats reports one container's CPU, memory and writable layer.
func (s *Server) ContainerStats(ctx context.Context, req *runtime.ContainerStatsRequest) (*runtime.ContainerStatsResponse, error) {
	ctx = withNamespace(ctx)
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	var sample *stats.Sample
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
	recs, err := s.store.List(ctx, store.KindContainer)
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
		m, err := store.DecodeContainer(c)
		if err != nil {
			continue
		}
		if f.GetPodSandboxId() != "" && !strings.HasPrefix(m.SandboxID, f.GetPodSandboxId()) {
			continue
		}
		if !store.MatchLabels(m.Config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		var sample *stats.Sample
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
	sb, err := s.pods.Get(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := s.store.SandboxContainers(ctx, sb.ID)
	if err != nil {
		return nil, err
	}
	return &runtime.PodSandboxStatsResponse{Stats: s.podStats(ctx, sb, cs, samples)}, nil
}

// ListPodSandboxStats reports the stats of the pods the filter selects.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtime.ListPodSandboxStatsRequest) (*runtime.ListPodSandboxStatsResponse, error) {
	ctx = withNamespace(ctx)
	f := req.GetFilter()
	sbs, bySandbox, err := s.podsAndContainers(ctx)
	if err != nil {
		return nil, err
	}
	samples, err := s.taskSamples(ctx)
	if err != nil {
		return nil, err
	}
	out := []*runtime.PodSandboxStats{}
	for _, c := range sbs {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) {
			continue
		}
		sb, err := store.DecodeSandbox(c)
		if err != nil {
			continue
		}
		if !store.MatchLabels(sb.Config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		out = append(out, s.podStats(ctx, sb, bySandbox[sb.ID], samples))
	}
	return &runtime.ListPodSandboxStatsResponse{Stats: out}, nil
}

func (s *Server) podStats(ctx context.Context, sb *store.Sandbox, cs []containers.Container, samples map[string]stats.Sample) *runtime.PodSandboxStats {
	st := &runtime.PodSandboxStats{
		Attributes: &runtime.PodSandboxAttributes{
			Id:          sb.ID,
			Metadata:    sb.Config.GetMetadata(),
			Labels:      sb.Config.GetLabels(),
			Annotations: sb.Config.GetAnnotations(),
		},
		Linux: &runtime.LinuxPodSandboxStats{},
	}
	// The pod as a whole: its cgroup parent when it has one (the
	// kubelet's pod cgroup holds the pause and every container), else
	// the sum of its tasks.
	var pod *stats.Sample
	if parent := sb.Config.GetLinux().GetCgroupParent(); parent != "" {
		if v, err := stats.ReadCgroup(parent); err == nil {
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
					*pod = pod.Add(cv)
				}
			}
		}
	}
	if pod != nil {
		st.Linux.Cpu = pod.CPU(rates.NanoCores(sb.ID, *pod))
		st.Linux.Memory = pod.Memory()
		st.Linux.Process = pod.Process()
	}
	if ready, pid := s.pods.Ready(ctx, sb.ID); ready && pid != 0 && sb.NetNS != "" {
		if n, err := stats.ReadNetDev(fmt.Sprintf("/proc/%d/net/dev", pid)); err == nil {
			st.Linux.Network = n
		} else {
			logging.G(ctx).Debug("pod network stats", "sandbox", sb.ID, "error", err)
		}
	}
	for _, c := range cs {
		m, err := store.DecodeContainer(c)
		if err != nil {
			continue
		}
		var sample *stats.Sample
		if v, ok := samples[m.ID]; ok {
			sample = &v
		}
		st.Linux.Containers = append(st.Linux.Containers, s.containerStats(ctx, m, sample))
	}
	return st
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
		if stats.OOMKilled(v) {
			return true
		}
	}
	return false
}

// podsAndContainers are the pods' records and their containers' by pod.
func (s *Server) podsAndContainers(ctx context.Context) ([]containers.Container, map[string][]containers.Container, error) {
	sbs, err := s.store.List(ctx, store.KindSandbox)
	if err != nil {
		return nil, nil, err
	}
	ctrs, err := s.store.List(ctx, store.KindContainer)
	if err != nil {
		return nil, nil, err
	}
	bySandbox := map[string][]containers.Container{}
	for _, c := range ctrs {
		bySandbox[c.Labels[store.SandboxIDLabel]] = append(bySandbox[c.Labels[store.SandboxIDLabel]], c)
	}
	return sbs, bySandbox, nil
}
