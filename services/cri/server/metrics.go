package server

import (
	"context"
	"fmt"
	"syscall"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/stats"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// The series of ListPodSandboxMetrics are built by package stats (see
// stats.MetricSet) from the shims' cgroup metrics, the pod's network
// counters, the writable layer, open files and the container's spec.

// ListMetricDescriptors names the series ListPodSandboxMetrics reports.
func (s *Server) ListMetricDescriptors(context.Context, *runtime.ListMetricDescriptorsRequest) (*runtime.ListMetricDescriptorsResponse, error) {
	return &runtime.ListMetricDescriptorsResponse{Descriptors: stats.Descriptors()}, nil
}

// ListPodSandboxMetrics reports the metrics of every ready pod: its
// network counters at pod level, and per running container its cgroup's
// CPU, memory, block I/O and processes, its writable layer, open files
// and resource spec.
func (s *Server) ListPodSandboxMetrics(ctx context.Context, _ *runtime.ListPodSandboxMetricsRequest) (*runtime.ListPodSandboxMetricsResponse, error) {
	pods, err := s.podSandboxMetrics(withNamespace(ctx))
	if err != nil {
		return nil, err
	}
	return &runtime.ListPodSandboxMetricsResponse{PodMetrics: pods}, nil
}

// StreamPodSandboxMetrics is ListPodSandboxMetrics in batches.
func (s *Server) StreamPodSandboxMetrics(_ *runtime.StreamPodSandboxMetricsRequest, stream grpc.ServerStreamingServer[runtime.StreamPodSandboxMetricsResponse]) error {
	pods, err := s.podSandboxMetrics(withNamespace(stream.Context()))
	if err != nil {
		return err
	}
	return sendBatches(pods, func(b []*runtime.PodSandboxMetrics) error {
		return stream.Send(&runtime.StreamPodSandboxMetricsResponse{PodSandboxMetrics: b})
	})
}

func (s *Server) podSandboxMetrics(ctx context.Context) ([]*runtime.PodSandboxMetrics, error) {
	sbs, bySandbox, err := s.podsAndContainers(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := s.taskMetrics(ctx)
	if err != nil {
		return nil, err
	}
	out := []*runtime.PodSandboxMetrics{}
	for _, rec := range sbs {
		sb, err := store.DecodeSandbox(rec)
		if err != nil {
			continue
		}
		// Only ready pods, as containerd: a stopped pod has no
		// network and no running containers to measure.
		ready, pid := s.pods.Ready(ctx, sb.ID)
		if !ready {
			continue
		}
		md := sb.Config.GetMetadata()
		pod := &runtime.PodSandboxMetrics{PodSandboxId: sb.ID}
		if sb.NetNS != "" && pid != 0 {
			ifaces, err := stats.ReadNetCounters(fmt.Sprintf("/proc/%d/net/dev", pid))
			if err != nil {
				logging.G(ctx).Debug("pod network metrics", "sandbox", sb.ID, "error", err)
			} else if iface := stats.DefaultInterface(ifaces); iface != nil {
				ms := stats.NewMetricSet(time.Now(), md.GetName(), md.GetNamespace(), "", sb.ID, "")
				ms.Network(*iface)
				pod.Metrics = ms.Metrics()
			}
		}
		for _, c := range bySandbox[sb.ID] {
			tm, ok := raw[c.ID]
			if !ok {
				continue // not running: no cgroup to read
			}
			m, err := store.DecodeContainer(c)
			if err != nil {
				continue
			}
			image := m.Config.GetImage().GetUserSpecifiedImage()
			if image == "" {
				image = m.Config.GetImage().GetImage()
			}
			ms := stats.NewMetricSet(time.Now(), md.GetName(), md.GetNamespace(), m.Config.GetMetadata().GetName(), m.ID, image)
			s.containerMetrics(ctx, ms, c, m, tm)
			pod.ContainerMetrics = append(pod.ContainerMetrics, &runtime.ContainerMetrics{ContainerId: m.ID, Metrics: ms.Metrics()})
		}
		out = append(out, pod)
	}
	return out, nil
}

// containerMetrics adds one running container's series to ms.
func (s *Server) containerMetrics(ctx context.Context, ms *stats.MetricSet, rec containers.Container, m *store.Container, tm taskMetric) {
	ms.Lifetime(time.Now(), time.Unix(0, m.StartedAt))
	ms.Cgroup(tm.v)
	var spec *specs.Spec
	if rec.Spec != nil {
		if v, err := typeurl.UnmarshalAny(rec.Spec); err == nil {
			spec, _ = v.(*specs.Spec)
		}
	}
	ms.Spec(spec)
	s.filesystemMetrics(ctx, ms, rec)
	resp, err := s.client.TaskService().ListPids(ctx, &tasksapi.ListPidsRequest{ContainerID: rec.ID})
	if err != nil {
		logging.G(ctx).Debug("container pids for descriptor metrics", "container", rec.ID, "error", err)
		return
	}
	var fds, sockets uint64
	for _, p := range resp.GetProcesses() {
		f, so := stats.CountOpenFiles(fmt.Sprintf("/proc/%d/fd", p.GetPid()))
		fds += f
		sockets += so
	}
	ms.OpenFiles(fds, sockets)
}

// filesystemMetrics reports the container's writable layer (its
// snapshot's usage) on the image filesystem, whose size is the limit.
func (s *Server) filesystemMetrics(ctx context.Context, ms *stats.MetricSet, rec containers.Container) {
	var st syscall.Statfs_t
	haveFS := s.cfg.ImageFSPath != "" && syscall.Statfs(s.cfg.ImageFSPath, &st) == nil
	u, err := s.client.SnapshotService(rec.Snapshotter).Usage(ctx, rec.SnapshotKey)
	if err != nil {
		logging.G(ctx).Debug("writable layer usage", "container", rec.ID, "error", err)
		if !haveFS {
			return
		}
	} else {
		ms.WritableLayer(uint64(u.Size))
	}
	if haveFS {
		ms.ImageFilesystem(st.Blocks*uint64(st.Bsize), st.Files, st.Ffree)
	}
}

// taskMetric is one task's cgroup metrics as its shim answered them: a
// *v1stats.Metrics or a *v2stats.Metrics.
type taskMetric struct {
	at time.Time
	v  any
}

// taskMetrics asks the tasks service for the metrics of the given tasks
// (all in the namespace when ids is empty), decoded.
func (s *Server) taskMetrics(ctx context.Context, ids ...string) (map[string]taskMetric, error) {
	var filters []string
	for _, id := range ids {
		filters = append(filters, fmt.Sprintf("id==%q", id))
	}
	resp, err := s.client.TaskService().Metrics(ctx, &tasksapi.MetricsRequest{Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("task metrics: %w", errgrpc.ToNative(err))
	}
	out := map[string]taskMetric{}
	for _, m := range resp.GetMetrics() {
		at := time.Now()
		if m.GetTimestamp() != nil {
			at = m.GetTimestamp().AsTime()
		}
		if m.GetData() == nil {
			continue
		}
		v, err := typeurl.UnmarshalAny(m.GetData())
		if err != nil {
			logging.G(ctx).Debug("unreadable task metrics", "task", m.GetID(), "error", err)
			continue
		}
		out[m.GetID()] = taskMetric{at: at, v: v}
	}
	return out, nil
}
