package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"go.opentelemetry.io/otel/trace/noop"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
)

// TestCRIPodLifecycleThroughGateway runs a pod the way a kubelet does,
// with the kubelet's own CRI client on the gateway socket: pull the pause
// and busybox images from a local registry, run a sandbox on a CNI bridge
// network, run a container whose output lands in the CRI log file, exec
// in it, kill -9 the cri process in the middle and expect it to pick up
// where it was, then stop and remove everything and expect nothing left.
func TestCRIPodLifecycleThroughGateway(t *testing.T) {
	p := startCRIPods(t, podNetwork("flotilla-test"), "test")
	d, rt, busyboxRef := p.d, p.rt, p.busyboxRef
	logDir := filepath.Join(p.work, "logs")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "web", Namespace: "default", Uid: "uid-web-1"},
		Hostname:     "web-host",
		LogDirectory: logDir,
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.199.0.10"}, Searches: []string{"default.svc.cluster.local"}},
		Labels:       map[string]string{"app": "web"},
		Annotations:  map[string]string{"note": "flotilla"},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/flotilla-cri-test"},
	}
	t.Cleanup(func() { _ = os.Remove("/sys/fs/cgroup/flotilla-cri-test") })
	podID := p.runPod(ctx, t, podCfg)
	pst, err := rt.PodSandboxStatus(ctx, podID, false)
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if pst.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("sandbox state after RunPodSandbox: %v, want READY", pst.GetStatus().GetState())
	}
	_, subnet, _ := net.ParseCIDR(podSubnet)
	podIP := net.ParseIP(pst.GetStatus().GetNetwork().GetIp())
	if podIP == nil || !subnet.Contains(podIP) {
		t.Fatalf("pod IP %q is not in the bridge subnet %s", pst.GetStatus().GetNetwork().GetIp(), podSubnet)
	}
	if pst.GetStatus().GetLabels()["app"] != "web" || pst.GetStatus().GetAnnotations()["note"] != "flotilla" {
		t.Fatalf("sandbox labels/annotations: %v %v", pst.GetStatus().GetLabels(), pst.GetStatus().GetAnnotations())
	}
	if pods, err := rt.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": "web"}}); err != nil || len(pods) != 1 || pods[0].Id != podID {
		t.Fatalf("ListPodSandbox app=web: %v, %v; want the pod", pods, err)
	}
	if pods, err := rt.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": "db"}}); err != nil || len(pods) != 0 {
		t.Fatalf("ListPodSandbox app=db: %v, %v; want none", pods, err)
	}
	if _, err := rt.RunPodSandbox(ctx, podCfg, ""); err == nil {
		t.Fatal("a second RunPodSandbox with the same metadata succeeded; the name must be unique")
	}
	pausePid := taskPid(t, d, podID)
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pausePid)); !strings.Contains(string(cg), "/flotilla-cri-test/"+podID) {
		t.Errorf("pause process cgroup %q is not under the pod's cgroup parent", cg)
	}

	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Image:    &runtimeapi.ImageSpec{Image: busyboxRef},
		// A TERM trap proves StopContainer's signal and, after the cri
		// process restarts, that the log is written still.
		Command: []string{"sh", "-c", `echo hello; trap 'echo bye; exit 0' TERM; while true; do sleep 1; done`},
		Envs:    []*runtimeapi.KeyValue{{Key: "GREETING", Value: []byte("hi")}},
		LogPath: "app/0.log",
		Labels:  map[string]string{"tier": "front"},
	}
	ctrID, err := rt.CreateContainer(ctx, podID, ctrCfg, podCfg)
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if st := containerState(ctx, t, rt, ctrID); st != runtimeapi.ContainerState_CONTAINER_CREATED {
		t.Fatalf("state after CreateContainer: %v", st)
	}
	if err := rt.StartContainer(ctx, ctrID); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	logPath := filepath.Join(logDir, "app/0.log")
	criLine := func(stream, text string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\S+Z ` + stream + ` F ` + regexp.QuoteMeta(text) + `$`)
	}
	waitFor(t, 30*time.Second, "a CRI log line with hello in "+logPath, func() bool {
		b, _ := os.ReadFile(logPath)
		return criLine("stdout", "hello").Match(b)
	})
	cst, err := rt.ContainerStatus(ctx, ctrID, false)
	if err != nil {
		t.Fatalf("ContainerStatus: %v", err)
	}
	if s := cst.GetStatus(); s.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || s.GetLogPath() != logPath ||
		s.GetStartedAt() == 0 || s.GetImageRef() == "" || s.GetImage().GetImage() != busyboxRef {
		t.Fatalf("ContainerStatus of the running container: %v", s)
	}

	execOut := func(cmd ...string) string {
		t.Helper()
		stdout, stderr, err := rt.ExecSync(ctx, ctrID, cmd, 10*time.Second)
		if err != nil {
			t.Fatalf("ExecSync %q: %v (stderr %q)", cmd, err, stderr)
		}
		return string(stdout)
	}
	if out := execOut("sh", "-c", "echo $((6*7))"); out != "42\n" {
		t.Fatalf("ExecSync echo $((6*7)): %q, want 42", out)
	}
	if _, _, err := rt.ExecSync(ctx, ctrID, []string{"sh", "-c", "exit 3"}, 10*time.Second); err == nil || !strings.Contains(err.Error(), "3") {
		t.Fatalf("ExecSync exit 3: %v; want an error carrying exit code 3", err)
	}
	if out := execOut("hostname"); out != "web-host\n" {
		t.Errorf("hostname in the container: %q, want the pod's", out)
	}
	if out := execOut("cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 10.199.0.10") || !strings.Contains(out, "search default.svc.cluster.local") {
		t.Errorf("resolv.conf in the container:\n%s", out)
	}
	if out := execOut("sh", "-c", "echo $GREETING"); out != "hi\n" {
		t.Errorf("env GREETING in the container: %q", out)
	}
	if out := execOut("ip", "addr"); !strings.Contains(out, podIP.String()+"/") {
		t.Errorf("the container does not have the pod IP %s:\n%s", podIP, out)
	}

	// The cri process dies; its successor answers the same.
	podsBefore, _ := rt.ListPodSandbox(ctx, nil)
	ctrsBefore, _ := rt.ListContainers(ctx, nil)
	old := criPid(d)
	if old == 0 {
		t.Fatal("introspection exports no pid for the cri service")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "a new cri process", func() bool {
		p := criPid(d)
		return p != 0 && p != old
	})
	t.Logf("cri process %d killed, %d took over", old, criPid(d))
	var podsAfter []*runtimeapi.PodSandbox
	var ctrsAfter []*runtimeapi.Container
	waitFor(t, 30*time.Second, "ListPodSandbox and ListContainers after the restart", func() bool {
		var err1, err2 error
		podsAfter, err1 = rt.ListPodSandbox(ctx, nil)
		ctrsAfter, err2 = rt.ListContainers(ctx, nil)
		return err1 == nil && err2 == nil
	})
	if got, want := podSummary(podsAfter), podSummary(podsBefore); got != want || len(podsAfter) != 1 {
		t.Fatalf("ListPodSandbox after the cri restart:\n%s\nbefore:\n%s", got, want)
	}
	if got, want := ctrSummary(ctrsAfter), ctrSummary(ctrsBefore); got != want || len(ctrsAfter) != 1 {
		t.Fatalf("ListContainers after the cri restart:\n%s\nbefore:\n%s", got, want)
	}
	if out := execOut("sh", "-c", "echo $((6*7))"); out != "42\n" {
		t.Fatalf("ExecSync after the cri restart: %q, want 42", out)
	}

	if err := rt.StopContainer(ctx, ctrID, 20); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	cst, err = rt.ContainerStatus(ctx, ctrID, false)
	if err != nil {
		t.Fatalf("ContainerStatus after stop: %v", err)
	}
	if s := cst.GetStatus(); s.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || s.GetExitCode() != 0 || s.GetFinishedAt() == 0 {
		t.Fatalf("ContainerStatus after StopContainer: state %v exit %d finished %d; want EXITED 0 (the TERM trap exits 0)",
			s.GetState(), s.GetExitCode(), s.GetFinishedAt())
	}
	if b, _ := os.ReadFile(logPath); !criLine("stdout", "bye").Match(b) {
		t.Errorf("the log has no line from after the cri restart (the TERM trap's bye):\n%s", b)
	}
	if exited, err := rt.ListContainers(ctx, &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED}}); err != nil || len(exited) != 1 {
		t.Fatalf("ListContainers state=EXITED: %v, %v", exited, err)
	}
	if err := rt.RemoveContainer(ctx, ctrID); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if ctrs, err := rt.ListContainers(ctx, nil); err != nil || len(ctrs) != 0 {
		t.Fatalf("ListContainers after RemoveContainer: %v, %v", ctrs, err)
	}

	if err := rt.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if pst, err := rt.PodSandboxStatus(ctx, podID, false); err != nil || pst.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("PodSandboxStatus after StopPodSandbox: %v, %v; want NOTREADY", pst, err)
	}
	if err := rt.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("StopPodSandbox again: %v; stopping is idempotent", err)
	}
	if err := rt.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if pods, err := rt.ListPodSandbox(ctx, nil); err != nil || len(pods) != 0 {
		t.Fatalf("ListPodSandbox after RemovePodSandbox: %v, %v", pods, err)
	}
	if err := rt.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("RemovePodSandbox of a removed pod: %v; want success", err)
	}

	// Nothing is left: no netns mount, no shim, no records, no veth.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, d.dir) && strings.Contains(l, "netns") {
			t.Errorf("netns mount left behind: %s", l)
		}
	}
	for _, id := range []string{podID, ctrID} {
		if pids := podProcessesMentioning(id); len(pids) > 0 {
			t.Errorf("processes left for %s: %v", id[:12], pids)
		}
	}
	c := d.client()
	kctx := namespaces.WithNamespace(ctx, "k8s.io")
	if recs, err := c.ContainerService().List(kctx); err != nil || len(recs) != 0 {
		t.Errorf("container records left: %v, %v", recs, err)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "master", podBridge).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("veth left on %s:\n%s", podBridge, out)
	}
}

// criPid is the cri process's pid, as Introspection exports it (the cri
// service registers as a gRPC plugin, which servicePid skips); 0 when it
// cannot be read.
func criPid(d *daemon) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := d.client().IntrospectionService().Plugins(ctx, "id==cri")
	if err != nil {
		return 0
	}
	for _, p := range resp.Plugins {
		if pid, err := strconv.Atoi(p.Exports["pid"]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}

func criClients(t *testing.T, d *daemon) (internalapi.RuntimeService, internalapi.ImageManagerService) {
	t.Helper()
	ctx := context.Background()
	rt, err := remote.NewRemoteRuntimeService(ctx, "unix://"+d.address, 2*time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.NewRemoteImageService(ctx, "unix://"+d.address, 2*time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	return rt, img
}

func containerState(ctx context.Context, t *testing.T, rt internalapi.RuntimeService, id string) runtimeapi.ContainerState {
	t.Helper()
	st, err := rt.ContainerStatus(ctx, id, false)
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	return st.GetStatus().GetState()
}

func podSummary(pods []*runtimeapi.PodSandbox) string {
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "%s %s %v %d\n", p.Id, p.GetMetadata().GetName(), p.State, p.CreatedAt)
	}
	return b.String()
}

func ctrSummary(ctrs []*runtimeapi.Container) string {
	var b strings.Builder
	for _, c := range ctrs {
		fmt.Fprintf(&b, "%s %s %s %v %d\n", c.Id, c.PodSandboxId, c.GetMetadata().GetName(), c.State, c.CreatedAt)
	}
	return b.String()
}

// taskPid is the pid of a container's task in namespace k8s.io.
func taskPid(t *testing.T, d *daemon, id string) uint32 {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	c, err := d.client().LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return task.Pid()
}

// podProcessesMentioning lists processes whose command line contains s (a
// shim names its container ID).
func podProcessesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	return out
}
