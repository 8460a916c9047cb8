package router

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// stallingServer answers Get only once its first call has been stalled
// until the server goes away.
type stallingServer struct {
	nsapi.UnimplementedNamespacesServer
	entered chan struct{}
	stall   bool
}

func (s *stallingServer) Get(ctx context.Context, req *nsapi.GetNamespaceRequest) (*nsapi.GetNamespaceResponse, error) {
	if s.stall {
		close(s.entered)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &nsapi.GetNamespaceResponse{Namespace: &nsapi.Namespace{Name: req.Name}}, nil
}

func TestRouterRetriesAReadWhoseServiceWentAwayUnderIt(t *testing.T) {
	dir, err := os.MkdirTemp("", "rr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	sock := filepath.Join(dir, "b.sock")
	serve := func(s *stallingServer) *rpc.Server {
		srv := rpc.NewServer(logger)
		nsapi.RegisterNamespacesServer(srv.Server, s)
		l, err := rpc.Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		return srv
	}
	first := &stallingServer{entered: make(chan struct{}), stall: true}
	old := serve(first)

	r := New(logger, 5*time.Second)
	defer r.Close()
	if err := r.Set("ns", sock, []string{"containerd.services.namespaces.v1.Namespaces"}); err != nil {
		t.Fatal(err)
	}
	r.Ready()
	gw := rpc.NewServer(logger, r.ServerOptions()...)
	r.RegisterUnary(gw.Server, "containerd.services.", nil)
	gl, err := rpc.Listen(filepath.Join(dir, "g.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go gw.Serve(gl)
	defer gw.Stop()
	c, err := rpc.Dial(filepath.Join(dir, "g.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	done := make(chan error, 1)
	go func() {
		_, err := nsapi.NewNamespacesClient(c).Get(context.Background(), &nsapi.GetNamespaceRequest{Name: "x"})
		done <- err
	}()
	select {
	case <-first.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the call never reached the service")
	}
	// The service goes away with the call in flight and comes back.
	old.Stop()
	defer serve(&stallingServer{}).Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("a read whose service restarted under it failed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not complete after the service came back")
	}
}
