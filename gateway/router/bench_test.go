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

type nsServer struct {
	nsapi.UnimplementedNamespacesServer
}

func (nsServer) List(context.Context, *nsapi.ListNamespacesRequest) (*nsapi.ListNamespacesResponse, error) {
	return &nsapi.ListNamespacesResponse{Namespaces: []*nsapi.Namespace{{Name: "default"}}}, nil
}

// BenchmarkUnary compares a unary call made to a backend directly with the
// same call through the router: the difference is the gateway's hop.
func BenchmarkUnary(b *testing.B) {
	dir, _ := os.MkdirTemp("", "rb")
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	be := rpc.NewServer(logger)
	ts, err := rpc.NewTTRPCServer()
	if err != nil {
		b.Fatal(err)
	}
	nsapi.RegisterNamespacesServer(rpc.NewRegistrar(logger, be.Server, ts), nsServer{})
	bl, _ := rpc.Listen(filepath.Join(dir, "b.sock"))
	go be.Serve(bl)
	defer be.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := rpc.ServeTTRPC(ctx, ts, filepath.Join(dir, "b.ttrpc")); err != nil {
		b.Fatal(err)
	}
	defer ts.Close()

	r := New(logger, time.Second)
	defer r.Close()
	if err := r.Set("ns", filepath.Join(dir, "b.sock"), []string{"containerd.services.namespaces.v1.Namespaces"}, nil); err != nil {
		b.Fatal(err)
	}
	gw := rpc.NewServer(logger, r.ServerOptions()...)
	if os.Getenv("ROUTER_BENCH_STREAM") == "" {
		r.RegisterUnary(gw.Server, "containerd.services.", nil)
	}
	gl, _ := rpc.Listen(filepath.Join(dir, "g.sock"))
	go gw.Serve(gl)
	defer gw.Stop()

	for _, tc := range []struct {
		name, sock string
		fast       bool
	}{{"direct", "b.sock", false}, {"router-grpc", "g.sock", false}, {"router-ttrpc", "g.sock", true}} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.fast {
				r.SetFast("ns", filepath.Join(dir, "b.ttrpc"))
			}
			c, _ := rpc.Dial(filepath.Join(dir, tc.sock))
			defer c.Close()
			cl := nsapi.NewNamespacesClient(c)
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				if _, err := cl.List(ctx, &nsapi.ListNamespacesRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
