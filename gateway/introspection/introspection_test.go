package introspection

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	api "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

var testPlugins = []Plugin{
	{Type: "io.containerd.grpc.v1", ID: "events", Exports: map[string]string{"pid": "1"}},
	{Type: "io.containerd.content.v1", ID: "content", Exports: map[string]string{"socket": "/run/c.sock"}},
	{Type: "io.containerd.snapshotter.v1", ID: "overlayfs", Capabilities: []string{"rebase", "remap-ids"}, Requires: []string{"io.containerd.content.v1"}},
	{Type: "io.containerd.snapshotter.v1", ID: "native", Err: "exited: signal: killed"},
}

func serve(t *testing.T, o Options) api.IntrospectionClient {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	o.Logger = logger
	s := rpc.NewServer(logger)
	New(o).Register(s)
	sock := filepath.Join(t.TempDir(), "gw.sock")
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewIntrospectionClient(conn)
}

func ids(ps []*api.Plugin) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	sort.Strings(out)
	return out
}

func TestPluginsFiltersLikeContainerd(t *testing.T) {
	c := serve(t, Options{Plugins: func() []Plugin { return testPlugins }})
	ctx := context.Background()
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"content", "events", "native", "overlayfs"}},
		{[]string{"type==io.containerd.content.v1"}, []string{"content"}},
		{[]string{"type==io.containerd.snapshotter.v1"}, []string{"native", "overlayfs"}},
		{[]string{"id==native", "id==events"}, []string{"events", "native"}},
		{[]string{`type~="snapshotter",id!=native`}, []string{"overlayfs"}},
		{[]string{"capabilities==remap-ids"}, []string{"overlayfs"}},
		{[]string{"capabilities"}, []string{"overlayfs"}},
		{[]string{"type==nothing"}, nil},
	} {
		resp, err := c.Plugins(ctx, &api.PluginsRequest{Filters: tc.filters})
		if err != nil {
			t.Fatalf("plugins %q: %v", tc.filters, err)
		}
		if got := ids(resp.Plugins); !slices.Equal(got, tc.want) {
			t.Errorf("plugins %q = %v, want %v", tc.filters, got, tc.want)
		}
	}
	if _, err := c.Plugins(ctx, &api.PluginsRequest{Filters: []string{"type=="}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad filter: got %v, want InvalidArgument", err)
	}
}

func TestPluginsReportFieldsAndInitErrors(t *testing.T) {
	c := serve(t, Options{Plugins: func() []Plugin { return testPlugins }})
	resp, err := c.Plugins(context.Background(), &api.PluginsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*api.Plugin{}
	for _, p := range resp.Plugins {
		byID[p.ID] = p
	}
	if p := byID["content"]; p.Exports["socket"] != "/run/c.sock" || p.InitErr != nil {
		t.Errorf("content plugin = %v, want socket export and no init error", p)
	}
	if p := byID["overlayfs"]; len(p.Requires) != 1 || len(p.Capabilities) != 2 {
		t.Errorf("overlayfs plugin = %v, want its requires and capabilities", p)
	}
	if p := byID["native"]; p.InitErr == nil || p.InitErr.Message != "exited: signal: killed" {
		t.Errorf("failed plugin's InitErr = %v, want its error message", p.InitErr)
	}
}

func TestPluginInfoFindsPluginByTypeAndID(t *testing.T) {
	c := serve(t, Options{Plugins: func() []Plugin { return testPlugins }})
	ctx := context.Background()
	resp, err := c.PluginInfo(ctx, &api.PluginInfoRequest{Type: "io.containerd.content.v1", ID: "content"})
	if err != nil || resp.Plugin.ID != "content" {
		t.Fatalf("plugin info: %v, %v", resp, err)
	}
	if _, err := c.PluginInfo(ctx, &api.PluginInfoRequest{Type: "io.containerd.content.v1", ID: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown plugin: got %v, want NotFound", err)
	}
	_, err = c.PluginInfo(ctx, &api.PluginInfoRequest{Type: "io.containerd.content.v1", ID: "content", Options: &anypb.Any{TypeUrl: "x"}})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("plugin info with options: got %v, want Unimplemented", err)
	}
}

// A plugin whose extra information is its process's (the runtime's, from
// the tasks process) gets PluginInfo with options answered there; the
// gateway fills in the plugin's own description.
func TestPluginInfoWithOptionsAsksThePluginsProcess(t *testing.T) {
	plugins := append(slices.Clone(testPlugins),
		Plugin{Type: "io.containerd.runtime.v2", ID: "task", InfoFrom: "tasks", Exports: map[string]string{"service": "tasks"}},
		Plugin{Type: "io.containerd.runtime.v2", ID: "down", InfoFrom: "down", Err: "exited"})
	var asked []string
	c := serve(t, Options{
		Plugins: func() []Plugin { return plugins },
		Info: func(_ context.Context, process string, r *api.PluginInfoRequest) (*api.PluginInfoResponse, error) {
			asked = append(asked, process+":"+r.Options.GetTypeUrl())
			return &api.PluginInfoResponse{Plugin: &api.Plugin{ID: "ignored"}, Extra: &anypb.Any{TypeUrl: "answer"}}, nil
		},
	})
	ctx := context.Background()
	resp, err := c.PluginInfo(ctx, &api.PluginInfoRequest{Type: "io.containerd.runtime.v2", ID: "task", Options: &anypb.Any{TypeUrl: "request"}})
	if err != nil {
		t.Fatalf("plugin info of the runtime with options: %v", err)
	}
	if resp.Plugin.GetID() != "task" || resp.Plugin.Exports["service"] != "tasks" || resp.Extra.GetTypeUrl() != "answer" {
		t.Errorf("plugin info = %v, want the gateway's plugin task with the process's extra", resp)
	}
	if !slices.Equal(asked, []string{"tasks:request"}) {
		t.Errorf("processes asked: %v, want tasks once with the request's options", asked)
	}
	if _, err := c.PluginInfo(ctx, &api.PluginInfoRequest{Type: "io.containerd.runtime.v2", ID: "down", Options: &anypb.Any{TypeUrl: "request"}}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("plugin info of a plugin whose process is down: %v, want FailedPrecondition", err)
	}
	if _, err := c.PluginInfo(ctx, &api.PluginInfoRequest{Type: "io.containerd.content.v1", ID: "content", Options: &anypb.Any{TypeUrl: "x"}}); status.Code(err) != codes.Unimplemented {
		t.Errorf("plugin info with options of a plugin without extra information: %v, want Unimplemented", err)
	}
}

func TestServerUUIDIsStableAcrossRestarts(t *testing.T) {
	root := filepath.Join(t.TempDir(), "gateway") // does not exist yet
	ctx := context.Background()
	first, err := serve(t, Options{Root: root}).Server(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := uuid.Parse(first.UUID); err != nil {
		t.Fatalf("server uuid %q: %v", first.UUID, err)
	}
	if first.Pid != uint64(os.Getpid()) {
		t.Errorf("server pid = %d, want %d", first.Pid, os.Getpid())
	}
	if _, err := os.Stat("/proc/self/ns/pid"); err == nil && first.Pidns == 0 {
		t.Error("server pidns = 0, but /proc/self/ns/pid is readable")
	}
	again, err := serve(t, Options{Root: root}).Server(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if again.UUID != first.UUID {
		t.Errorf("uuid changed across restarts: %s then %s", first.UUID, again.UUID)
	}
	data, err := os.ReadFile(filepath.Join(root, "uuid"))
	if err != nil || string(data) != first.UUID {
		t.Errorf("<root>/uuid = %q, %v; want %s", data, err, first.UUID)
	}
	other, err := serve(t, Options{Root: t.TempDir()}).Server(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if other.UUID == first.UUID {
		t.Error("two roots share one uuid")
	}
}

func TestServerRefusesGarbledUUIDFile(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "uuid"), []byte("not-a-uuid"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := serve(t, Options{Root: root}).Server(context.Background(), &emptypb.Empty{})
	if status.Code(err) != codes.DataLoss {
		t.Errorf("garbled uuid file: got %v, want DataLoss", err)
	}
}
