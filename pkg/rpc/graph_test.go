package rpc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/contentread"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// fakeProcess is a process of the graph as pkg/service serves one: its APIs
// over gRPC on its socket and, unary ones, over ttrpc beside it, and
// Describe saying what it serves. It can be stopped and started again on
// the same socket, as a restart does.
type fakeProcess struct {
	t        *testing.T
	sock     string
	routes   []string
	ttrpc    bool
	register func(grpc.ServiceRegistrar)

	srv    *Server
	ts     *ttrpc.Server
	goneMu sync.Mutex
	gone   chan struct{} // closed when the current server stops
}

// stopped is closed when the server serving now stops.
func (f *fakeProcess) stopped() <-chan struct{} {
	f.goneMu.Lock()
	defer f.goneMu.Unlock()
	return f.gone
}

func startFake(t *testing.T, sock string, routes []string, withTTRPC bool, register func(grpc.ServiceRegistrar)) *fakeProcess {
	t.Helper()
	f := &fakeProcess{t: t, sock: sock, routes: routes, ttrpc: withTTRPC, register: register}
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeProcess) start() {
	f.t.Helper()
	logger := slog.New(slog.DiscardHandler)
	f.srv = NewServer(logger)
	f.goneMu.Lock()
	f.gone = make(chan struct{})
	f.goneMu.Unlock()
	exports := map[string]string{}
	if f.ttrpc {
		ts, err := NewTTRPCServer()
		if err != nil {
			f.t.Fatal(err)
		}
		f.ts = ts
		if _, err := ServeTTRPC(context.Background(), ts, TTRPCSocket(f.sock)); err != nil {
			f.t.Fatal(err)
		}
		exports["ttrpc"] = TTRPCSocket(f.sock)
	}
	f.register(NewRegistrar(logger, f.srv.Server, f.ts))
	servicepb.RegisterServiceServer(f.srv.Server, &fakeDescriber{routes: f.routes, exports: exports})
	l, err := Listen(f.sock)
	if err != nil {
		f.t.Fatal(err)
	}
	go f.srv.Serve(l)
}

// stop ends the process as a kill would: connections drop, calls in
// flight with them.
func (f *fakeProcess) stop() {
	if f.srv == nil {
		return
	}
	f.srv.Stop()
	if f.ts != nil {
		_ = f.ts.Close()
		f.ts = nil
	}
	// Only now do stalled handlers end: their callers must see the
	// connection break, not an answer.
	f.goneMu.Lock()
	close(f.gone)
	f.goneMu.Unlock()
	f.srv = nil
	_ = os.Remove(f.sock)
	_ = os.Remove(TTRPCSocket(f.sock))
}

type fakeDescriber struct {
	servicepb.UnimplementedServiceServer
	routes  []string
	exports map[string]string
}

func (d *fakeDescriber) Describe(context.Context, *servicepb.DescribeRequest) (*servicepb.DescribeResponse, error) {
	return &servicepb.DescribeResponse{Routes: d.routes, Exports: d.exports}, nil
}

// namespaces answers Get and Create; while stall is set, a call waits
// until its process goes away.
type namespaces struct {
	nsapi.UnimplementedNamespacesServer
	gone    func() <-chan struct{}
	stall   atomic.Bool
	entered chan string // told of each call
	gets    atomic.Int32
	creates atomic.Int32
}

func (s *namespaces) hold(ctx context.Context, method string) error {
	if s.entered != nil {
		s.entered <- method
	}
	if !s.stall.Load() {
		return nil
	}
	select {
	case <-s.gone():
	case <-ctx.Done():
	}
	return status.Error(codes.Unavailable, "going away")
}

func (s *namespaces) Get(ctx context.Context, req *nsapi.GetNamespaceRequest) (*nsapi.GetNamespaceResponse, error) {
	s.gets.Add(1)
	if err := s.hold(ctx, "Get"); err != nil {
		return nil, err
	}
	return &nsapi.GetNamespaceResponse{Namespace: &nsapi.Namespace{Name: req.GetName()}}, nil
}

func (s *namespaces) Create(ctx context.Context, req *nsapi.CreateNamespaceRequest) (*nsapi.CreateNamespaceResponse, error) {
	s.creates.Add(1)
	if err := s.hold(ctx, "Create"); err != nil {
		return nil, err
	}
	return &nsapi.CreateNamespaceResponse{Namespace: req.GetNamespace()}, nil
}

const nsService = "containerd.services.namespaces.v1.Namespaces"

// namespacesProcess serves a namespaces service in dir, over ttrpc too or
// not, and returns a graph that knows it as "metadata".
func namespacesProcess(t *testing.T, withTTRPC bool, wait time.Duration) (*fakeProcess, *namespaces, *Graph) {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "metadata.sock")
	var f *fakeProcess
	ns := &namespaces{gone: func() <-chan struct{} { return f.stopped() }, entered: make(chan string, 16)}
	f = startFake(t, sock, []string{nsService}, withTTRPC, func(r grpc.ServiceRegistrar) { nsapi.RegisterNamespacesServer(r, ns) })
	g, err := NewGraph(GraphOptions{Processes: map[string]string{"metadata": sock}, Wait: wait})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return f, ns, g
}

// shortTempDir is a directory whose sockets fit in sun_path.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "graph")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func transports(t *testing.T, run func(t *testing.T, withTTRPC bool)) {
	t.Run("ttrpc", func(t *testing.T) { run(t, true) })
	t.Run("grpc", func(t *testing.T) { run(t, false) })
}

// overTTRPC checks that unary calls to the process take its ttrpc socket
// exactly when it has one.
func overTTRPC(t *testing.T, g *Graph, name string, want bool) {
	t.Helper()
	p, err := g.Process(name)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	got := p.fast != nil
	p.mu.Unlock()
	if got != want {
		t.Fatalf("calls to %s over ttrpc: %v, want %v", name, got, want)
	}
}

func entered(t *testing.T, ns *namespaces, want string) {
	t.Helper()
	select {
	case got := <-ns.entered:
		if got != want {
			t.Fatalf("the owner was called for %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the call for %s never reached the owner", want)
	}
}

func TestGraphReadRidesOutARestartOfItsOwner(t *testing.T) {
	transports(t, func(t *testing.T, withTTRPC bool) {
		f, ns, g := namespacesProcess(t, withTTRPC, 5*time.Second)
		client := nsapi.NewNamespacesClient(g)
		ctx := context.Background()
		// The first call learns where the service is, and that the
		// process has a ttrpc socket; the second takes it.
		if _, err := client.Get(ctx, &nsapi.GetNamespaceRequest{Name: "warm"}); err != nil {
			t.Fatal(err)
		}
		entered(t, ns, "Get")
		overTTRPC(t, g, "metadata", withTTRPC)

		ns.stall.Store(true)
		done := make(chan error, 1)
		go func() {
			_, err := client.Get(ctx, &nsapi.GetNamespaceRequest{Name: "x"})
			done <- err
		}()
		entered(t, ns, "Get")
		// The owner goes away with the call in flight, and comes back a
		// moment later.
		f.stop()
		ns.stall.Store(false)
		time.Sleep(300 * time.Millisecond)
		f.start()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("a read whose owner restarted under it failed: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the read did not complete after its owner came back")
		}
		if n := ns.gets.Load(); n != 3 {
			t.Errorf("the owner saw %d Gets, want 3 (one before, the one cut short, the one made again)", n)
		}
	})
}

func TestGraphDoesNotRepeatACallThatChangesSomething(t *testing.T) {
	transports(t, func(t *testing.T, withTTRPC bool) {
		f, ns, g := namespacesProcess(t, withTTRPC, 5*time.Second)
		client := nsapi.NewNamespacesClient(g)
		ctx := context.Background()
		if _, err := client.Get(ctx, &nsapi.GetNamespaceRequest{Name: "warm"}); err != nil {
			t.Fatal(err)
		}
		entered(t, ns, "Get")
		overTTRPC(t, g, "metadata", withTTRPC)

		ns.stall.Store(true)
		done := make(chan error, 1)
		go func() {
			_, err := client.Create(ctx, &nsapi.CreateNamespaceRequest{Namespace: &nsapi.Namespace{Name: "x"}})
			done <- err
		}()
		entered(t, ns, "Create")
		f.stop()
		ns.stall.Store(false)
		f.start()
		select {
		case err := <-done:
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("a Create whose owner went away under it answered %v, want Unavailable", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the Create did not end after its owner went away")
		}
		// Give a wrongly repeated call the time to arrive.
		time.Sleep(300 * time.Millisecond)
		if n := ns.creates.Load(); n != 1 {
			t.Errorf("the owner saw %d Creates, want 1: a call that changes something was made again", n)
		}
	})
}

func TestGraphHoldsACallUntilItsOwnerIsBack(t *testing.T) {
	f, ns, g := namespacesProcess(t, true, 5*time.Second)
	client := nsapi.NewNamespacesClient(g)
	f.stop()
	go func() {
		time.Sleep(500 * time.Millisecond)
		f.start()
	}()
	start := time.Now()
	if _, err := client.Create(context.Background(), &nsapi.CreateNamespaceRequest{Namespace: &nsapi.Namespace{Name: "x"}}); err != nil {
		t.Fatalf("a Create made while its owner was down failed: %v", err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Errorf("the Create answered after %s, before its owner was back", took)
	}
	if n := ns.creates.Load(); n != 1 {
		t.Errorf("the owner saw %d Creates, want 1", n)
	}
}

func TestGraphGivesUpOnAnOwnerThatStaysAwayAfterTheWait(t *testing.T) {
	transports(t, func(t *testing.T, withTTRPC bool) {
		f, _, g := namespacesProcess(t, withTTRPC, 400*time.Millisecond)
		client := nsapi.NewNamespacesClient(g)
		ctx := context.Background()
		if _, err := client.Get(ctx, &nsapi.GetNamespaceRequest{Name: "warm"}); err != nil {
			t.Fatal(err)
		}
		f.stop()
		if withTTRPC {
			// ttrpc's server closes its connections behind Close: one
			// could still answer a call sent at once.
			time.Sleep(100 * time.Millisecond)
		}
		// Over gRPC the call is made at once, while the connection may
		// still look ready: gRPC then holds it for a new one, which the
		// wait must bound too.
		start := time.Now()
		_, err := client.Get(ctx, &nsapi.GetNamespaceRequest{Name: "x"})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("a Get of an owner that stays away answered %v, want Unavailable", err)
		}
		// Each attempt waits once at most.
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("the Get gave up after %s, want about the wait (400ms) for each of its attempts", took)
		}
	})
}

// blobs serves Read of one blob and List; while cut is set, the first
// Read sends the first cut bytes and the first List nothing, then both
// stall until their process goes away.
type blobs struct {
	contentapi.UnimplementedContentServer
	name  string
	data  []byte
	gone  func() <-chan struct{}
	cut   atomic.Int64
	stall atomic.Bool
	asked chan *contentapi.ReadContentRequest
}

func (s *blobs) Read(req *contentapi.ReadContentRequest, stream contentapi.Content_ReadServer) error {
	s.asked <- req
	end := int64(len(s.data))
	if req.GetSize() > 0 {
		end = req.GetOffset() + req.GetSize()
	}
	if cut := s.cut.Load(); cut > 0 {
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: req.GetOffset(), Data: s.data[req.GetOffset():cut]}); err != nil {
			return err
		}
		<-s.gone()
		return status.Error(codes.Unavailable, "going away")
	}
	for off := req.GetOffset(); off < end; off += 700 {
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: off, Data: s.data[off:min(off+700, end)]}); err != nil {
			return err
		}
	}
	return nil
}

func (s *blobs) Info(_ context.Context, req *contentapi.InfoRequest) (*contentapi.InfoResponse, error) {
	return &contentapi.InfoResponse{Info: &contentapi.Info{Digest: req.GetDigest(), Labels: map[string]string{"from": s.name}}}, nil
}

func (s *blobs) List(_ *contentapi.ListContentRequest, stream contentapi.Content_ListServer) error {
	if s.stall.Load() {
		<-s.gone()
		return status.Error(codes.Unavailable, "going away")
	}
	return stream.Send(&contentapi.ListContentResponse{Info: []*contentapi.Info{{Digest: "sha256:one"}, {Digest: "sha256:two"}}})
}

func blobsProcess(t *testing.T) (*fakeProcess, *blobs, *Graph) {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "content.sock")
	data := make([]byte, 10_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var f *fakeProcess
	b := &blobs{data: data, gone: func() <-chan struct{} { return f.stopped() }, asked: make(chan *contentapi.ReadContentRequest, 8)}
	// Content claims nothing the graph routes by service (metadata owns
	// the namespaced Content API); Read reaches it as a method of its own.
	f = startFake(t, sock, nil, true, func(r grpc.ServiceRegistrar) { contentapi.RegisterContentServer(r, b) })
	g, err := NewGraph(GraphOptions{
		Processes: map[string]string{"content": sock},
		Methods: map[string]string{
			contentread.Method: "content",
			"/containerd.services.content.v1.Content/List": "content",
		},
		Wait: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return f, b, g
}

func TestGraphResumesAContentReadFromTheFirstByteNotReceived(t *testing.T) {
	f, b, g := blobsProcess(t)
	b.cut.Store(3000)
	rs, err := contentapi.NewContentClient(g).Read(context.Background(), &contentapi.ReadContentRequest{Digest: "sha256:blob"})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	first, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got.Write(first.GetData())
	<-b.asked
	// The owner goes away mid-blob and comes back.
	f.stop()
	b.cut.Store(0)
	f.start()
	for {
		resp, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the read failed after its owner restarted: %v", err)
		}
		got.Write(resp.GetData())
	}
	if !bytes.Equal(got.Bytes(), b.data) {
		t.Fatalf("read %d bytes that are not the blob's %d", got.Len(), len(b.data))
	}
	select {
	case again := <-b.asked:
		if again.GetOffset() != 3000 {
			t.Errorf("the read was asked again from offset %d, want 3000 (the first byte not received)", again.GetOffset())
		}
	default:
		t.Error("the read was not asked again")
	}
}

func TestGraphReopensAListingThatBrokeBeforeItsFirstMessage(t *testing.T) {
	f, b, g := blobsProcess(t)
	b.stall.Store(true)
	var (
		wg   sync.WaitGroup
		got  []string
		lerr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		ls, err := contentapi.NewContentClient(g).List(context.Background(), &contentapi.ListContentRequest{})
		if err != nil {
			lerr = err
			return
		}
		for {
			resp, err := ls.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				lerr = err
				return
			}
			for _, i := range resp.GetInfo() {
				got = append(got, i.GetDigest())
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	f.stop()
	b.stall.Store(false)
	f.start()
	wg.Wait()
	if lerr != nil {
		t.Fatalf("a listing whose owner restarted before it sent anything failed: %v", lerr)
	}
	if len(got) != 2 {
		t.Fatalf("listed %v, want the two blobs once", got)
	}
}

func TestGraphSendsEachCallToItsOwner(t *testing.T) {
	dir := shortTempDir(t)
	metaSock, contentSock, gwSock := filepath.Join(dir, "metadata.sock"), filepath.Join(dir, "content.sock"), filepath.Join(dir, "gw.sock")
	ns := &namespaces{}
	namespaced := &blobs{name: "metadata", data: []byte("blob"), asked: make(chan *contentapi.ReadContentRequest, 8)}
	startFake(t, metaSock, []string{nsService, "containerd.services.content.v1.Content"}, true, func(r grpc.ServiceRegistrar) {
		nsapi.RegisterNamespacesServer(r, ns)
		contentapi.RegisterContentServer(r, namespaced)
	})
	raw := &blobs{name: "content", data: []byte("blob"), asked: make(chan *contentapi.ReadContentRequest, 8)}
	startFake(t, contentSock, nil, true, func(r grpc.ServiceRegistrar) { contentapi.RegisterContentServer(r, raw) })
	// The gateway serves no Describe: it is known to own the daemon's
	// own services.
	gw := NewServer(slog.New(slog.DiscardHandler))
	versionapi.RegisterVersionServer(gw.Server, version{})
	gl, err := Listen(gwSock)
	if err != nil {
		t.Fatal(err)
	}
	go gw.Serve(gl)
	t.Cleanup(gw.Stop)

	g, err := NewGraph(GraphOptions{
		Processes: map[string]string{"metadata": metaSock, "content": contentSock},
		Gateway:   gwSock,
		Methods:   map[string]string{contentread.Method: "content"},
		Wait:      time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx := context.Background()
	if _, err := nsapi.NewNamespacesClient(g).Get(ctx, &nsapi.GetNamespaceRequest{Name: "x"}); err != nil || ns.gets.Load() != 1 {
		t.Errorf("Namespaces.Get did not reach metadata: %v", err)
	}
	info, err := contentapi.NewContentClient(g).Info(ctx, &contentapi.InfoRequest{Digest: "sha256:x"})
	if err != nil || info.GetInfo().GetLabels()["from"] != "metadata" {
		t.Errorf("Content.Info did not reach metadata, the owner of Content: %v %v", info, err)
	}
	rs, err := contentapi.NewContentClient(g).Read(ctx, &contentapi.ReadContentRequest{Digest: "sha256:x"})
	if err == nil {
		_, err = rs.Recv()
	}
	if err != nil || len(raw.asked) != 1 || len(namespaced.asked) != 0 {
		t.Errorf("Content.Read did not reach content, its method's owner: %v", err)
	}
	if v, err := versionapi.NewVersionClient(g).Version(ctx, &emptypb.Empty{}); err != nil || v.GetVersion() != "gw" {
		t.Errorf("Version did not reach the gateway: %v %v", v, err)
	}
	if _, err := g.Process("tasks"); err == nil {
		t.Error("a process that was not given is found")
	}
	if err := g.Invoke(ctx, "/nobody.v1.Knows/This", &emptypb.Empty{}, &emptypb.Empty{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("a service nobody serves answered %v, want Unimplemented", err)
	}
}

type version struct {
	versionapi.UnimplementedVersionServer
}

func (version) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	return &versionapi.VersionResponse{Version: "gw"}, nil
}
