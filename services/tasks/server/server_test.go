package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	api "github.com/containerd/containerd/api/services/tasks/v1"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	taskapi "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/services/tasks/shim"
)

// These tests run real containers: containerd-shim-runc-v2 (from
// $FLOTILLA_BIN or the repository's bin/) over runc, as root, with
// busybox as the container's only binary. The daemon around the tasks
// service is played by stubs: a Containers API, and the gateway's event
// endpoints (ttrpc for shims, gRPC for the tasks service itself).

const testNS = "tasks-test"

func shimBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running containers needs root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed")
	}
	if _, err := os.Stat("/usr/bin/busybox"); err != nil {
		t.Skip("busybox (static) is not installed: make test-deps")
	}
	const name = "containerd-shim-runc-v2"
	var dirs []string
	if d := os.Getenv("FLOTILLA_BIN"); d != "" {
		dirs = append(dirs, d)
	}
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, filepath.Join(wd, "..", "..", "..", "bin"))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	// Not PATH: Debian's containerd package puts its 1.6 shim there, which
	// cannot create tasks for this daemon.
	t.Skipf("%s not found in $FLOTILLA_BIN or bin/: make build", name)
	return ""
}

// alive reports whether pid runs (a zombie waiting for its reaper does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// stubContainers is the metadata service's Containers API.
type stubContainers struct {
	containersapi.UnimplementedContainersServer
	mu sync.Mutex
	cs map[string]*containersapi.Container
}

func (s *stubContainers) Get(ctx context.Context, r *containersapi.GetContainerRequest) (*containersapi.GetContainerResponse, error) {
	if ns, _ := namespaces.Namespace(ctx); ns != testNS {
		return nil, errgrpc.ToGRPC(errdefs.ErrFailedPrecondition)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.cs[r.ID]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	return &containersapi.GetContainerResponse{Container: c}, nil
}

// events records what reaches the gateway: shims through ttrpc Forward,
// the tasks service through gRPC Publish.
type events struct {
	eventsapi.UnimplementedEventsServer
	mu     sync.Mutex
	topics []string
	bodies []any
}

func (e *events) add(topic string, a *anypb.Any) {
	body, _ := typeurl.UnmarshalAny(a)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.topics = append(e.topics, topic)
	e.bodies = append(e.bodies, body)
}

// shimEvents is the gateway's ttrpc endpoint shims publish to.
type shimEvents struct{ e *events }

func (s shimEvents) Forward(_ context.Context, r *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	s.e.add(r.Envelope.Topic, r.Envelope.Event)
	return &emptypb.Empty{}, nil
}

func (e *events) Publish(_ context.Context, r *eventsapi.PublishRequest) (*emptypb.Empty, error) {
	e.add(r.Topic, r.Event)
	return &emptypb.Empty{}, nil
}

// waitTopics waits until the events of id include want, in that order.
func (e *events) waitTopics(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		got := append([]string(nil), e.topics...)
		e.mu.Unlock()
		i := 0
		for _, g := range got {
			if i < len(want) && g == want[i] {
				i++
			}
		}
		if i == len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v do not contain %v in order", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type harness struct {
	t          *testing.T
	root       string
	state      string
	cfg        shim.Config
	containers *stubContainers
	events     *events
	gwConn     eventsapi.EventsClient
	client     api.TasksClient
	manager    *shim.Manager
	stop       func()
	rootfs     string
	ctx        context.Context
	// logs carries the logger of the tasks service under test, as its
	// process's context does.
	logs context.Context
}

func newHarness(t *testing.T) *harness {
	binary := shimBinary(t)
	// Socket paths must fit in 108 bytes; test temp dirs are long.
	sock, err := os.MkdirTemp("/tmp", "ftt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	h := &harness{
		t:          t,
		root:       t.TempDir(),
		state:      t.TempDir(),
		containers: &stubContainers{cs: map[string]*containersapi.Container{}},
		events:     &events{},
		ctx:        namespaces.WithNamespace(context.Background(), testNS),
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.logs = logging.WithLogger(context.Background(), logger)
	gw := filepath.Join(sock, "gw.sock")
	gsrv := rpc.NewServer(logger)
	containersapi.RegisterContainersServer(gsrv, h.containers)
	eventsapi.RegisterEventsServer(gsrv, h.events)
	l, err := rpc.Listen(gw)
	if err != nil {
		t.Fatal(err)
	}
	go gsrv.Serve(l)
	tsrv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	ttrpcevents.RegisterTTRPCEventsService(tsrv, shimEvents{h.events})
	tl, err := rpc.Listen(gw + ".ttrpc")
	if err != nil {
		t.Fatal(err)
	}
	go tsrv.Serve(context.Background(), tl)
	t.Cleanup(func() { gsrv.Stop(); tsrv.Close() })

	gwc, err := rpc.Dial(gw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gwc.Close() })
	h.gwConn = eventsapi.NewEventsClient(gwc)
	h.cfg = shim.Config{
		Root: h.root, State: h.state,
		Address: gw, TTRPCAddress: gw + ".ttrpc",
		SocketDir: filepath.Join(sock, "s"),
		RuncRoot:  filepath.Join(sock, "runc"),
		Debug:     os.Getenv("FLOTILLA_SHIM_DEBUG") != "",
		BinDir:    filepath.Dir(binary),
	}
	h.rootfs = busyboxRootfs(t)
	h.start(containersapi.NewContainersClient(gwc), filepath.Join(sock, "tasks.sock"))
	return h
}

// start (re)starts the tasks service: a new manager that loads the state
// directory, served on socket.
func (h *harness) start(containers containersapi.ContainersClient, socket string) {
	t := h.t
	h.manager = shim.NewManager(h.logs, h.cfg, Publisher(h.gwConn))
	if err := h.manager.Load(h.logs); err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer(logging.G(h.logs))
	New(h.manager, containers).Register(srv)
	l, err := rpc.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	conn, err := rpc.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	h.client = api.NewTasksClient(conn)
	m := h.manager
	h.stop = func() {
		conn.Close()
		srv.Stop()
		m.Close()
	}
	t.Cleanup(func() {
		// Kill whatever a failed test left running.
		for _, tk := range m.List(testNS) {
			_, _ = h.client.Kill(h.ctx, &api.KillRequest{ContainerID: tk.ID, Signal: 9, All: true})
			time.Sleep(100 * time.Millisecond)
			_, _ = h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: tk.ID})
		}
		h.stop()
	})
}

// restart is a tasks process dying and the supervisor starting a new one.
func (h *harness) restart(socket string) {
	h.stop()
	gwc, err := rpc.Dial(h.cfg.Address)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { gwc.Close() })
	h.start(containersapi.NewContainersClient(gwc), socket)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// busyboxRootfs is a root filesystem with busybox as /bin/sh and friends.
func busyboxRootfs(t *testing.T) string {
	dir := t.TempDir()
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.Open("/usr/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, "bin", "busybox"), os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	for _, l := range []string{"sh", "echo", "sleep", "ls", "cat", "true"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", l)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// addContainer records a container running args.
func (h *harness) addContainer(id string, args ...string) {
	h.addContainerOpts(id, oci.WithProcessArgs(args...))
}

// addPodContainer records a container running args in the CRI pod sandbox:
// the runc shim serves the tasks of a pod in one process.
func (h *harness) addPodContainer(id, sandbox string, args ...string) {
	h.addContainerOpts(id, oci.WithProcessArgs(args...), oci.WithAnnotations(map[string]string{"io.kubernetes.cri.sandbox-id": sandbox}))
}

func (h *harness) addContainerOpts(id string, opts ...oci.SpecOpts) {
	t := h.t
	opts = append(opts, oci.WithProcessCwd("/"), oci.WithDefaultPathEnv)
	s, err := oci.GenerateSpec(h.ctx, nil, &containers.Container{ID: id}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	h.containers.mu.Lock()
	h.containers.cs[id] = &containersapi.Container{
		ID:      id,
		Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
		Spec:    &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: data},
	}
	h.containers.mu.Unlock()
}

func (h *harness) create(id, stdout string) uint32 {
	h.t.Helper()
	resp, err := h.client.Create(h.ctx, &api.CreateTaskRequest{
		ContainerID: id,
		Rootfs:      []*types.Mount{{Type: "bind", Source: h.rootfs, Options: []string{"rbind", "rw"}}},
		// The shim needs both for file:// (it panics on a file stdout
		// without stderr); ctr always gives both.
		Stdout: stdout,
		Stderr: stdout,
	})
	if err != nil {
		h.t.Fatalf("create %s: %v", id, err)
	}
	return resp.Pid
}

func (h *harness) bundleGone(id string) {
	h.t.Helper()
	bundle := filepath.Join(h.state, testNS, id)
	// The shim of a deleted task is shut down and its bundle removed just
	// after Delete answered.
	work := filepath.Join(h.root, testNS, id)
	for deadline := time.Now().Add(5 * time.Second); (fileExists(bundle) || fileExists(work)) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Lstat(bundle); !errors.Is(err, os.ErrNotExist) {
		h.t.Errorf("bundle %s left behind: %v", bundle, err)
	}
	if _, err := os.Lstat(filepath.Join(h.root, testNS, id)); !errors.Is(err, os.ErrNotExist) {
		h.t.Errorf("work directory of %s left behind: %v", id, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), bundle) {
		h.t.Errorf("rootfs of %s still mounted", id)
	}
}

func TestTaskRunsToExitWithStatusOutputAndEvents(t *testing.T) {
	h := newHarness(t)
	h.addContainer("t1", "sh", "-c", "echo hello; exit 3")
	out := filepath.Join(t.TempDir(), "stdout")
	pid := h.create("t1", "file://"+out)
	if pid == 0 {
		t.Fatal("Create returned pid 0")
	}
	if !fileExists(filepath.Join(h.cfg.RuncRoot, testNS, "t1")) {
		t.Fatalf("runc state of t1 not under the configured runc root %s", h.cfg.RuncRoot)
	}
	got, err := h.client.Get(h.ctx, &api.GetRequest{ContainerID: "t1"})
	if err != nil || got.Process.Status != taskapi.Status_CREATED {
		t.Fatalf("Get after Create = %v, %v; want CREATED", got, err)
	}
	waited := make(chan *api.WaitResponse, 1)
	go func() {
		w, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: "t1"})
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		waited <- w
	}()
	if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: "t1"}); err != nil {
		t.Fatal(err)
	}
	w := <-waited
	if w == nil || w.ExitStatus != 3 || w.ExitedAt.AsTime().IsZero() {
		t.Fatalf("Wait = %v, want exit status 3 and a time", w)
	}
	if b, _ := os.ReadFile(out); strings.TrimSpace(string(b)) != "hello" {
		t.Fatalf("stdout = %q, want hello", b)
	}
	got, err = h.client.Get(h.ctx, &api.GetRequest{ContainerID: "t1"})
	if err != nil || got.Process.Status != taskapi.Status_STOPPED || got.Process.ExitStatus != 3 {
		t.Fatalf("Get after exit = %v, %v; want STOPPED with status 3", got, err)
	}
	del, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "t1"})
	if err != nil || del.ExitStatus != 3 {
		t.Fatalf("Delete = %v, %v; want exit status 3", del, err)
	}
	h.bundleGone("t1")
	if _, err := h.client.Get(h.ctx, &api.GetRequest{ContainerID: "t1"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("Get after Delete: %v, want NotFound", err)
	}
	h.events.waitTopics(t, "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
}

func TestTaskIDIsReusableRightAfterDelete(t *testing.T) {
	h := newHarness(t)
	h.addContainer("again", "true")
	for i := 0; i < 3; i++ {
		h.create("again", "")
		if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: "again"}); err != nil {
			t.Fatal(err)
		}
		if w, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: "again"}); err != nil || w.ExitStatus != 0 {
			t.Fatalf("run %d: Wait = %v, %v", i, w, err)
		}
		if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "again"}); err != nil {
			t.Fatalf("run %d: Delete: %v", i, err)
		}
	}
	h.bundleGone("again")
	h.events.waitTopics(t, "/tasks/exit", "/tasks/delete", "/tasks/exit", "/tasks/delete", "/tasks/exit", "/tasks/delete")
}

func TestCreateRefusesMissingContainerAndDuplicateTask(t *testing.T) {
	h := newHarness(t)
	_, err := h.client.Create(h.ctx, &api.CreateTaskRequest{ContainerID: "nope"})
	if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("Create without a container: %v, want NotFound", err)
	}
	h.addContainer("dup", "sleep", "30")
	h.create("dup", "")
	_, err = h.client.Create(h.ctx, &api.CreateTaskRequest{ContainerID: "dup"})
	if !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		t.Fatalf("second Create: %v, want AlreadyExists", err)
	}
	if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "dup"}); err != nil {
		t.Fatalf("Delete of a created, never started task: %v", err)
	}
	h.bundleGone("dup")
}

func TestExecPauseResumePidsAndMetricsOnARunningTask(t *testing.T) {
	h := newHarness(t)
	h.addContainer("t2", "sleep", "300")
	h.create("t2", "")
	if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: "t2"}); err != nil {
		t.Fatal(err)
	}
	spec := `{"args":["sh","-c","echo from-exec; exit 5"],"cwd":"/","env":["PATH=/bin"]}`
	out := filepath.Join(t.TempDir(), "exec")
	if _, err := h.client.Exec(h.ctx, &api.ExecProcessRequest{
		ContainerID: "t2", ExecID: "e1", Stdout: "file://" + out, Stderr: "file://" + out,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: []byte(spec)},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: "t2", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	w, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: "t2", ExecID: "e1"})
	if err != nil || w.ExitStatus != 5 {
		t.Fatalf("exec Wait = %v, %v; want 5", w, err)
	}
	if b, _ := os.ReadFile(out); strings.TrimSpace(string(b)) != "from-exec" {
		t.Fatalf("exec stdout = %q", b)
	}
	if d, err := h.client.DeleteProcess(h.ctx, &api.DeleteProcessRequest{ContainerID: "t2", ExecID: "e1"}); err != nil || d.ExitStatus != 5 || d.ID != "e1" {
		t.Fatalf("DeleteProcess = %v, %v", d, err)
	}
	pids, err := h.client.ListPids(h.ctx, &api.ListPidsRequest{ContainerID: "t2"})
	if err != nil || len(pids.Processes) != 1 {
		t.Fatalf("ListPids = %v, %v; want the one sleep", pids, err)
	}
	if _, err := h.client.Pause(h.ctx, &api.PauseTaskRequest{ContainerID: "t2"}); err != nil {
		t.Fatal(err)
	}
	if g, _ := h.client.Get(h.ctx, &api.GetRequest{ContainerID: "t2"}); g.GetProcess().GetStatus() != taskapi.Status_PAUSED {
		t.Fatalf("status after Pause: %v", g)
	}
	if _, err := h.client.Resume(h.ctx, &api.ResumeTaskRequest{ContainerID: "t2"}); err != nil {
		t.Fatal(err)
	}
	m, err := h.client.Metrics(h.ctx, &api.MetricsRequest{Filters: []string{"id==t2"}})
	if err != nil || len(m.Metrics) != 1 || m.Metrics[0].Data == nil {
		t.Fatalf("Metrics = %v, %v; want one sample of t2", m, err)
	}
	list, err := h.client.List(h.ctx, &api.ListTasksRequest{})
	if err != nil || len(list.Tasks) != 1 || list.Tasks[0].Status != taskapi.Status_RUNNING {
		t.Fatalf("List = %v, %v; want t2 RUNNING", list, err)
	}
	// The runc shim refuses with a plain error (Unknown), as under
	// containerd; the task must stay.
	if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "t2"}); err == nil {
		t.Fatal("Delete of a running task succeeded")
	}
	if g, err := h.client.Get(h.ctx, &api.GetRequest{ContainerID: "t2"}); err != nil || g.Process.Status != taskapi.Status_RUNNING {
		t.Fatalf("task after a refused Delete: %v, %v; want RUNNING", g, err)
	}
	if _, err := h.client.Kill(h.ctx, &api.KillRequest{ContainerID: "t2", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if w, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: "t2"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("Wait after SIGKILL = %v, %v; want 137", w, err)
	}
	if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "t2"}); err != nil {
		t.Fatal(err)
	}
	h.bundleGone("t2")
	h.events.waitTopics(t, "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete")
}

func TestRestartedServiceReconnectsToRunningShims(t *testing.T) {
	h := newHarness(t)
	h.addContainer("keep", "sleep", "300")
	h.addContainer("ends", "sh", "-c", "sleep 1; exit 4")
	for _, id := range []string{"keep", "ends"} {
		h.create(id, "")
		if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: id}); err != nil {
			t.Fatal(err)
		}
	}
	h.stop()
	// "ends" exits while no tasks service runs.
	time.Sleep(1500 * time.Millisecond)
	h.restart(filepath.Join(filepath.Dir(h.cfg.Address), "tasks2.sock"))

	list, err := h.client.List(h.ctx, &api.ListTasksRequest{})
	if err != nil || len(list.Tasks) != 2 {
		t.Fatalf("List after restart = %v, %v; want both tasks", list, err)
	}
	byID := map[string]*taskapi.Process{}
	for _, p := range list.Tasks {
		byID[p.ID] = p
	}
	if byID["keep"].GetStatus() != taskapi.Status_RUNNING {
		t.Fatalf("keep after restart: %v, want RUNNING", byID["keep"])
	}
	if p := byID["ends"]; p.GetStatus() != taskapi.Status_STOPPED || p.GetExitStatus() != 4 {
		t.Fatalf("ends after restart: %v, want STOPPED with the status of the exit missed (4)", p)
	}
	if d, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "ends"}); err != nil || d.ExitStatus != 4 {
		t.Fatalf("Delete of ends = %v, %v", d, err)
	}
	if _, err := h.client.Kill(h.ctx, &api.KillRequest{ContainerID: "keep", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if w, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: "keep"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("Wait = %v, %v", w, err)
	}
	if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "keep"}); err != nil {
		t.Fatal(err)
	}
	h.bundleGone("keep")
	h.bundleGone("ends")
}

func TestShimKilledIsCleanedUpAndItsExitPublished(t *testing.T) {
	h := newHarness(t)
	h.addContainer("victim", "sleep", "300")
	h.create("victim", "")
	if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: "victim"}); err != nil {
		t.Fatal(err)
	}
	tk, err := h.manager.Get(testNS, "victim")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tk.Client().Connect(h.ctx, &task.ConnectRequest{ID: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(int(c.ShimPid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.events.waitTopics(t, "/tasks/exit", "/tasks/delete")
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := h.client.Get(h.ctx, &api.GetRequest{ContainerID: "victim"})
		if errdefs.IsNotFound(errgrpc.ToNative(err)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task of a dead shim still there: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// shim delete killed the container the dead shim left.
	deadline = time.Now().Add(10 * time.Second)
	for alive(int(c.TaskPid)) {
		if time.Now().After(deadline) {
			t.Fatalf("container process %d outlived its dead shim's cleanup", c.TaskPid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.events.mu.Lock()
	for i, topic := range h.events.topics {
		if topic == "/tasks/exit" {
			if e, ok := h.events.bodies[i].(*eventstypes.TaskExit); ok && e.ContainerID != "victim" {
				t.Errorf("exit event of %q", e.ContainerID)
			}
		}
	}
	h.events.mu.Unlock()
	h.bundleGone("victim")
}

func TestTasksOfAPodShareTheirShimAcrossARestart(t *testing.T) {
	h := newHarness(t)
	shimPid := func(id string) uint32 {
		t.Helper()
		tk, err := h.manager.Get(testNS, id)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tk.Client().Connect(h.ctx, &task.ConnectRequest{ID: id})
		if err != nil {
			t.Fatalf("connect %s: %v", id, err)
		}
		return c.ShimPid
	}
	run := func(id string) {
		t.Helper()
		h.addPodContainer(id, "pod", "sleep", "300")
		h.create(id, "")
		if _, err := h.client.Start(h.ctx, &api.StartRequest{ContainerID: id}); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	run("pod")
	run("app1")
	pid := shimPid("pod")
	if got := shimPid("app1"); got != pid {
		t.Fatalf("app1 runs in shim %d, the pod's is %d: a pod's tasks share one shim", got, pid)
	}
	h.restart(filepath.Join(filepath.Dir(h.cfg.Address), "tasks2.sock"))
	// A task created after the restart joins the shim too.
	run("app2")
	if got := shimPid("app2"); got != pid {
		t.Fatalf("app2 runs in shim %d after a restart, the pod's is %d", got, pid)
	}
	for _, id := range []string{"app1", "app2"} {
		if _, err := h.client.Kill(h.ctx, &api.KillRequest{ContainerID: id, Signal: uint32(syscall.SIGKILL)}); err != nil {
			t.Fatal(err)
		}
		if w, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: id}); err != nil || w.ExitStatus != 137 {
			t.Fatalf("Wait %s = %v, %v", id, w, err)
		}
		deleted := time.Now()
		if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: id}); err != nil {
			t.Fatal(err)
		}
		h.bundleGone(id)
		// The shim stays for the pod: its exit is not waited for, so the
		// id is free again at once.
		if took := time.Since(deleted); took > time.Second {
			t.Errorf("the bundle of %s, whose shim the pod still uses, went %s after Delete", id, took.Round(time.Millisecond))
		}
	}
	// Deleting the pod's other tasks left its shim and its task running.
	if g, err := h.client.Get(h.ctx, &api.GetRequest{ContainerID: "pod"}); err != nil || g.Process.Status != taskapi.Status_RUNNING {
		t.Fatalf("pod after its containers were deleted: %v, %v; want RUNNING", g, err)
	}
	if !alive(int(pid)) {
		t.Fatalf("the pod's shim %d exited with the pod's task still there", pid)
	}
	if _, err := h.client.Kill(h.ctx, &api.KillRequest{ContainerID: "pod", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Wait(h.ctx, &api.WaitRequest{ContainerID: "pod"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Delete(h.ctx, &api.DeleteTaskRequest{ContainerID: "pod"}); err != nil {
		t.Fatal(err)
	}
	h.bundleGone("pod")
	for deadline := time.Now().Add(5 * time.Second); alive(int(pid)); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the pod's shim %d still runs after its last task was deleted", pid)
		}
	}
}
