package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/image-spec/identity"
	"go.opentelemetry.io/otel/trace/noop"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/tracing"
)

// stopGateway freezes flotillad — the gateway, with every route through
// it — until the test ends or the returned function is called. The
// service processes run on.
func stopGateway(t *testing.T, d *daemon) (resume func()) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	resume = func() {
		if stopped {
			stopped = false
			_ = d.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	// Registered after the daemon's own cleanup, so run before it.
	t.Cleanup(resume)
	return resume
}

// graphClient is a containerd client of the service processes themselves,
// each call on its owner's socket, as cri's is: no gateway in the path.
func graphClient(t *testing.T, d *daemon) *containerd.Client {
	t.Helper()
	sock := func(name string) string { return filepath.Join(d.state, name+".sock") }
	g, err := rpc.NewGraph(rpc.GraphOptions{
		Processes: map[string]string{
			"metadata": sock("metadata"), "tasks": sock("tasks"), "content": sock("content"),
			"snapshotter-overlayfs": sock("snapshotter-overlayfs"),
		},
		Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	c, err := containerd.New("", containerd.WithServices(
		containerd.WithContentStore(contentproxy.NewContentStore(contentapi.NewContentClient(g))),
		containerd.WithImageClient(imagesapi.NewImagesClient(g)),
		containerd.WithContainerClient(containersapi.NewContainersClient(g)),
		containerd.WithTaskClient(tasksapi.NewTasksClient(g)),
		containerd.WithSnapshotters(map[string]snapshots.Snapshotter{"overlayfs": snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(g), "overlayfs")}),
		containerd.WithLeasesService(leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(g))),
		containerd.WithDiffClient(diffapi.NewDiffClient(g)),
		containerd.WithNamespaceClient(namespacesapi.NewNamespacesClient(g)),
	))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTasksReachMetadataWithTheGatewayStopped runs a container with
// flotillad frozen: the client calls metadata, tasks and the snapshotter
// on their own sockets, and tasks reads the container's record from
// metadata on metadata's. A hop through the gateway would hang.
func TestTasksReachMetadataWithTheGatewayStopped(t *testing.T) {
	d := startTasksDaemon(t)
	c := graphClient(t, d)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 2*time.Minute)
	defer cancel()

	resume := stopGateway(t, d)
	image, err := c.GetImage(ctx, busyboxRef)
	if err != nil {
		t.Fatalf("GetImage from metadata with the gateway stopped: %v", err)
	}
	// Prepared here rather than with WithNewSnapshot, which first asks
	// Introspection (the gateway's) what the snapshotter can do.
	diffIDs, err := image.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SnapshotService("overlayfs").Prepare(ctx, "direct1-snapshot", identity.ChainID(diffIDs).String()); err != nil {
		t.Fatalf("Prepare with the gateway stopped: %v", err)
	}
	ctr, err := c.NewContainer(ctx, "direct1",
		containerd.WithSnapshotter("overlayfs"),
		containerd.WithSnapshot("direct1-snapshot"),
		containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("echo", "no-gateway")))
	if err != nil {
		t.Fatalf("NewContainer with the gateway stopped: %v", err)
	}
	var buf syncBuffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &buf, &buf), cio.WithFIFODir(t.TempDir())))
	if err != nil {
		t.Fatalf("NewTask with the gateway stopped (tasks reads the container from metadata): %v", err)
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	select {
	case st := <-exitCh:
		if code, _, err := st.Result(); err != nil || code != 0 {
			t.Errorf("exit status %d (%v), want 0", code, err)
		}
	case <-ctx.Done():
		t.Fatal("the task never exited")
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatalf("task Delete: %v", err)
	}
	if got := buf.String(); got != "no-gateway\n" {
		t.Errorf("task output %q, want %q", got, "no-gateway\n")
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatalf("container Delete: %v", err)
	}

	// And through the gateway, once it is back, as ctr does.
	resume()
	if out := d.mustCtr("run", "--rm", busyboxRef, "direct2", "echo", "through-gateway"); out != "through-gateway\n" {
		t.Errorf("ctr run printed %q", out)
	}
	d.requireNothingLeft("default")
}

// TestCRICallsItsOwnersNotTheGateway pulls images through the gateway, as
// a kubelet does, then freezes flotillad and runs a pod and a container on
// the cri socket itself: cri reaches metadata, tasks, content and the
// snapshotter on their own sockets. Every process's spans then show who
// called whom: no service calls through the gateway, but for what the
// gateway owns (events, introspection, the version).
func TestCRICallsItsOwnersNotTheGateway(t *testing.T) {
	p := startCRIPods(t, podNetwork("flotilla-direct"), "direct", "[trace]\nfile = true\n")
	d := p.d
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)

	criSock := "unix://" + filepath.Join(d.state, "cri.sock")
	rt, err := remote.NewRemoteRuntimeService(ctx, criSock, 2*time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	images, err := remote.NewRemoteImageService(ctx, criSock, 2*time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}

	resume := stopGateway(t, d)
	if st, err := images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: p.busyboxRef}, false); err != nil || st.GetImage() == nil {
		t.Fatalf("ImageStatus with the gateway stopped: %v, %v", st, err)
	}
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "direct", Namespace: "default", Uid: "uid-direct-1"},
		LogDirectory: filepath.Join(p.work, "logs"),
	}
	podID, err := rt.RunPodSandbox(ctx, podCfg, "")
	if err != nil {
		t.Fatalf("RunPodSandbox with the gateway stopped: %v", err)
	}
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
		Command:  []string{"sleep", "300"},
		LogPath:  "sleeper.log",
	}
	ctrID, err := rt.CreateContainer(ctx, podID, ctrCfg, podCfg)
	if err != nil {
		t.Fatalf("CreateContainer with the gateway stopped: %v", err)
	}
	if err := rt.StartContainer(ctx, ctrID); err != nil {
		t.Fatalf("StartContainer with the gateway stopped: %v", err)
	}
	if stdout, _, err := rt.ExecSync(ctx, ctrID, []string{"echo", "direct"}, 30*time.Second); err != nil || string(stdout) != "direct\n" {
		t.Fatalf("ExecSync with the gateway stopped: %v (stdout %q)", err, stdout)
	}
	if err := rt.StopContainer(ctx, ctrID, 5); err != nil {
		t.Fatalf("StopContainer with the gateway stopped: %v", err)
	}
	if err := rt.RemoveContainer(ctx, ctrID); err != nil {
		t.Fatalf("RemoveContainer with the gateway stopped: %v", err)
	}
	if err := rt.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("StopPodSandbox with the gateway stopped: %v", err)
	}
	if err := rt.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("RemovePodSandbox with the gateway stopped: %v", err)
	}

	// Spans reach their files within a batch (200ms) of their end; the
	// gateway's, of the pulls, once it runs again.
	resume()
	var calls map[hop][]string
	waitFor(t, 15*time.Second, "spans of the pulls through the gateway, and of cri's calls to metadata, tasks and the snapshotter", func() bool {
		calls = hops(t, filepath.Join(d.state, "traces"))
		return slices.Contains(calls[hop{"gateway", "cri"}], "runtime.v1.ImageService/PullImage") &&
			len(calls[hop{"cri", "metadata"}]) > 0 && len(calls[hop{"cri", "tasks"}]) > 0 &&
			// A pull streams each layer to the snapshotter's own
			// Layers API as it downloads, which reads no blob.
			slices.Contains(calls[hop{"cri", "snapshotter-overlayfs"}], layersApply) &&
			len(calls[hop{"tasks", "metadata"}]) > 0
	})
	for h, names := range calls {
		if h.callee != "gateway" || h.caller == "gateway" {
			continue
		}
		for _, name := range names {
			if !gatewayOwned(name) {
				t.Errorf("%s called %s through the gateway, not on its owner's socket", h.caller, name)
			}
		}
	}
	if t.Failed() {
		for h, names := range calls {
			t.Logf("%s -> %s: %s", h.caller, h.callee, strings.Join(names, ", "))
		}
	}
}

// layersApply is the snapshotter's Layers API call a pull applies a layer
// with as it downloads.
const layersApply = "flotilla.layers.v1.Layers/Apply"

// hop is a call from one process of the graph to another.
type hop struct{ caller, callee string }

// hops reads every process's span file in dir and returns, for each pair
// of processes, the spans one served whose parent the other made: the
// calls it made to it.
func hops(t *testing.T, dir string) map[hop][]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*"+tracing.FileExt+"*"))
	var spans []tracing.FileSpan
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var s tracing.FileSpan
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				spans = append(spans, s)
			}
		}
		fh.Close()
	}
	owner := map[string]string{}
	for _, s := range spans {
		owner[s.SpanID] = strings.TrimPrefix(s.Service, "flotilla-")
	}
	out := map[hop][]string{}
	for _, s := range spans {
		caller, ok := owner[s.ParentID]
		callee := strings.TrimPrefix(s.Service, "flotilla-")
		if !ok || caller == callee {
			continue
		}
		h := hop{caller, callee}
		out[h] = append(out[h], s.Name)
	}
	for _, names := range out {
		sort.Strings(names)
	}
	return out
}

// gatewayOwned says whether a span is of a service the gateway itself owns.
func gatewayOwned(name string) bool {
	for _, svc := range rpc.GatewayServices {
		if strings.HasPrefix(name, svc+"/") {
			return true
		}
	}
	return false
}
