package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// headerServer answers Get with the namespace and lease headers it
// received, and NotFound for the name "missing".
type headerServer struct {
	nsapi.UnimplementedNamespacesServer
}

func (headerServer) Get(ctx context.Context, req *nsapi.GetNamespaceRequest) (*nsapi.GetNamespaceResponse, error) {
	if req.Name == "missing" {
		return nil, errdefs.ErrNotFound
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return &nsapi.GetNamespaceResponse{Namespace: &nsapi.Namespace{
		Name:   req.Name,
		Labels: map[string]string{"ns": first(md["containerd-namespace"]), "lease": first(md["containerd-lease"])},
	}}, nil
}

// List answers more than a ttrpc message holds.
func (headerServer) List(context.Context, *nsapi.ListNamespacesRequest) (*nsapi.ListNamespacesResponse, error) {
	resp := &nsapi.ListNamespacesResponse{}
	for i := range 6 {
		resp.Namespaces = append(resp.Namespaces, &nsapi.Namespace{
			Name: fmt.Sprintf("big-%d", i), Labels: map[string]string{"pad": strings.Repeat("x", 1<<20)},
		})
	}
	return resp, nil
}

func TestRouterFastPathCarriesHeadersAndCodesAndFallsBackToGRPC(t *testing.T) {
	dir, err := os.MkdirTemp("", "rf")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	be := rpc.NewServer(logger)
	ts, err := rpc.NewTTRPCServer()
	if err != nil {
		t.Fatal(err)
	}
	reg := rpc.NewRegistrar(logger, be.Server, ts)
	nsapi.RegisterNamespacesServer(reg, headerServer{})
	bl, err := rpc.Listen(filepath.Join(dir, "b.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go be.Serve(bl)
	defer be.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fastSock := filepath.Join(dir, "b.ttrpc.sock")
	if _, err := rpc.ServeTTRPC(ctx, ts, fastSock); err != nil {
		t.Fatal(err)
	}

	r := New(logger, time.Second)
	defer r.Close()
	if err := r.Set("ns", filepath.Join(dir, "b.sock"), []string{"containerd.services.namespaces.v1.Namespaces"}, nil); err != nil {
		t.Fatal(err)
	}
	r.SetFast("ns", fastSock)
	r.Ready()
	gw := rpc.NewServer(logger, r.ServerOptions()...)
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
	cl := nsapi.NewNamespacesClient(c)

	call := func(what string) {
		t.Helper()
		cctx := metadata.AppendToOutgoingContext(context.Background(), "containerd-namespace", "team", "containerd-lease", "l1")
		resp, err := cl.Get(cctx, &nsapi.GetNamespaceRequest{Name: "x"})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if l := resp.Namespace.Labels; l["ns"] != "team" || l["lease"] != "l1" {
			t.Fatalf("%s: backend saw headers %v, want namespace team and lease l1", what, l)
		}
		_, err = cl.Get(cctx, &nsapi.GetNamespaceRequest{Name: "missing"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("%s: backend NotFound arrived as %v", what, err)
		}
	}
	call("over ttrpc")
	if !r.backends["ns"].fast.Connected() {
		t.Fatal("the call did not take the ttrpc path")
	}
	// A reply larger than ttrpc's 4 MiB arrives whole, over gRPC.
	resp, err := cl.List(context.Background(), &nsapi.ListNamespacesRequest{})
	if err != nil {
		t.Fatalf("a 6 MiB reply: %v", err)
	}
	if len(resp.Namespaces) != 6 {
		t.Fatalf("a 6 MiB reply arrived with %d namespaces, want 6", len(resp.Namespaces))
	}

	// Without the ttrpc socket, calls take the gRPC path.
	_ = ts.Close()
	_ = os.Remove(fastSock)
	time.Sleep(50 * time.Millisecond)
	call("after the ttrpc socket went away")
}
