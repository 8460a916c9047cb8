package integration

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/flotilla-project/flotilla/internal/cninet"
)

// The CRI methods test's own CNI bridge, subnet and cgroup parent.
const (
	methodsBridge       = "flcrimeth0"
	methodsSubnet       = "10.199.93.0/24"
	methodsGateway      = "10.199.93.1"
	methodsCgroupParent = "/flotilla-cri-methods-test"
)

// TestCRIMethodsTheKubeletsGatesCall drives, with the kubelet's CRI
// client against a running pod, the methods a kubelet calls with its
// PodAndContainerStatsFromCRI and CRIListStreaming gates on, an in-place
// pod resize, and a container checkpoint: every one answers, none is
// Unimplemented.
func TestCRIMethodsTheKubeletsGatesCall(t *testing.T) {
	t.Cleanup(func() { statsRemoveCgroup(methodsCgroupParent) })
	p := startCRIPods(t, cninet.Bridge{Name: "flotilla-methods-test", Bridge: methodsBridge, Subnet: methodsSubnet, Gateway: methodsGateway}, "methods")
	rt := p.rt
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "methods", Namespace: "default", Uid: "uid-methods-1"},
		LogDirectory: filepath.Join(p.work, "logs"),
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: methodsCgroupParent},
	}
	podID := p.runPod(ctx, t, podCfg)
	ctrID := p.startContainer(ctx, t, podID, podCfg, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "busy"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef, UserSpecifiedImage: p.busyboxRef},
		Command: []string{"sh", "-c", `dd if=/dev/zero of=/fill bs=1024 count=2048 2>/dev/null
while true; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.2; done`},
		LogPath: "busy/0.log",
	})
	// Traffic on the pod's interface (refused, which is fine: the packets
	// count).
	_, _, _ = rt.ExecSync(ctx, ctrID, []string{"wget", "-T", "2", "-q", "-O", "/dev/null", "http://" + methodsGateway + ":9/"}, 10*time.Second)

	t.Run("metric descriptors name cAdvisor's series", func(t *testing.T) {
		ds, err := rt.ListMetricDescriptors(ctx)
		if err != nil {
			t.Fatalf("ListMetricDescriptors: %v", err)
		}
		names := map[string]bool{}
		for _, d := range ds {
			names[d.GetName()] = true
		}
		for _, want := range []string{"container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
			"container_fs_usage_bytes", "container_network_receive_bytes_total", "container_processes"} {
			if !names[want] {
				t.Errorf("ListMetricDescriptors has no %s (of %d)", want, len(ds))
			}
		}
	})

	t.Run("pod sandbox metrics carry the pod's network and the container's cgroup", func(t *testing.T) {
		var pod, ctr map[string]*runtimeapi.Metric
		waitFor(t, 30*time.Second, "ListPodSandboxMetrics with the pod's eth0 traffic and the container's working set and 2 MiB writable layer", func() bool {
			pms, err := rt.ListPodSandboxMetrics(ctx)
			if err != nil {
				t.Fatalf("ListPodSandboxMetrics: %v", err)
			}
			pod, ctr = nil, nil
			for _, pm := range pms {
				if pm.GetPodSandboxId() != podID {
					continue
				}
				pod = metricsByName(pm.GetMetrics())
				for _, cm := range pm.GetContainerMetrics() {
					if cm.GetContainerId() == ctrID {
						ctr = metricsByName(cm.GetMetrics())
					}
				}
			}
			return pod["container_network_transmit_bytes_total"].GetValue().GetValue() > 0 &&
				ctr["container_memory_working_set_bytes"].GetValue().GetValue() > 0 &&
				ctr["container_fs_usage_bytes"].GetValue().GetValue() >= 2<<20
		})
		if got := pod["container_network_transmit_bytes_total"].GetLabelValues(); strings.Join(got, ",") != "methods,default,,"+podID+",,eth0" {
			t.Errorf("pod network labels %q", got)
		}
		if got := ctr["container_memory_working_set_bytes"].GetLabelValues(); strings.Join(got, ",") != "methods,default,busy,"+ctrID+","+p.busyboxRef {
			t.Errorf("container labels %q", got)
		}
		for _, name := range []string{"container_cpu_usage_seconds_total", "container_start_time_seconds", "container_processes", "container_file_descriptors", "container_fs_limit_bytes"} {
			if ctr[name] == nil {
				t.Errorf("container metrics have no %s", name)
			}
		}
		if ctr["container_start_time_seconds"].GetValue().GetValue() < uint64(time.Now().Add(-10*time.Minute).Unix()) {
			t.Errorf("container_start_time_seconds %d", ctr["container_start_time_seconds"].GetValue().GetValue())
		}
		if ctr["container_processes"].GetValue().GetValue() < 1 {
			t.Errorf("container_processes %d", ctr["container_processes"].GetValue().GetValue())
		}
	})

	t.Run("list streams answer what the lists do", func(t *testing.T) {
		// The kubelet's client falls back to the unary list when a
		// stream is Unimplemented, so the streams are called raw as well.
		conn, err := grpc.NewClient("unix://"+p.d.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		raw := runtimeapi.NewRuntimeServiceClient(conn)
		check := func(name string, ids []string, err error, want ...string) {
			t.Helper()
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			for _, w := range want {
				found := false
				for _, id := range ids {
					found = found || id == w
				}
				if !found {
					t.Errorf("%s: %v has no %s", name, ids, w)
				}
			}
		}
		cs, err := drain(raw.StreamContainers(ctx, &runtimeapi.StreamContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: podID}}))
		check("StreamContainers", mapIDs(cs, func(r *runtimeapi.StreamContainersResponse) (ids []string) {
			for _, c := range r.GetContainers() {
				ids = append(ids, c.GetId())
			}
			return
		}), err, ctrID)
		ps, err := drain(raw.StreamPodSandboxes(ctx, &runtimeapi.StreamPodSandboxesRequest{}))
		check("StreamPodSandboxes", mapIDs(ps, func(r *runtimeapi.StreamPodSandboxesResponse) (ids []string) {
			for _, c := range r.GetPodSandboxes() {
				ids = append(ids, c.GetId())
			}
			return
		}), err, podID)
		css, err := drain(raw.StreamContainerStats(ctx, &runtimeapi.StreamContainerStatsRequest{}))
		check("StreamContainerStats", mapIDs(css, func(r *runtimeapi.StreamContainerStatsResponse) (ids []string) {
			for _, c := range r.GetContainerStats() {
				ids = append(ids, c.GetAttributes().GetId())
			}
			return
		}), err, ctrID)
		pss, err := drain(raw.StreamPodSandboxStats(ctx, &runtimeapi.StreamPodSandboxStatsRequest{}))
		check("StreamPodSandboxStats", mapIDs(pss, func(r *runtimeapi.StreamPodSandboxStatsResponse) (ids []string) {
			for _, c := range r.GetPodSandboxStats() {
				ids = append(ids, c.GetAttributes().GetId())
			}
			return
		}), err, podID)
		pms, err := drain(raw.StreamPodSandboxMetrics(ctx, &runtimeapi.StreamPodSandboxMetricsRequest{}))
		check("StreamPodSandboxMetrics", mapIDs(pms, func(r *runtimeapi.StreamPodSandboxMetricsResponse) (ids []string) {
			for _, c := range r.GetPodSandboxMetrics() {
				ids = append(ids, c.GetPodSandboxId())
			}
			return
		}), err, podID)

		// And the kubelet's client with streaming on, as with the
		// CRIListStreaming gate.
		srt, err := remote.NewRemoteRuntimeService(ctx, "unix://"+p.d.address, 2*time.Minute, noop.NewTracerProvider(), true)
		if err != nil {
			t.Fatal(err)
		}
		ctrs, err := srt.ListContainers(ctx, &runtimeapi.ContainerFilter{Id: ctrID})
		if err != nil || len(ctrs) != 1 || ctrs[0].GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("streaming ListContainers: %v, %v", ctrs, err)
		}
		stats, err := srt.ListPodSandboxStats(ctx, &runtimeapi.PodSandboxStatsFilter{Id: podID})
		if err != nil || len(stats) != 1 || len(stats[0].GetLinux().GetContainers()) != 1 {
			t.Errorf("streaming ListPodSandboxStats: %v, %v", stats, err)
		}
	})

	t.Run("pod resize is recorded and written to the pod cgroup", func(t *testing.T) {
		_, err := rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{
			PodSandboxId: podID,
			Resources:    &runtimeapi.LinuxContainerResources{CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: 192 << 20},
			Overhead:     &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20},
		})
		if err != nil {
			t.Fatalf("UpdatePodSandboxResources: %v", err)
		}
		for file, want := range map[string]string{
			"memory/" + methodsCgroupParent + "/memory.limit_in_bytes": "268435456",
			"cpu/" + methodsCgroupParent + "/cpu.cfs_quota_us":         "50000",
			"cpu/" + methodsCgroupParent + "/cpu.shares":               "512",
		} {
			b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", file))
			if err != nil {
				t.Errorf("pod cgroup: %v", err)
				continue
			}
			if got := strings.TrimSpace(string(b)); got != want {
				t.Errorf("%s = %s after the resize, want %s", file, got, want)
			}
		}
		_, err = rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "no-such-pod", Resources: &runtimeapi.LinuxContainerResources{}})
		if status.Code(err) != codes.NotFound {
			t.Errorf("UpdatePodSandboxResources of an unknown pod: %v, want NotFound", err)
		}
	})

	t.Run("checkpoint answers why it cannot run here", func(t *testing.T) {
		err := rt.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: ctrID, Location: filepath.Join(p.work, "checkpoint.tar")})
		if err == nil {
			t.Fatal("CheckpointContainer succeeded, yet no archive is written")
		}
		if status.Code(err) == codes.Unimplemented && !strings.Contains(status.Convert(err).Message(), "checkpoint") {
			t.Errorf("CheckpointContainer: %v; want a reason, not a bare Unimplemented", err)
		}
		if out, cerr := exec.Command("criu", "check").CombinedOutput(); cerr != nil {
			// CRIU cannot run on this kernel (or is not installed):
			// the answer is a failed precondition saying so.
			t.Logf("criu check: %v: %s", cerr, firstLine(string(out)))
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CRIU") {
				t.Errorf("CheckpointContainer: %v; want FailedPrecondition naming CRIU", err)
			}
		}
		t.Logf("CheckpointContainer: %v", err)
	})
}

func metricsByName(ms []*runtimeapi.Metric) map[string]*runtimeapi.Metric {
	out := map[string]*runtimeapi.Metric{}
	for _, m := range ms {
		if _, ok := out[m.GetName()]; !ok {
			out[m.GetName()] = m
		}
	}
	return out
}

// drain reads a server stream to its end.
func drain[T any](stream grpc.ServerStreamingClient[T], err error) ([]*T, error) {
	if err != nil {
		return nil, err
	}
	var out []*T
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func mapIDs[T any](msgs []*T, ids func(*T) []string) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, ids(m)...)
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
