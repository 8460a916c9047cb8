package router

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// echoBackend answers every call on an unknown service by echoing each
// message back, with the caller's namespace header returned as a header.
func echoBackend(_ any, ss grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	if err := ss.SendHeader(metadata.Pairs("echo-namespace", first(md["containerd-namespace"]))); err != nil {
		return err
	}
	for {
		var m wrapperspb.StringValue
		if err := ss.RecvMsg(&m); err != nil {
			if errors.Is(err, io.EOF) {
				ss.SetTrailer(metadata.Pairs("echo-done", "yes"))
				return nil
			}
			return err
		}
		if m.Value == "fail" {
			return status.Error(codes.FailedPrecondition, "asked to fail")
		}
		if err := ss.SendMsg(wrapperspb.String("echo:" + m.Value)); err != nil {
			return err
		}
	}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

type fixture struct {
	router  *Router
	client  *grpc.ClientConn
	backend string
}

func newFixture(t *testing.T, wait time.Duration) *fixture {
	t.Helper()
	dir, err := os.MkdirTemp("", "rt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	backendSock := filepath.Join(dir, "b.sock")
	startBackend(t, backendSock)

	r := New(logger, wait)
	t.Cleanup(r.Close)
	gw := rpc.NewServer(logger, r.ServerOptions()...)
	l, err := rpc.Listen(filepath.Join(dir, "gw.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go gw.Serve(l)
	t.Cleanup(gw.Stop)
	c, err := rpc.Dial(filepath.Join(dir, "gw.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fixture{router: r, client: c, backend: backendSock}
}

func startBackend(t *testing.T, sock string) *rpc.Server {
	t.Helper()
	s := rpc.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)), grpc.UnknownServiceHandler(echoBackend))
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return s
}

var bidi = &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}

func TestRouterForwardsStreamsWithMetadataBothWays(t *testing.T) {
	f := newFixture(t, time.Second)
	if err := f.router.Set("echo", f.backend, []string{"test.Echo"}, nil); err != nil {
		t.Fatal(err)
	}
	f.router.Ready()

	ctx := metadata.AppendToOutgoingContext(context.Background(), "containerd-namespace", "ns1")
	cs, err := f.client.NewStream(ctx, bidi, "/test.Echo/Chat")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"a", "b", "c"} {
		if err := cs.SendMsg(wrapperspb.String(v)); err != nil {
			t.Fatal(err)
		}
		var got wrapperspb.StringValue
		if err := cs.RecvMsg(&got); err != nil {
			t.Fatal(err)
		}
		if got.Value != "echo:"+v {
			t.Errorf("got %q, want echo:%s", got.Value, v)
		}
	}
	hdr, err := cs.Header()
	if err != nil {
		t.Fatal(err)
	}
	if first(hdr["echo-namespace"]) != "ns1" {
		t.Errorf("namespace header did not reach the backend: header %v", hdr)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var m wrapperspb.StringValue
	if err := cs.RecvMsg(&m); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v", err)
	}
	if first(cs.Trailer()["echo-done"]) != "yes" {
		t.Errorf("trailer lost: %v", cs.Trailer())
	}
}

func TestRouterPassesBackendStatusThrough(t *testing.T) {
	f := newFixture(t, time.Second)
	_ = f.router.Set("echo", f.backend, []string{"test.Echo"}, nil)
	f.router.Ready()
	var out wrapperspb.StringValue
	err := f.client.Invoke(context.Background(), "/test.Echo/Once", wrapperspb.String("fail"), &out)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("got %v, want the backend's FailedPrecondition", err)
	}
}

func TestRouterUnknownServiceIsUnimplemented(t *testing.T) {
	f := newFixture(t, time.Second)
	f.router.Ready()
	_, err := healthpb.NewHealthClient(f.client).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("the gateway's own health service should answer: %v", err)
	}
	var out wrapperspb.StringValue
	err = f.client.Invoke(context.Background(), "/nobody.Serves/This", wrapperspb.String("x"), &out)
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("got %v, want Unimplemented", err)
	}
}

func TestRouterWaitsForRestartingBackendThenGivesUp(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	dead := filepath.Join(filepath.Dir(f.backend), "dead.sock")
	_ = f.router.Set("gone", dead, []string{"test.Gone"}, nil)
	f.router.Ready()
	start := time.Now()
	var out wrapperspb.StringValue
	err := f.client.Invoke(context.Background(), "/test.Gone/Call", wrapperspb.String("x"), &out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 5*time.Second {
		t.Errorf("gave up after %s, want about the route wait (300ms)", el)
	}

	// The backend comes (back) up while a call waits: the call goes through.
	go func() {
		time.Sleep(100 * time.Millisecond)
		startBackend(t, dead)
	}()
	f2 := newFixture(t, 5*time.Second)
	_ = f2.router.Set("late", dead, []string{"test.Late"}, nil)
	f2.router.Ready()
	if err := f2.client.Invoke(context.Background(), "/test.Late/Call", wrapperspb.String("x"), &out); err != nil {
		t.Fatalf("call held for a starting backend failed: %v", err)
	}
	if out.Value != "echo:x" {
		t.Errorf("got %q", out.Value)
	}
}

func TestRouterRefusesTwoOwnersOfOneService(t *testing.T) {
	f := newFixture(t, time.Second)
	if err := f.router.Set("a", f.backend, []string{"test.Echo"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.router.Set("b", f.backend, []string{"test.Echo"}, nil); err == nil {
		t.Fatal("two processes claimed one service without an error")
	}
}
