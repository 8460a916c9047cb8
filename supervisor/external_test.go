package supervisor

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// fakeExternal serves Describe on a socket, as a service process run outside
// flotillad does (pkg/service), and can go away and come back on it.
type fakeExternal struct {
	servicepb.UnimplementedServiceServer
	socket  string
	srv     *rpc.Server
	pid     int64
	started string
}

func (f *fakeExternal) Describe(context.Context, *servicepb.DescribeRequest) (*servicepb.DescribeResponse, error) {
	return &servicepb.DescribeResponse{
		Name:    "content",
		Type:    "io.containerd.content.v1",
		Pid:     f.pid,
		Socket:  "/where/the/service/sees/it.sock",
		Routes:  []string{"example.v1.Example"},
		Exports: map[string]string{"ttrpc": "/where/the/service/sees/it.ttrpc.sock", "started": f.started},
	}, nil
}

func (f *fakeExternal) serve(t *testing.T, pid int64) {
	t.Helper()
	f.pid, f.started = pid, time.Now().String()
	l, err := rpc.Listen(f.socket)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = rpc.NewServer(slog.Default())
	servicepb.RegisterServiceServer(f.srv.Server, f)
	go func() { _ = f.srv.Serve(l) }()
}

func (f *fakeExternal) stop() { f.srv.Stop() }

// statusRecorder keeps every status the supervisor reports.
type statusRecorder struct {
	mu  sync.Mutex
	all []Status
}

func (r *statusRecorder) add(s Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, s)
}

func (r *statusRecorder) last() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.all) == 0 {
		return Status{}
	}
	return r.all[len(r.all)-1]
}

func waitStatus(t *testing.T, r *statusRecorder, what string, cond func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := r.last()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last status %+v", what, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExternalServiceIsFoundAtItsAddressAndFollowedThroughRestarts(t *testing.T) {
	defer func(p time.Duration) { externalPoll = p }(externalPoll)
	externalPoll = 20 * time.Millisecond
	sock := filepath.Join(t.TempDir(), "content.sock")
	f := &fakeExternal{socket: sock}
	f.serve(t, 42)
	defer f.stop()

	rec := &statusRecorder{}
	sup, err := New(Options{Logger: slog.Default(), StartTimeout: 5 * time.Second, OnChange: rec.add},
		[]Spec{{Name: "content", Address: sock}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sup.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer sup.Stop()
	s := rec.last()
	if s.State != Running || s.Info == nil {
		t.Fatalf("external service after Start: %+v; want running and described", s)
	}
	if s.Info.Socket != sock || s.Info.Exports["ttrpc"] != strings.TrimSuffix(sock, ".sock")+".ttrpc.sock" || s.Info.Exports["external"] != "true" {
		t.Errorf("external service is described at socket %q, ttrpc %q, exports %v; want its address %s and the ttrpc socket beside it",
			s.Info.Socket, s.Info.Exports["ttrpc"], s.Info.Exports, sock)
	}
	if len(s.Info.Routes) != 1 || s.Info.Routes[0] != "example.v1.Example" {
		t.Errorf("external service's routes %v; want what it described", s.Info.Routes)
	}

	f.stop()
	waitStatus(t, rec, "the external service to show as restarting", func(s Status) bool { return s.State == Restarting })
	f.serve(t, 43)
	s = waitStatus(t, rec, "the external service's new process to be running", func(s Status) bool { return s.State == Running })
	if s.Restarts != 1 || s.Info.Pid != 43 {
		t.Errorf("after its restart the external service has %d restarts and pid %d; want 1 and 43", s.Restarts, s.Info.Pid)
	}
	if err := sup.Restart(context.Background(), "content", time.Second); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Restart of a service run outside flotillad: %v; want FailedPrecondition", err)
	}
}

func TestStartFailsNamingAnExternalServiceThatDoesNotAnswer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "content.sock")
	sup, err := New(Options{Logger: slog.Default(), StartTimeout: 300 * time.Millisecond},
		[]Spec{{Name: "content", Address: sock}, {Name: "metadata", Address: sock + "2", Requires: []string{"content"}}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = sup.Start(context.Background())
	if err == nil {
		sup.Stop()
		t.Fatal("Start succeeded with nothing at the external service's address")
	}
	if !strings.Contains(err.Error(), "service content") || !strings.Contains(err.Error(), sock) {
		t.Errorf("Start's error %q does not name the service and its address", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Start took %s to give up; want about the start timeout", d)
	}
	var st Status
	for _, s := range sup.Statuses() {
		if s.Name == "metadata" {
			st = s
		}
	}
	if st.State != Stopped {
		t.Errorf("metadata, which requires content, is %s; want it never waited for", st.State)
	}

}
