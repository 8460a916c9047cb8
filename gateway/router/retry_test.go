package router

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// List is Get for a request with nothing in it, which encodes to no bytes.
func (s *stallingServer) List(ctx context.Context, req *nsapi.ListNamespacesRequest) (*nsapi.ListNamespacesResponse, error) {
	if s.stall {
		close(s.entered)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &nsapi.ListNamespacesResponse{Namespaces: []*nsapi.Namespace{{Name: "x"}}}, nil
}

// throughRouter serves a gateway in dir whose router sends the gRPC service
// svc to the backend named name at sock, as flotillad's does (unary methods
// registered, the rest through the unknown-service handler), and returns a
// client of it and the router. All of it goes when the test ends.
func throughRouter(t *testing.T, logger *slog.Logger, dir, name, sock, svc string) (*grpc.ClientConn, *Router) {
	t.Helper()
	r := New(logger, 5*time.Second)
	t.Cleanup(r.Close)
	if err := r.Set(name, sock, []string{svc}, nil); err != nil {
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
	t.Cleanup(gw.Stop)
	c, err := rpc.Dial(filepath.Join(dir, "g.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, r
}

func TestRouterRetriesAReadWhoseServiceWentAwayUnderIt(t *testing.T) {
	// A read whose request is all defaults (a List without a filter)
	// encodes to no bytes, and is retried all the same.
	reads := map[string]func(nsapi.NamespacesClient) error{
		"Get": func(c nsapi.NamespacesClient) error {
			_, err := c.Get(context.Background(), &nsapi.GetNamespaceRequest{Name: "x"})
			return err
		},
		"List with an empty request": func(c nsapi.NamespacesClient) error {
			_, err := c.List(context.Background(), &nsapi.ListNamespacesRequest{})
			return err
		},
	}
	for name, read := range reads {
		t.Run(name, func(t *testing.T) { testRouterRetriesARead(t, read) })
	}
}

func testRouterRetriesARead(t *testing.T, read func(nsapi.NamespacesClient) error) {
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

	c, _ := throughRouter(t, logger, dir, "ns", sock, "containerd.services.namespaces.v1.Namespaces")

	done := make(chan error, 1)
	go func() { done <- read(nsapi.NewNamespacesClient(c)) }()
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

// blobServer serves one blob's Read; with cut set it sends the first cut
// bytes and then stalls until the server goes away.
type blobServer struct {
	contentapi.UnimplementedContentServer
	data  []byte
	cut   int
	asked chan *contentapi.ReadContentRequest
}

func (s *blobServer) Read(req *contentapi.ReadContentRequest, stream contentapi.Content_ReadServer) error {
	if s.asked != nil {
		s.asked <- req
	}
	end := int64(len(s.data))
	if req.Size > 0 {
		end = req.Offset + req.Size
	}
	if s.cut > 0 {
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: req.Offset, Data: s.data[req.Offset:s.cut]}); err != nil {
			return err
		}
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	for off := req.Offset; off < end; off += 700 {
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: off, Data: s.data[off:min(off+700, end)]}); err != nil {
			return err
		}
	}
	return nil
}

func TestRouterResumesAContentReadWhoseServiceWentAwayMidBlob(t *testing.T) {
	dir, err := os.MkdirTemp("", "rr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	sock := filepath.Join(dir, "b.sock")
	serve := func(s *blobServer) *rpc.Server {
		srv := rpc.NewServer(logger)
		contentapi.RegisterContentServer(srv.Server, s)
		l, err := rpc.Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		return srv
	}
	data := make([]byte, 5000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	first := &blobServer{data: data, cut: 1200}
	old := serve(first)

	c, _ := throughRouter(t, logger, dir, "content", sock, "containerd.services.content.v1.Content")

	type result struct {
		got []byte
		err error
	}
	done := make(chan result, 1)
	gotFirst := make(chan struct{})
	go func() {
		// From offset 100, 4000 bytes: the resumed call must keep both ends.
		rc, err := contentapi.NewContentClient(c).Read(context.Background(), &contentapi.ReadContentRequest{Digest: "sha256:x", Offset: 100, Size: 4000})
		if err != nil {
			done <- result{err: err}
			return
		}
		var got []byte
		for {
			resp, err := rc.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				done <- result{got, err}
				return
			}
			if want := int64(100 + len(got)); resp.Offset != want {
				done <- result{got, fmt.Errorf("chunk at offset %d, want %d", resp.Offset, want)}
				return
			}
			if len(got) == 0 {
				close(gotFirst)
			}
			got = append(got, resp.Data...)
		}
		done <- result{got: got}
	}()
	select {
	case <-gotFirst:
	case <-time.After(5 * time.Second):
		t.Fatal("the first chunk never reached the client")
	}
	second := &blobServer{data: data, asked: make(chan *contentapi.ReadContentRequest, 1)}
	old.Stop()
	defer serve(second).Stop()
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatalf("a read whose service restarted mid-blob failed after %d bytes: %v", len(res.got), res.err)
		}
		if !bytes.Equal(res.got, data[100:4100]) {
			t.Fatalf("read %d bytes, not the 4000 asked for from offset 100", len(res.got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not complete after the service came back")
	}
	if req := <-second.asked; req.Offset != 1200 || req.Size != 2900 {
		t.Fatalf("resumed at offset %d size %d, want 1200 and 2900", req.Offset, req.Size)
	}
}

// writeServer answers a Write stream's first message, then stalls until the
// server goes away.
type writeServer struct {
	contentapi.UnimplementedContentServer
	answered chan struct{}
}

func (s *writeServer) Write(stream contentapi.Content_WriteServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := stream.Send(&contentapi.WriteContentResponse{Action: req.Action}); err != nil {
		return err
	}
	close(s.answered)
	<-stream.Context().Done()
	return stream.Context().Err()
}

// A client that sends its next message on a stream whose service went away
// since its last answer (as a content writer's commit does) gets Unavailable
// from its read, not a bare EOF from its send that containerd's client
// reports as Unknown.
func TestRouterLetsAClientSendOnceMoreOnAStreamWhoseServiceWentAway(t *testing.T) {
	dir, err := os.MkdirTemp("", "rr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	sock := filepath.Join(dir, "b.sock")
	srv := rpc.NewServer(logger)
	ws := &writeServer{answered: make(chan struct{})}
	contentapi.RegisterContentServer(srv.Server, ws)
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)

	c, _ := throughRouter(t, logger, dir, "content", sock, "containerd.services.content.v1.Content")

	wc, err := contentapi.NewContentClient(c).Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_STAT, Ref: "r"}); err != nil {
		t.Fatal(err)
	}
	if _, err := wc.Recv(); err != nil {
		t.Fatal(err)
	}
	<-ws.answered
	srv.Stop()
	// Long enough for the end of the stream to reach the client, were the
	// gateway to end it at once.
	time.Sleep(50 * time.Millisecond)
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_COMMIT, Ref: "r"}); err != nil {
		t.Fatalf("send on a stream whose service went away: %v, want it taken and answered", err)
	}
	if _, err := wc.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("read after the service went away: %v, want Unavailable", err)
	}
}
