package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/cninet"
)

// The stats test's own CNI bridge, subnet and cgroup parent, apart from
// the pod lifecycle test's.
const (
	statsBridge       = "flcristat0"
	statsSubnet       = "10.199.78.0/24"
	statsGateway      = "10.199.78.1"
	statsCgroupParent = "/flotilla-cri-stats-test"
)

// TestCRIStatsResourcesLogsAndEventsThroughGateway drives, with the
// kubelet's CRI client on the gateway socket, what a kubelet does to a
// running pod besides its lifecycle: it watches container events, reads
// container and pod stats (CPU, memory, writable layer, network), changes
// a container's memory limit, rotates its log, and asks for the runtime
// config.
func TestCRIStatsResourcesLogsAndEventsThroughGateway(t *testing.T) {
	// Registered first, so it runs last: after the daemon stopped and the
	// bridge is gone.
	t.Cleanup(func() { statsRemoveCgroup(statsCgroupParent) })
	p := startCRIPods(t, cninet.Bridge{Name: "flotilla-stats-test", Bridge: statsBridge, Subnet: statsSubnet, Gateway: statsGateway}, "stats")
	d, rt, busyboxRef := p.d, p.rt, p.busyboxRef
	logDir := filepath.Join(p.work, "logs")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The runtime config: cgroupfs, and a pod CIDR is accepted.
	rc, err := rt.RuntimeConfig(ctx)
	if err != nil {
		t.Fatalf("RuntimeConfig: %v", err)
	}
	if got := rc.GetLinux().GetCgroupDriver(); got != runtimeapi.CgroupDriver_CGROUPFS {
		t.Errorf("RuntimeConfig cgroup driver %v, want CGROUPFS", got)
	}
	if err := rt.UpdateRuntimeConfig(ctx, &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: statsSubnet}}); err != nil {
		t.Errorf("UpdateRuntimeConfig with a pod CIDR: %v", err)
	}

	// Container events, from before the pod exists; the stream's header
	// says its subscription is live.
	events := statsWatchEvents(ctx, t, rt)

	p.pullImages(ctx, t)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "stats", Namespace: "default", Uid: "uid-stats-1"},
		Hostname:     "stats-host",
		LogDirectory: logDir,
		Labels:       map[string]string{"app": "stats"},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: statsCgroupParent},
	}
	podID := p.runPod(ctx, t, podCfg)

	// The container fills 2 MiB of its writable layer, then burns a
	// little CPU and logs a tick five times a second.
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "busy"},
		Image:    &runtimeapi.ImageSpec{Image: busyboxRef},
		Command: []string{"sh", "-c", `dd if=/dev/zero of=/fill bs=1024 count=2048 2>/dev/null; n=0
while true; do n=$((n+1)); echo tick $n; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.2; done`},
		LogPath: "busy/0.log",
		Labels:  map[string]string{"tier": "stats"},
	}
	ctrID, err := rt.CreateContainer(ctx, podID, ctrCfg, podCfg)
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if err := rt.StartContainer(ctx, ctrID); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	logPath := filepath.Join(logDir, "busy/0.log")
	tick := regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\S+Z stdout F tick \d+$`)
	waitFor(t, 30*time.Second, "tick lines in "+logPath, func() bool {
		b, _ := os.ReadFile(logPath)
		return tick.Match(b)
	})

	events.expect(t, podID, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
	ev := events.expect(t, ctrID, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
	if ev.GetPodSandboxStatus().GetId() != podID || len(ev.GetContainersStatuses()) != 1 || ev.GetContainersStatuses()[0].GetId() != ctrID {
		t.Errorf("the container's STARTED event does not carry its pod's status: pod %v, containers %v", ev.GetPodSandboxStatus(), ev.GetContainersStatuses())
	}

	t.Run("container stats are non-zero", func(t *testing.T) {
		var st *runtimeapi.ContainerStats
		waitFor(t, 20*time.Second, "ContainerStats with CPU time, working set and the 2 MiB writable layer", func() bool {
			st, err = rt.ContainerStats(ctx, ctrID)
			return err == nil && st.GetCpu().GetUsageCoreNanoSeconds().GetValue() > 0 &&
				st.GetMemory().GetWorkingSetBytes().GetValue() > 0 &&
				st.GetWritableLayer().GetUsedBytes().GetValue() >= 2<<20
		})
		if st.GetAttributes().GetId() != ctrID || st.GetAttributes().GetMetadata().GetName() != "busy" || st.GetAttributes().GetLabels()["tier"] != "stats" {
			t.Errorf("ContainerStats attributes: %v", st.GetAttributes())
		}
		// Nano-cores need two samples.
		waitFor(t, 20*time.Second, "ContainerStats with a CPU rate (usageNanoCores)", func() bool {
			st, err = rt.ContainerStats(ctx, ctrID)
			return err == nil && st.GetCpu().GetUsageNanoCores().GetValue() > 0
		})
		t.Logf("container: cpu %dns (%d nanocores), working set %d, writable layer %d bytes",
			st.GetCpu().GetUsageCoreNanoSeconds().GetValue(), st.GetCpu().GetUsageNanoCores().GetValue(),
			st.GetMemory().GetWorkingSetBytes().GetValue(), st.GetWritableLayer().GetUsedBytes().GetValue())

		list, err := rt.ListContainerStats(ctx, &runtimeapi.ContainerStatsFilter{PodSandboxId: podID})
		if err != nil || len(list) != 1 || list[0].GetAttributes().GetId() != ctrID || list[0].GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
			t.Errorf("ListContainerStats of the pod: %v, %v; want the running container's", list, err)
		}
		if list, err := rt.ListContainerStats(ctx, &runtimeapi.ContainerStatsFilter{LabelSelector: map[string]string{"tier": "other"}}); err != nil || len(list) != 0 {
			t.Errorf("ListContainerStats tier=other: %v, %v; want none", list, err)
		}
	})

	t.Run("pod stats are non-zero", func(t *testing.T) {
		// Traffic on the pod's interface: a connection to the bridge
		// (refused, which is fine: the packets count).
		_, _, _ = rt.ExecSync(ctx, ctrID, []string{"wget", "-T", "2", "-q", "-O", "/dev/null", "http://" + statsGateway + ":9/"}, 10*time.Second)
		var st *runtimeapi.PodSandboxStats
		waitFor(t, 20*time.Second, "PodSandboxStats with CPU, memory and eth0 traffic", func() bool {
			st, err = rt.PodSandboxStats(ctx, podID)
			l := st.GetLinux()
			return err == nil && l.GetCpu().GetUsageCoreNanoSeconds().GetValue() > 0 &&
				l.GetMemory().GetWorkingSetBytes().GetValue() > 0 &&
				l.GetNetwork().GetDefaultInterface().GetName() == "eth0" &&
				l.GetNetwork().GetDefaultInterface().GetTxBytes().GetValue() > 0
		})
		l := st.GetLinux()
		if st.GetAttributes().GetId() != podID || len(l.GetContainers()) != 1 || l.GetContainers()[0].GetAttributes().GetId() != ctrID {
			t.Errorf("PodSandboxStats attributes %v, containers %v", st.GetAttributes(), l.GetContainers())
		}
		if l.GetProcess().GetProcessCount().GetValue() < 2 {
			t.Errorf("pod process count %d, want the pause and the container's shell at least", l.GetProcess().GetProcessCount().GetValue())
		}
		t.Logf("pod: cpu %dns, working set %d, eth0 rx %d tx %d, processes %d",
			l.GetCpu().GetUsageCoreNanoSeconds().GetValue(), l.GetMemory().GetWorkingSetBytes().GetValue(),
			l.GetNetwork().GetDefaultInterface().GetRxBytes().GetValue(), l.GetNetwork().GetDefaultInterface().GetTxBytes().GetValue(),
			l.GetProcess().GetProcessCount().GetValue())
		list, err := rt.ListPodSandboxStats(ctx, &runtimeapi.PodSandboxStatsFilter{LabelSelector: map[string]string{"app": "stats"}})
		if err != nil || len(list) != 1 || list[0].GetAttributes().GetId() != podID || list[0].GetLinux().GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
			t.Errorf("ListPodSandboxStats app=stats: %v, %v; want the pod's", list, err)
		}
	})

	t.Run("memory limit update reaches the cgroup", func(t *testing.T) {
		const limit = 96 << 20
		if err := rt.UpdateContainerResources(ctx, ctrID, &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: limit}}); err != nil {
			t.Fatalf("UpdateContainerResources: %v", err)
		}
		file := statsMemoryLimitFile(t, taskPid(t, d, ctrID))
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(limit) {
			t.Fatalf("%s after UpdateContainerResources: %s, want %d", file, got, limit)
		}
		st, err := rt.ContainerStats(ctx, ctrID)
		if err != nil {
			t.Fatal(err)
		}
		if avail := st.GetMemory().GetAvailableBytes(); avail == nil || avail.GetValue() == 0 || avail.GetValue() > limit {
			t.Errorf("available memory after the update: %v, want under the %d limit", avail, limit)
		}
		// The record holds it too: a spec read back has the limit.
		kctx := namespaces.WithNamespace(ctx, "k8s.io")
		c, err := d.client().LoadContainer(kctx, ctrID)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := c.Spec(kctx)
		if err != nil {
			t.Fatal(err)
		}
		if m := spec.Linux.Resources.Memory; m == nil || m.Limit == nil || *m.Limit != limit {
			t.Errorf("the container's spec after the update has memory %+v", m)
		}
	})

	t.Run("reopened log goes to a new file", func(t *testing.T) {
		rotated := logPath + ".1"
		if err := os.Rename(logPath, rotated); err != nil {
			t.Fatal(err)
		}
		if err := rt.ReopenContainerLog(ctx, ctrID); err != nil {
			t.Fatalf("ReopenContainerLog: %v", err)
		}
		waitFor(t, 10*time.Second, "tick lines in a new "+logPath, func() bool {
			b, _ := os.ReadFile(logPath)
			return tick.Match(b)
		})
		before, _ := os.ReadFile(rotated)
		time.Sleep(time.Second)
		after, _ := os.ReadFile(rotated)
		if !bytes.Equal(before, after) {
			t.Errorf("the rotated log still grows after ReopenContainerLog")
		}
	})

	if err := rt.StopContainer(ctx, ctrID, 2); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	ev = events.expect(t, ctrID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
	if cs := ev.GetContainersStatuses(); len(cs) != 1 || cs[0].GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("the STOPPED event's container status: %v, want EXITED", cs)
	}
	if err := rt.RemoveContainer(ctx, ctrID); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	events.expect(t, ctrID, runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT)
	if err := rt.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	events.expect(t, podID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT)
}

// statsEvents collects a GetContainerEvents stream.
type statsEvents struct {
	mu   sync.Mutex
	got  []*runtimeapi.ContainerEventResponse
	errs error
}

func statsWatchEvents(ctx context.Context, t *testing.T, rt internalapi.RuntimeService) *statsEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	e := &statsEvents{}
	ch := make(chan *runtimeapi.ContainerEventResponse, 64)
	established := make(chan error, 1)
	go func() {
		err := rt.GetContainerEvents(ctx, ch, func(s runtimeapi.RuntimeService_GetContainerEventsClient) {
			_, err := s.Header()
			established <- err
		})
		select {
		case established <- err:
		default:
		}
		e.mu.Lock()
		e.errs = err
		e.mu.Unlock()
	}()
	go func() {
		for {
			select {
			case ev := <-ch:
				e.mu.Lock()
				e.got = append(e.got, ev)
				e.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case err := <-established:
		if err != nil {
			t.Fatalf("GetContainerEvents: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("GetContainerEvents: no stream header within 30s")
	}
	return e
}

// expect waits for the events of id, in order (others may come between),
// and returns the last.
func (e *statsEvents) expect(t *testing.T, id string, types ...runtimeapi.ContainerEventType) *runtimeapi.ContainerEventResponse {
	t.Helper()
	var last *runtimeapi.ContainerEventResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.mu.Lock()
		var seen []string
		want := 0
		for _, ev := range e.got {
			if ev.GetContainerId() != id {
				continue
			}
			seen = append(seen, ev.GetContainerEventType().String())
			if want < len(types) && ev.GetContainerEventType() == types[want] {
				want++
				last = ev
			}
		}
		streamErr := e.errs
		e.mu.Unlock()
		if want == len(types) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("events of %s: saw %v, want %v in order (stream error: %v)", id[:12], seen, types, streamErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// statsMemoryLimitFile is the memory limit file of a process's cgroup:
// memory.limit_in_bytes in the v1 memory hierarchy when the host mounts
// one (runc uses it then), else memory.max in the unified hierarchy.
func statsMemoryLimitFile(t *testing.T, pid uint32) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var unified string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				return filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes")
			}
		}
		if parts[0] == "0" {
			unified = parts[2]
		}
	}
	return filepath.Join("/sys/fs/cgroup", unified, "memory.max")
}

// statsRemoveCgroup removes a (by then empty) cgroup from the unified
// hierarchy and from every v1 hierarchy.
func statsRemoveCgroup(path string) {
	_ = os.Remove(filepath.Join("/sys/fs/cgroup", path))
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		_ = os.Remove(filepath.Join("/sys/fs/cgroup", e.Name(), path))
	}
}
