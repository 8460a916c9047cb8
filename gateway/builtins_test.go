package gateway

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/version"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// startGateway serves a gateway on a temp socket and connects containerd's
// own Go client to it.
func startGateway(t *testing.T, root string) (*Gateway, *containerd.Client) {
	t.Helper()
	g, err := New(Options{Logger: slog.New(slog.DiscardHandler), Root: root})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "flotilla.sock")
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	c, err := containerd.New(sock, containerd.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return g, c
}

func TestBuiltinsServeVersionAndServerInfo(t *testing.T) {
	root := t.TempDir()
	_, c := startGateway(t, root)
	ctx := context.Background()
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Version != version.Version || v.Revision != version.Revision {
		t.Errorf("version = %+v, want %s %s", v, version.Version, version.Revision)
	}
	info, err := c.Server(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.UUID == "" {
		t.Error("server info has no uuid")
	}
	_, c2 := startGateway(t, root)
	info2, err := c2.Server(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info2.UUID != info.UUID {
		t.Errorf("a gateway on the same root reports uuid %s, first one %s", info2.UUID, info.UUID)
	}
}

func TestIntrospectionListsServiceProcessesAndBuiltins(t *testing.T) {
	g, c := startGateway(t, t.TempDir())
	err := g.SetService(Service{
		Name: "content", State: "running", Pid: 4242, Restarts: 1,
		Info: &servicepb.DescribeResponse{
			Name: "content", Type: "io.containerd.content.v1", Pid: 4242,
			Socket:   "/nonexistent/content.sock",
			Routes:   []string{"containerd.services.content.v1.Content"},
			Requires: []string{"io.containerd.metadata.v1"},
			Exports:  map[string]string{"root": "/var/lib/flotilla/content"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetService(Service{Name: "tasks", State: "failed", Err: "exec: no such file"}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	resp, err := c.IntrospectionService().Plugins(ctx, "type==io.containerd.content.v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Plugins) != 1 {
		t.Fatalf("content plugins = %v, want one", resp.Plugins)
	}
	p := resp.Plugins[0]
	want := map[string]string{"pid": "4242", "socket": "/nonexistent/content.sock", "restarts": "1", "root": "/var/lib/flotilla/content"}
	for k, v := range want {
		if p.Exports[k] != v {
			t.Errorf("content export %s = %q, want %q", k, p.Exports[k], v)
		}
	}
	if p.ID != "content" || len(p.Requires) != 1 || p.InitErr != nil {
		t.Errorf("content plugin = %v", p)
	}

	resp, err = c.IntrospectionService().Plugins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range resp.Plugins {
		got[p.Type+"/"+p.ID] = true
		if p.Type == builtinType && p.Exports["pid"] != strconv.Itoa(os.Getpid()) {
			t.Errorf("builtin %s exports pid %q, want flotillad's", p.ID, p.Exports["pid"])
		}
		if p.ID == "tasks" && (p.InitErr == nil || p.InitErr.Message != "exec: no such file") {
			t.Errorf("failed service's InitErr = %v, want its error", p.InitErr)
		}
	}
	for _, k := range []string{builtinType + "/events", builtinType + "/introspection", builtinType + "/version", "io.containerd.content.v1/content"} {
		if !got[k] {
			t.Errorf("plugin %s missing from %v", k, got)
		}
	}
}

func TestEventsPublishedInsideGatewayReachClients(t *testing.T) {
	g, c := startGateway(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The gateway has subscriptions of its own (blobs deleted).
	base := g.Events().Subscribers()
	ch, errs := c.EventService().Subscribe(ctx, `namespace==a,topic=="/x/y"`)
	deadline := time.Now().Add(5 * time.Second)
	for g.Events().Subscribers() <= base {
		if time.Now().After(deadline) {
			t.Fatal("subscription never reached the exchange")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.Events().Publish(ctx, "b", "/x/y", &eventsapi.ContainerCreate{ID: "other"}); err != nil {
		t.Fatal(err)
	}
	if err := c.EventService().Publish(namespaces.WithNamespace(ctx, "a"), "/x/y", &eventsapi.ContainerCreate{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case env := <-ch:
		ev, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			t.Fatal(err)
		}
		if cc, ok := ev.(*eventsapi.ContainerCreate); !ok || cc.ID != "c1" {
			t.Errorf("got event %v in %s, want ContainerCreate c1 from namespace a", ev, env.Namespace)
		}
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("event not delivered")
	}
}

// TestShimEventsOverTTRPCReachSubscribers forwards an envelope the way a
// runtime v2 shim publishes (ttrpc, to TTRPC_ADDRESS) and expects it at a
// subscriber of the exchange.
func TestShimEventsOverTTRPCReachSubscribers(t *testing.T) {
	dir := t.TempDir()
	g, err := New(Options{Logger: slog.New(slog.DiscardHandler), Root: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	sock := filepath.Join(dir, "t.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go g.ServeTTRPC(l)

	sub, err := g.Events().Subscribe(`topic=="/tasks/exit"`)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpcevents.NewTTRPCEventsClient(ttrpc.NewClient(conn))
	ev, err := typeurl.MarshalAnyToProto(&eventsapi.TaskExit{ContainerID: "c1", ExitStatus: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Forward(context.Background(), &ttrpcevents.ForwardRequest{Envelope: &types.Envelope{
		Timestamp: timestamppb.Now(), Namespace: "default", Topic: "/tasks/exit", Event: ev,
	}}); err != nil {
		t.Fatalf("forward over ttrpc: %v", err)
	}
	select {
	case env := <-sub.Events():
		if env.Topic != "/tasks/exit" || env.Namespace != "default" {
			t.Fatalf("got %s in %s", env.Topic, env.Namespace)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the forwarded event did not reach the subscriber")
	}
}

// A process that names its plugin apart (the tasks process's runtime,
// known to containerd's clients as io.containerd.runtime.v2 "task") is
// listed twice: the process under its own name, the plugin under its id
// with the exports meant for it.
func TestAProcessNamingItsPluginIsListedAsProcessAndPlugin(t *testing.T) {
	got := servicePlugins(Service{Name: "tasks", State: "running", Pid: 42, Info: &servicepb.DescribeResponse{
		Type:    "io.containerd.runtime.v2",
		Socket:  "/run/tasks.sock",
		Exports: map[string]string{"plugin_id": "task", "plugin.runtime.name": "io.containerd.runc.v2", "runc_root": "/run/r"},
	}})
	if len(got) != 2 {
		t.Fatalf("listed %d plugins, want the process and its plugin: %+v", len(got), got)
	}
	process, plugin := got[0], got[1]
	if process.Type != "io.containerd.grpc.v1" || process.ID != "tasks" || process.Exports["socket"] != "/run/tasks.sock" ||
		process.Exports["runc_root"] != "/run/r" || process.Exports["runtime.name"] != "" || process.InfoFrom != "" {
		t.Errorf("process listed as %+v", process)
	}
	if plugin.Type != "io.containerd.runtime.v2" || plugin.ID != "task" || plugin.InfoFrom != "tasks" ||
		plugin.Exports["runtime.name"] != "io.containerd.runc.v2" || plugin.Exports["service"] != "tasks" ||
		plugin.Exports["pid"] != "42" || plugin.Exports["runc_root"] != "" {
		t.Errorf("plugin listed as %+v", plugin)
	}
	if one := servicePlugins(Service{Name: "content", Info: &servicepb.DescribeResponse{Type: "io.containerd.content.v1"}}); len(one) != 1 || one[0].ID != "content" {
		t.Errorf("a process without plugin_id is listed as %+v, want itself alone", one)
	}
}
