package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/pkg/contentread"
	"github.com/flotilla-project/flotilla/pkg/metrics"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// A service reaches another on the owner's own socket, never through the
// gateway, which is the front door for clients outside the graph. Graph is
// the one client every service does that with: it sends each call to the
// process that owns the call's gRPC service, and gives the caller across
// a restart of that process what the gateway gives outside clients — the
// call waits for the owner to come back, a repeatable call is made again
// when the owner went away under it, a reading stream is opened again.

// DefaultWait is how long a call waits for its owner to come back, as the
// gateway's route_wait.
const DefaultWait = 10 * time.Second

// MethodOwners are methods whose owner is named here rather than found by
// their gRPC service, by full method name, to the owning process's name:
// what the gateway routes by method, the graph's client routes alike.
//
// None is by default: a process claims single methods in what it describes
// of itself (the content process, the namespaced Content Read and Write it
// moves the bytes of, when it can ask metadata), and what none claims goes
// with its service (to metadata, for the rest of Content).
var MethodOwners = map[string]string{}

// MethodNames are the methods an owner serves under another name than the
// one a client calls, as processes claim them: the content process serves
// the raw Content API under containerd's name, and the namespaced streams
// under its own.
var MethodNames = map[string]string{
	contentread.Method: "/flotilla.content.v1.Namespaced/Read",
	"/containerd.services.content.v1.Content/Write": "/flotilla.content.v1.Namespaced/Write",
}

// GatewayServices are the gRPC services flotillad itself serves, being
// about the daemon as a whole.
var GatewayServices = []string{
	"containerd.services.events.v1.Events",
	"containerd.services.introspection.v1.Introspection",
	"containerd.services.version.v1.Version",
	"flotilla.admin.v1.Admin",
}

// GraphOptions say where the processes of the graph a process calls are.
type GraphOptions struct {
	// Processes maps the processes called, by the names flotillad gives
	// them ("metadata", "snapshotter-overlayfs"), to their sockets. Each
	// says on its socket what it serves (Describe).
	Processes map[string]string
	// Gateway is flotillad's socket, the owner of GatewayServices; empty
	// when the process calls none of them.
	Gateway string
	// Methods overrides the owner of single methods (full name to process
	// name); nil takes MethodOwners (and MethodNames).
	Methods map[string]string
	// Names are the names owners serve routed methods under (see
	// MethodNames).
	Names map[string]string
	// Wait bounds how long a call waits for its owner to come back;
	// zero takes DefaultWait.
	Wait time.Duration
	// Timeout bounds a unary call that carries no shorter deadline; zero
	// sets none (a layer apply can rightly take minutes).
	Timeout time.Duration
	// Logger hears of calls made again; nil discards.
	Logger *slog.Logger
}

// Graph is a grpc.ClientConnInterface over the processes of the graph:
// generated clients take it as they take a grpc.ClientConn.
type Graph struct {
	opts    GraphOptions
	peers   map[string]*Peer
	gateway *Peer
	methods map[string]string

	// learn is held while the processes are asked what they serve.
	learn  sync.Mutex
	mu     sync.RWMutex
	routes map[string]*Peer // service or full method -> owner
	clash  map[string]string
	// renames are the names claimed methods are served under.
	renames map[string]string
}

var _ grpc.ClientConnInterface = (*Graph)(nil)

// NewGraph returns a client of the processes named; nothing is dialled
// before the first call.
func NewGraph(o GraphOptions) (*Graph, error) {
	if o.Wait <= 0 {
		o.Wait = DefaultWait
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Methods == nil {
		o.Methods = MethodOwners
		if o.Names == nil {
			o.Names = MethodNames
		}
	}
	g := &Graph{opts: o, peers: map[string]*Peer{}, methods: o.Methods, routes: map[string]*Peer{}, renames: map[string]string{}, clash: map[string]string{}}
	for name, sock := range o.Processes {
		p, err := newPeer(name, sock, o, g.claim)
		if err != nil {
			g.Close()
			return nil, err
		}
		g.peers[name] = p
	}
	if o.Gateway != "" {
		p, err := newPeer("gateway", o.Gateway, o, nil)
		if err != nil {
			g.Close()
			return nil, err
		}
		// It serves no Describe, and nothing over ttrpc but events.
		p.described = true
		g.gateway = p
	}
	return g, nil
}

// Process is the client of one process, whatever gRPC service the call
// names: a content or snapshotter process's own (unnamespaced) API has the
// name of the namespaced one metadata owns.
func (g *Graph) Process(name string) (*Peer, error) {
	p, ok := g.peers[name]
	if !ok {
		return nil, fmt.Errorf("the socket of %s was not given", name)
	}
	return p, nil
}

// Invoke makes a unary call to the owner of method.
func (g *Graph) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	p, err := g.owner(ctx, method)
	if err != nil {
		return err
	}
	return p.Invoke(ctx, g.served(method), args, reply, opts...)
}

// NewStream opens a stream to the owner of method.
func (g *Graph) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	p, err := g.owner(ctx, method)
	if err != nil {
		return nil, err
	}
	return p.NewStream(ctx, desc, g.served(method), opts...)
}

// Close drops every connection.
func (g *Graph) Close() error {
	for _, p := range g.peers {
		p.Close()
	}
	if g.gateway != nil {
		g.gateway.Close()
	}
	return nil
}

// clientMethod is the method a client called that an owner serves as
// method (MethodNames), or method itself.
func clientMethod(method string) string {
	for client, as := range MethodNames {
		if as == method {
			return client
		}
	}
	return method
}

// served is the name method's owner serves it under.
func (g *Graph) served(method string) string {
	if _, routed := g.methods[method]; routed {
		if as, ok := g.opts.Names[method]; ok {
			return as
		}
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	if as, ok := g.renames[method]; ok {
		return as
	}
	return method
}

// owner finds the process that serves method. The processes say what they
// serve when first asked; one that does not answer (restarting) is waited
// for, within the wait, unless another claims the service meanwhile.
func (g *Graph) owner(ctx context.Context, method string) (*Peer, error) {
	if name, ok := g.methods[method]; ok {
		if p := g.peers[name]; p != nil {
			return p, nil
		}
		return nil, status.Errorf(codes.Unimplemented, "%s is served by %s, whose socket this process was not given", method, name)
	}
	svc := serviceOf(method)
	if slices.Contains(GatewayServices, svc) {
		if g.gateway == nil {
			return nil, status.Errorf(codes.Unimplemented, "%s is served by the gateway, whose socket this process was not given", method)
		}
		return g.gateway, nil
	}
	var expired <-chan time.Time
	for {
		if p, err := g.lookup(method, svc); p != nil || err != nil {
			return p, err
		}
		silent := g.describeAll(ctx)
		if p, err := g.lookup(method, svc); p != nil || err != nil {
			return p, err
		}
		if len(silent) == 0 {
			return nil, status.Errorf(codes.Unimplemented, "no process of the graph this process knows serves %s", svc)
		}
		if expired == nil {
			t := time.NewTimer(g.opts.Wait)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-expired:
			return nil, status.Errorf(codes.Unavailable, "no process answered for %s within %s (not answering: %s)", svc, g.opts.Wait, strings.Join(silent, ", "))
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (g *Graph) lookup(method, svc string) (*Peer, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for _, key := range []string{method, svc} {
		if c, ok := g.clash[key]; ok {
			return nil, status.Errorf(codes.FailedPrecondition, "%s both claim %s", c, key)
		}
		if p, ok := g.routes[key]; ok {
			return p, nil
		}
	}
	return nil, nil
}

// describeAll asks every process not yet described what it serves, and
// returns those that did not answer.
func (g *Graph) describeAll(ctx context.Context) (silent []string) {
	g.learn.Lock()
	defer g.learn.Unlock()
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for name, p := range g.peers {
		if p.isDescribed() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.describe(ctx); err != nil {
				mu.Lock()
				silent = append(silent, name)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(silent)
	return silent
}

// claim records the routes a process serves: gRPC service names, or full
// method names ("pkg.Service/Method") for a single method.
func (g *Graph) claim(p *Peer, routes []string, methods map[string]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for m, as := range methods {
		if other, ok := g.routes[m]; ok && other != p {
			g.clash[m] = other.name + " and " + p.name
			continue
		}
		g.routes[m] = p
		g.renames[m] = as
	}
	for _, r := range routes {
		key := r
		if strings.Contains(r, "/") {
			key = "/" + strings.TrimPrefix(r, "/")
		}
		if other, ok := g.routes[key]; ok && other != p {
			g.clash[key] = other.name + " and " + p.name
			continue
		}
		g.routes[key] = p
	}
}

// maxAttempts bounds how many restarts of its owner one call rides out.
const maxAttempts = 3

// describeTimeout bounds asking a process what it serves.
const describeTimeout = 2 * time.Second

// Peer is a client of one process of the graph. Unary calls go over the
// process's ttrpc socket when it has one (about half the cost of a gRPC
// call between processes), streams and whatever ttrpc cannot carry over
// gRPC.
type Peer struct {
	name    string
	socket  string
	wait    time.Duration
	timeout time.Duration
	logger  *slog.Logger
	ttrpc   string // where its ttrpc socket is, if it serves one
	// claim is told what the process serves once it said so.
	claim func(*Peer, []string, map[string]string)
	// conn is replaced when the process has been away for the wait (see
	// watch).
	conn atomic.Pointer[grpc.ClientConn]

	mu         sync.Mutex
	described  bool
	describing bool
	closed     bool
	fast       *TTRPCConn
}

var _ grpc.ClientConnInterface = (*Peer)(nil)

func newPeer(name, socket string, o GraphOptions, claim func(*Peer, []string, map[string]string)) (*Peer, error) {
	// Deadlines are the peer's to set, once for the whole call with the
	// waits and attempts in it.
	conn, err := DialTimeout(socket, 0)
	if err != nil {
		return nil, err
	}
	p := &Peer{name: name, socket: socket, wait: o.Wait, timeout: o.Timeout, logger: o.Logger, ttrpc: TTRPCSocket(socket), claim: claim}
	p.conn.Store(conn)
	go p.watch()
	return p, nil
}

// watch bounds how long a call waits on a connection that is down. gRPC
// holds a call for a connection to come back (WaitForReady) with no bound
// but the call's deadline, and some calls rightly have none: a call that
// found the process there and lost it before it was sent is held so. Once
// the process has been away for the wait, the connection is closed, which
// ends what waits on it, and a fresh one takes its place.
func (p *Peer) watch() {
	for {
		conn := p.conn.Load()
		st := conn.GetState()
		switch st {
		case connectivity.Shutdown:
			return
		case connectivity.Ready, connectivity.Idle:
			conn.WaitForStateChange(context.Background(), st)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.wait)
		for st != connectivity.Ready && st != connectivity.Shutdown && conn.WaitForStateChange(ctx, st) {
			st = conn.GetState()
		}
		cancel()
		if st == connectivity.Ready || st == connectivity.Shutdown {
			continue
		}
		fresh, err := DialTimeout(p.socket, 0)
		if err != nil {
			p.logger.Error("redial", "process", p.name, "error", err)
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = fresh.Close()
			return
		}
		p.conn.Store(fresh)
		p.mu.Unlock()
		_ = conn.Close()
	}
}

// gaveUp turns the error of a call that watch ended (it closed the call's
// connection under it) into what it means.
func (p *Peer) gaveUp(ctx context.Context, conn *grpc.ClientConn, method string, err error) error {
	if status.Code(err) == codes.Canceled && ctx.Err() == nil && conn.GetState() == connectivity.Shutdown && !p.isClosed() {
		return status.Errorf(codes.Unavailable, "%s (%s) is not available after %s", p.name, method, p.wait)
	}
	return err
}

func (p *Peer) isDescribed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.described
}

// describe asks the process what it serves and whether it serves ttrpc. A
// process that does not know the question (a containerd proxy plugin, a
// remote snapshotter) serves nothing the graph routes to, over gRPC alone.
func (p *Peer) describe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, describeTimeout)
	defer cancel()
	// Not waiting for a process that is down: another may serve what is
	// looked for, and the caller waits for this one in its own time.
	info, err := servicepb.NewServiceClient(p.conn.Load()).Describe(ctx, &servicepb.DescribeRequest{}, grpc.WaitForReady(false))
	if err != nil && status.Code(err) != codes.Unimplemented {
		return err
	}
	// Claimed before it counts as described, so that whoever finds it
	// described finds its routes too.
	if p.claim != nil {
		p.claim(p, info.GetRoutes(), info.GetMethodRoutes())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.described = true
	if info.GetExports()["ttrpc"] != "" && p.fast == nil && !p.closed {
		// The path as this process sees the socket, which another
		// mount namespace may name differently from the peer.
		p.fast = NewTTRPCConn(p.ttrpc)
	}
	return nil
}

// fastConn is the ttrpc connection, once the process said it has one.
// Until then calls go over gRPC while it is asked, in the background: a
// process that does not answer (stopped, restarting) must not hold them.
func (p *Peer) fastConn() *TTRPCConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.described && !p.describing {
		p.describing = true
		go func() {
			_ = p.describe(context.Background())
			p.mu.Lock()
			p.describing = false
			p.mu.Unlock()
		}()
	}
	return p.fast
}

// Invoke makes a unary call. A call that may be made again is, when the
// process went away under it (Unavailable), once it is back.
func (p *Peer) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if dl, ok := ctx.Deadline(); p.timeout > 0 && (!ok || time.Until(dl) > p.timeout) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.timeout)
		defer cancel()
	}
	again := Repeatable(method)
	for attempt := 1; ; attempt++ {
		waited, err := p.invoke(ctx, method, args, reply, opts...)
		if err == nil || !again || waited || attempt == maxAttempts || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		p.logger.Debug("owner went away under a call, calling again", "process", p.name, "method", method, "error", err)
	}
}

// invoke makes a call once; waited says that it failed because the process
// was not back within the wait, which making it again would only repeat.
func (p *Peer) invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) (waited bool, err error) {
	if m, ok := args.(proto.Message); ok && TTRPCCarries(method, proto.Size(m)) {
		if fast := p.fastConn(); fast != nil {
			if c, err := fast.Client(); err == nil {
				err := p.invokeTTRPC(ctx, c, method, args, reply)
				if err == nil {
					return false, nil
				}
				if again, err := TTRPCFailed(method, p.name, err); !again {
					return false, err
				}
			}
		}
	}
	conn, err := p.ready(ctx, method)
	if err != nil {
		return true, err
	}
	err = conn.Invoke(ctx, method, args, reply, opts...)
	if gone := p.gaveUp(ctx, conn, method, err); gone != err {
		return true, gone
	}
	return false, err
}

func (p *Peer) invokeTTRPC(ctx context.Context, c *ttrpc.Client, method string, args, reply any) error {
	i := strings.LastIndex(method, "/")
	svc, name := strings.TrimPrefix(method[:i], "/"), method[i+1:]
	md := metadata.MD{}
	if out, ok := metadata.FromOutgoingContext(ctx); ok {
		md = out.Copy()
	}
	InjectTrace(ctx, md)
	cctx := ttrpc.WithMetadata(ctx, ttrpc.MD(md))
	// Counted as the gRPC calls are, so metrics do not depend on the path.
	return metrics.Client.UnaryClientInterceptor()(cctx, method, args, reply, nil,
		func(ctx context.Context, _ string, args, reply any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			return c.Call(ctx, svc, name, args, reply)
		})
}

// ready holds a call while the process's connection is down (it is
// restarting), for at most the wait, and returns the connection to make it
// on.
func (p *Peer) ready(ctx context.Context, method string) (*grpc.ClientConn, error) {
	conn := p.conn.Load()
	if conn.GetState() == connectivity.Ready {
		return conn, nil
	}
	wctx, cancel := context.WithTimeout(ctx, p.wait)
	defer cancel()
	for {
		// Loaded again each time: watch may have put a fresh one in
		// place of one that stayed down.
		conn = p.conn.Load()
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			return conn, nil
		case connectivity.Idle:
			conn.Connect()
		case connectivity.Shutdown:
			if p.isClosed() {
				return nil, status.Errorf(codes.Canceled, "client of %s closed", p.name)
			}
			// Replaced just now: the next round takes the fresh one.
			continue
		}
		if !conn.WaitForStateChange(wctx, st) {
			if err := ctx.Err(); err != nil {
				return nil, status.FromContextError(err).Err()
			}
			return nil, status.Errorf(codes.Unavailable, "%s (%s) is not available after %s", p.name, method, p.wait)
		}
	}
}

func (p *Peer) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// NewStream opens a stream over gRPC once the process is there. A stream
// that only reads is opened again when the process goes away under it:
// from the start if nothing was received yet, and for a content Read from
// the first byte not received.
func (p *Peer) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	conn, err := p.ready(ctx, method)
	if err != nil {
		return nil, err
	}
	cs, err := conn.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, p.gaveUp(ctx, conn, method, err)
	}
	if !desc.ServerStreams || desc.ClientStreams || !ReadOnly(clientMethod(method)) {
		return cs, nil
	}
	return &readingStream{ClientStream: cs, p: p, ctx: ctx, desc: desc, method: method, opts: opts}, nil
}

// Close drops the connections.
func (p *Peer) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.fast != nil {
		p.fast.Close()
	}
	_ = p.conn.Load().Close()
}

// readingStream is a server stream that only reads, made again when the
// process serving it goes away under it.
type readingStream struct {
	grpc.ClientStream
	p      *Peer
	ctx    context.Context
	desc   *grpc.StreamDesc
	method string
	opts   []grpc.CallOption

	req      any // the one request
	resume   *contentread.Resume
	received bool
	attempts int
}

func (s *readingStream) SendMsg(m any) error {
	s.req = m
	if r, ok := m.(*contentapi.ReadContentRequest); ok && clientMethod(s.method) == contentread.Method {
		s.resume = contentread.New(r)
	}
	return s.ClientStream.SendMsg(m)
}

func (s *readingStream) RecvMsg(m any) error {
	for {
		err := s.ClientStream.RecvMsg(m)
		if err == nil {
			if r, ok := m.(*contentapi.ReadContentResponse); ok && s.resume != nil {
				s.resume.Got(r.GetOffset(), len(r.GetData()))
			}
			s.received = true
			return nil
		}
		if errors.Is(err, io.EOF) || s.req == nil || status.Code(err) != codes.Unavailable || s.ctx.Err() != nil || s.attempts+1 >= maxAttempts {
			return err
		}
		req := s.req
		switch {
		case s.resume != nil:
			rest, more := s.resume.Rest()
			if !more {
				return io.EOF
			}
			req = rest
		case s.received:
			// The caller holds part of the answer, which a new call
			// would give again from its start.
			return err
		}
		s.attempts++
		s.p.logger.Debug("owner went away under a reading stream, opening it again", "process", s.p.name, "method", s.method, "error", err)
		if err := s.reopen(req); err != nil {
			return err
		}
	}
}

func (s *readingStream) reopen(req any) error {
	conn, err := s.p.ready(s.ctx, s.method)
	if err != nil {
		return err
	}
	cs, err := conn.NewStream(s.ctx, s.desc, s.method, s.opts...)
	if err != nil {
		return s.p.gaveUp(s.ctx, conn, s.method, err)
	}
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	s.ClientStream = cs
	return nil
}

// TTRPCSocket is where a service serving gRPC on socket serves ttrpc.
func TTRPCSocket(socket string) string {
	return strings.TrimSuffix(socket, ".sock") + ".ttrpc.sock"
}

func serviceOf(method string) string {
	method = strings.TrimPrefix(method, "/")
	if i := strings.LastIndex(method, "/"); i >= 0 {
		return method[:i]
	}
	return method
}
