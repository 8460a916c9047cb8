package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// nriEvent is one lifecycle event a test plugin saw.
type nriEvent struct {
	kind, pod, podName, ctr, ctrName string
}

// nriPlugin is an NRI plugin run in the test process with NRI's stub: it
// records what it sees and adjusts containers named adjust.
type nriPlugin struct {
	adjust func(*api.PodSandbox, *api.Container) *api.ContainerAdjustment
	// refuse names a container whose creation the plugin fails.
	refuse string

	mu         sync.Mutex
	events     []nriEvent
	syncedPods []string
	syncedCtrs []string
	// podCPUShares is what the last UpdatePodSandbox asked for.
	podCPUShares uint64
	synced       chan struct{}
	stub         stub.Stub
}

// startNRIPlugin connects a plugin to the NRI socket and returns once the
// runtime has synchronised it; it disconnects when the test ends.
func startNRIPlugin(t *testing.T, socket, name, idx string, adjust func(*api.PodSandbox, *api.Container) *api.ContainerAdjustment) *nriPlugin {
	t.Helper()
	p := &nriPlugin{adjust: adjust, synced: make(chan struct{})}
	s, err := stub.New(p, stub.WithPluginName(name), stub.WithPluginIdx(idx), stub.WithSocketPath(socket))
	if err != nil {
		t.Fatalf("NRI stub: %v", err)
	}
	p.stub = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	})
	select {
	case <-p.synced:
	case err := <-done:
		t.Fatalf("NRI plugin %s stopped before it was synchronised: %v", name, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("NRI plugin %s was not synchronised within 20s", name)
	}
	return p
}

func (p *nriPlugin) record(kind string, pod *api.PodSandbox, ctr *api.Container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, nriEvent{kind: kind, pod: pod.GetId(), podName: pod.GetName(), ctr: ctr.GetId(), ctrName: ctr.GetName()})
}

// kinds lists the events about obj (a pod or container ID) in order.
func (p *nriPlugin) kinds(obj string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range p.events {
		if e.ctr == obj || e.ctr == "" && e.pod == obj {
			out = append(out, e.kind)
		}
	}
	return out
}

func (p *nriPlugin) find(kind, obj string) (nriEvent, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.events {
		if e.kind == kind && (e.ctr == obj || e.pod == obj) {
			return e, true
		}
	}
	return nriEvent{}, false
}

func (p *nriPlugin) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pod := range pods {
		p.syncedPods = append(p.syncedPods, pod.GetId())
	}
	for _, c := range ctrs {
		p.syncedCtrs = append(p.syncedCtrs, c.GetId())
	}
	close(p.synced)
	return nil, nil
}

func (p *nriPlugin) RunPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("RunPodSandbox", pod, nil)
	return nil
}

func (p *nriPlugin) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("StopPodSandbox", pod, nil)
	return nil
}

func (p *nriPlugin) UpdatePodSandbox(_ context.Context, pod *api.PodSandbox, _, res *api.LinuxResources) error {
	p.record("UpdatePodSandbox", pod, nil)
	p.mu.Lock()
	p.podCPUShares = res.GetCpu().GetShares().GetValue()
	p.mu.Unlock()
	return nil
}

func (p *nriPlugin) PostUpdatePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("PostUpdatePodSandbox", pod, nil)
	return nil
}

func (p *nriPlugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("RemovePodSandbox", pod, nil)
	return nil
}

func (p *nriPlugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	p.record("CreateContainer", pod, ctr)
	if ctr.GetName() == p.refuse {
		return nil, nil, fmt.Errorf("container %s refused", ctr.GetName())
	}
	if p.adjust == nil {
		return nil, nil, nil
	}
	return p.adjust(pod, ctr), nil, nil
}

func (p *nriPlugin) PostCreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("PostCreateContainer", pod, ctr)
	return nil
}

func (p *nriPlugin) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("StartContainer", pod, ctr)
	return nil
}

func (p *nriPlugin) PostStartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("PostStartContainer", pod, ctr)
	return nil
}

func (p *nriPlugin) UpdateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container, _ *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	p.record("UpdateContainer", pod, ctr)
	return nil, nil
}

func (p *nriPlugin) PostUpdateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("PostUpdateContainer", pod, ctr)
	return nil
}

func (p *nriPlugin) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.record("StopContainer", pod, ctr)
	return nil, nil
}

func (p *nriPlugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("RemoveContainer", pod, ctr)
	return nil
}

// TestNRIPluginSeesLifecycleAndAdjustsContainers connects an NRI plugin
// (NRI's own stub) to the cri service's NRI socket and drives a pod and
// a container through the kubelet's CRI client: the plugin hears every
// lifecycle step in order, its adjustment (an environment variable, a
// bind mount, an annotation) is in the running container, a plugin that
// connects later is synchronised with the pod and container there are,
// and a plugin's own resource update reaches the container's cgroup.
func TestNRIPluginSeesLifecycleAndAdjustsContainers(t *testing.T) {
	p := startCRIPods(t, podNetwork("flotilla-nri"), "nri")
	socket := filepath.Join(p.d.state, "nri.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)

	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "hello"), []byte("from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	first := startNRIPlugin(t, socket, "flotilla-test", "10", func(_ *api.PodSandbox, ctr *api.Container) *api.ContainerAdjustment {
		if ctr.GetName() != "adjusted" {
			return nil
		}
		adj := &api.ContainerAdjustment{}
		adj.AddEnv("NRI_INJECTED", "by-plugin")
		adj.AddMount(&api.Mount{Destination: "/nri", Source: hostDir, Type: "bind", Options: []string{"rbind", "ro"}})
		adj.AddAnnotation("flotilla.test/nri", "adjusted")
		return adj
	})

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "nri-pod", Namespace: "nri-ns", Uid: "uid-nri-1"},
		LogDirectory: filepath.Join(p.work, "logs"),
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/flotilla-nri-test"},
	}
	t.Cleanup(func() { _ = os.Remove("/sys/fs/cgroup/flotilla-nri-test") })
	podID := p.runPod(ctx, t, podCfg)
	if e, ok := first.find("RunPodSandbox", podID); !ok || e.podName != "nri-pod" {
		t.Fatalf("the plugin's RunPodSandbox: %+v, %v; want pod %s named nri-pod", e, ok, podID)
	}
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "adjusted"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
		Command:  []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
		Envs:     []*runtimeapi.KeyValue{{Key: "OWN", Value: []byte("kept")}},
	}
	ctrID := p.startContainer(ctx, t, podID, podCfg, ctrCfg)

	stdout, stderr, err := p.rt.ExecSync(ctx, ctrID, []string{"sh", "-c", "echo $NRI_INJECTED $OWN; cat /nri/hello"}, 10*time.Second)
	if err != nil {
		t.Fatalf("ExecSync: %v (stderr %q)", err, stderr)
	}
	if got, want := strings.TrimSpace(string(stdout)), "by-plugin kept\nfrom the host"; got != want {
		t.Fatalf("inside the container: %q, want %q (the plugin's env var and mount, the request's env var)", got, want)
	}
	if _, _, err := p.rt.ExecSync(ctx, ctrID, []string{"sh", "-c", "touch /nri/x"}, 10*time.Second); err == nil {
		t.Error("the plugin's read-only mount was writable")
	}

	if err := p.rt.UpdateContainerResources(ctx, ctrID, &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}

	// A plugin connecting now learns of the pod and container there are.
	second := startNRIPlugin(t, socket, "flotilla-late", "20", nil)
	second.mu.Lock()
	syncedPods, syncedCtrs := slices.Clone(second.syncedPods), slices.Clone(second.syncedCtrs)
	second.mu.Unlock()
	if !slices.Contains(syncedPods, podID) || !slices.Contains(syncedCtrs, ctrID) {
		t.Fatalf("a late plugin was synchronised with pods %v and containers %v; want pod %s and container %s", syncedPods, syncedCtrs, podID, ctrID)
	}

	// A plugin's own update reaches the container's cgroup.
	limit := int64(48 << 20)
	failed, err := second.stub.UpdateContainers([]*api.ContainerUpdate{{
		ContainerId: ctrID,
		Linux:       &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(&limit)}}},
	}})
	if err != nil || len(failed) > 0 {
		t.Fatalf("plugin's UpdateContainers: %v, failed %v", err, failed)
	}
	limitFile := statsMemoryLimitFile(t, taskPid(t, p.d, ctrID))
	if b, err := os.ReadFile(limitFile); err != nil || strings.TrimSpace(string(b)) != strconv.FormatInt(limit, 10) {
		t.Errorf("%s after the plugin's update: %q, %v; want %d", limitFile, b, err, limit)
	}

	// An in-place pod resize is told to plugins before and after, as
	// containerd's CRI tells them.
	if _, err := p.rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: podID, Resources: &runtimeapi.LinuxContainerResources{CpuShares: 384},
	}); err != nil {
		t.Fatalf("UpdatePodSandboxResources: %v", err)
	}
	first.mu.Lock()
	shares := first.podCPUShares
	first.mu.Unlock()
	if shares != 384 {
		t.Errorf("the plugin's UpdatePodSandbox asked for %d CPU shares, want 384", shares)
	}

	if err := p.rt.StopContainer(ctx, ctrID, 10); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if err := p.rt.RemoveContainer(ctx, ctrID); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if err := p.rt.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if err := p.rt.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("second StopPodSandbox: %v", err)
	}
	if err := p.rt.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}

	wantCtr := []string{"CreateContainer", "PostCreateContainer", "StartContainer", "PostStartContainer",
		"UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer"}
	waitFor(t, 10*time.Second, "the first plugin to see the container's whole lifecycle", func() bool {
		return slices.Equal(first.kinds(ctrID), wantCtr)
	})
	if e, _ := first.find("CreateContainer", ctrID); e.ctrName != "adjusted" || e.pod != podID {
		t.Errorf("CreateContainer event: %+v; want container adjusted in pod %s", e, podID)
	}
	wantPod := []string{"RunPodSandbox", "UpdatePodSandbox", "PostUpdatePodSandbox", "StopPodSandbox", "RemovePodSandbox"}
	if got := first.kinds(podID); !slices.Equal(got, wantPod) {
		t.Errorf("the first plugin saw the pod %v, want %v (one stop for two StopPodSandbox calls)", got, wantPod)
	}
	if got, want := second.kinds(ctrID), []string{"StopContainer", "RemoveContainer"}; !slices.Equal(got, want) {
		t.Errorf("the late plugin saw the container %v, want %v", got, want)
	}
}

// TestNRIPluginHearsOfAContainerThatExits checks that a container exiting
// by itself reaches plugins as StopContainer before anyone removes it,
// and that a plugin failing CreateContainer fails it, leaves nothing,
// and hears the container stop and go.
func TestNRIPluginHearsOfAContainerThatExits(t *testing.T) {
	p := startCRIPods(t, podNetwork("flotilla-nri"), "nri")
	socket := filepath.Join(p.d.state, "nri.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)
	plugin := startNRIPlugin(t, socket, "flotilla-exit", "10", nil)
	plugin.mu.Lock()
	plugin.refuse = "refused"
	plugin.mu.Unlock()
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "nri-exit", Namespace: "nri-ns", Uid: "uid-nri-2"},
	}
	podID := p.runPod(ctx, t, podCfg)
	ctrID := p.startContainer(ctx, t, podID, podCfg, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "exits"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
		Command:  []string{"sh", "-c", "exit 3"},
	})
	waitFor(t, 30*time.Second, "StopContainer for the container that exited", func() bool {
		return slices.Contains(plugin.kinds(ctrID), "StopContainer")
	})

	_, err := p.rt.CreateContainer(ctx, podID, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "refused"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
		Command:  []string{"true"},
	}, podCfg)
	if err == nil {
		t.Fatal("CreateContainer succeeded though the plugin failed it")
	}
	ctrs, err := p.rt.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: podID})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ctrs {
		if c.GetMetadata().GetName() == "refused" {
			t.Fatalf("the refused container was left behind: %s", c.GetId())
		}
	}
	var refusedID string
	plugin.mu.Lock()
	for _, e := range plugin.events {
		if e.kind == "CreateContainer" && e.ctrName == "refused" {
			refusedID = e.ctr
		}
	}
	plugin.mu.Unlock()
	if got, want := plugin.kinds(refusedID), []string{"CreateContainer", "StopContainer", "RemoveContainer"}; refusedID == "" || !slices.Equal(got, want) {
		t.Errorf("the plugin saw the refused container (%q) %v, want %v", refusedID, got, want)
	}
}
