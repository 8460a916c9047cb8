// Package router forwards client calls to the service process that owns
// them. It routes by the gRPC service name of each call and moves messages as
// undecoded frames in both directions, so it serves unary and every kind of
// streaming call alike and needs no knowledge of the APIs behind it.
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/flotilla-project/flotilla/pkg/contentread"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// Router maps gRPC service names to backend processes.
type Router struct {
	logger *slog.Logger
	wait   time.Duration

	mu     sync.RWMutex
	routes map[string]*backend // gRPC service name -> backend
	// methods routes single methods apart from their service's process:
	// full method -> the backend and the method it serves it under.
	methods  map[string]methodRoute
	backends map[string]*backend // service process name -> backend
	// holds maps a held process name to a channel closed by Release.
	holds map[string]chan struct{}

	ready     chan struct{}
	readyOnce sync.Once

	// blobFD is the content process's socket handing out blob files: a
	// client's content Read is served from the file here (blobread.go).
	blobFD atomic.Pointer[string]
	grants grants
}

type methodRoute struct {
	be *backend
	as string
}

type backend struct {
	name   string
	socket string
	conn   *grpc.ClientConn
	fast   *rpc.TTRPCConn
	// inflight counts calls routed to the process and not yet finished, so
	// a graceful restart can wait for them (Drain).
	inflight atomic.Int64
}

// New returns a router that holds a call for a backend that is not ready for
// at most wait before answering Unavailable.
func New(logger *slog.Logger, wait time.Duration) *Router {
	return &Router{
		logger:   logger,
		wait:     wait,
		routes:   map[string]*backend{},
		methods:  map[string]methodRoute{},
		backends: map[string]*backend{},
		holds:    map[string]chan struct{}{},
		ready:    make(chan struct{}),
	}
}

// Set records that the named process serves routes (gRPC services) and
// methods (full method a client calls -> full method the process serves it
// under) on socket. A process keeps its socket path across restarts, so the
// connection is made once and gRPC re-establishes it whenever the process
// comes back.
func (r *Router) Set(name, socket string, routes []string, methods map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	be, ok := r.backends[name]
	if !ok || be.socket != socket {
		// No deadline of the gateway's own: a call carries its client's
		// (Tasks.Wait may rightly wait for hours).
		conn, err := rpc.DialTimeout(socket, 0)
		if err != nil {
			return fmt.Errorf("route to %s: %w", name, err)
		}
		if ok {
			_ = be.conn.Close()
			if be.fast != nil {
				be.fast.Close()
			}
		}
		be = &backend{name: name, socket: socket, conn: conn}
		r.backends[name] = be
	}
	for svc, b := range r.routes {
		if b.name == name {
			delete(r.routes, svc)
		}
	}
	for m, mr := range r.methods {
		if mr.be.name == name {
			delete(r.methods, m)
		}
	}
	for m, as := range methods {
		if other, taken := r.methods[m]; taken && other.be.name != name {
			return fmt.Errorf("%s and %s both claim %s", other.be.name, name, m)
		}
		r.methods[m] = methodRoute{be: be, as: as}
	}
	for _, svc := range routes {
		if other, taken := r.routes[svc]; taken && other.name != name {
			return fmt.Errorf("%s and %s both claim %s", other.name, name, svc)
		}
		r.routes[svc] = be
	}
	return nil
}

// Ready marks the end of startup: from now on a call for a service nobody
// serves is Unimplemented at once rather than held until startup completes.
func (r *Router) Ready() { r.readyOnce.Do(func() { close(r.ready) }) }

// Backend returns the name of the process serving svc.
func (r *Router) Backend(svc string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	be, ok := r.routes[svc]
	if !ok {
		return "", false
	}
	return be.name, true
}

// Call makes a unary call of the gateway's own to the named process (not
// routed: the method need not be one the process routes), counted in flight
// on it as routed calls are. It waits for a process that is restarting up
// to ctx's deadline, or the default call timeout when ctx has none.
func (r *Router) Call(ctx context.Context, name, method string, req, reply any) error {
	r.mu.RLock()
	be := r.backends[name]
	if be != nil {
		be.inflight.Add(1)
	}
	r.mu.RUnlock()
	if be == nil {
		return status.Errorf(codes.Unavailable, "service %s is not known to the gateway", name)
	}
	defer be.done()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rpc.DefaultCallTimeout)
		defer cancel()
	}
	return be.conn.Invoke(ctx, method, req, reply)
}

// Close drops every backend connection.
func (r *Router) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, be := range r.backends {
		_ = be.conn.Close()
		if be.fast != nil {
			be.fast.Close()
		}
	}
	r.backends = map[string]*backend{}
	r.routes = map[string]*backend{}
	r.methods = map[string]methodRoute{}
}

// acquire finds the backend serving svc and counts the call in flight on
// it; the caller ends the call with be.done(). It holds the call, for at most
// the router's wait in all, while startup is in progress and while the
// backend is held.
func (r *Router) acquire(ctx context.Context, svc string) (*backend, error) {
	be, _, err := r.acquireMethod(ctx, svc, "")
	return be, err
}

// acquireMethod is acquire for a call of method (a full method name; "" for
// any of svc's), which may be routed apart from its service: it returns the
// method to call on the backend too.
func (r *Router) acquireMethod(ctx context.Context, svc, method string) (*backend, string, error) {
	var (
		timer    *time.Timer
		timedOut bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	expiry := func() <-chan time.Time {
		if timer == nil {
			timer = time.NewTimer(r.wait)
		}
		return timer.C
	}
	for {
		// The hold check and the count happen under one lock, which Hold
		// takes too: a call either waits or is seen by Drain.
		r.mu.RLock()
		be, ok := r.routes[svc]
		as := method
		if mr, routed := r.methods[method]; routed && method != "" {
			be, ok, as = mr.be, true, mr.as
		}
		var held chan struct{}
		if ok {
			if held = r.holds[be.name]; held == nil {
				be.inflight.Add(1)
			}
		}
		r.mu.RUnlock()
		switch {
		case ok && held == nil:
			return be, as, nil
		case ok:
			if timedOut {
				return nil, "", status.Errorf(codes.Unavailable, "service %s (%s) is restarting and not available after %s", be.name, svc, r.wait)
			}
			select {
			case <-held:
			case <-expiry():
				timedOut = true
			case <-ctx.Done():
				return nil, "", status.FromContextError(ctx.Err()).Err()
			}
			continue
		}
		select {
		case <-r.ready:
			return nil, "", status.Errorf(codes.Unimplemented, "unknown service %s", svc)
		default:
		}
		if timedOut {
			return nil, "", status.Errorf(codes.Unimplemented, "unknown service %s", svc)
		}
		select {
		case <-r.ready:
		case <-expiry():
			timedOut = true
		case <-ctx.Done():
			return nil, "", status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (be *backend) done() { be.inflight.Add(-1) }

// Hold makes new calls to the named process wait (each for at most the
// router's wait) until Release; calls already in flight go on. Holding a
// held process changes nothing.
func (r *Router) Hold(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holds[name] == nil {
		r.holds[name] = make(chan struct{})
	}
}

// Release lets the calls held for the named process through. The process
// has usually just restarted: its connections are made afresh rather than
// after whatever reconnect backoff they have reached.
func (r *Router) Release(name string) {
	r.mu.Lock()
	held := r.holds[name]
	delete(r.holds, name)
	be := r.backends[name]
	r.mu.Unlock()
	if be != nil {
		be.conn.ResetConnectBackoff()
		if be.fast != nil {
			be.fast.Close()
		}
	}
	if held != nil {
		close(held)
	}
}

// InFlight is the number of calls routed to the named process that have not
// finished.
func (r *Router) InFlight(name string) int64 {
	r.mu.RLock()
	be := r.backends[name]
	r.mu.RUnlock()
	if be == nil {
		return 0
	}
	return be.inflight.Load()
}

// Drain waits until no call to the named process is in flight, or until ctx
// ends, when it reports how many still are.
func (r *Router) Drain(ctx context.Context, name string) error {
	// A drain is rare and short, so polling is simpler than waking on
	// every call's end.
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		n := r.InFlight(name)
		if n <= 0 {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%d call(s) to %s still in flight: %w", n, name, ctx.Err())
		}
	}
}

// ServerOptions are what the gateway's gRPC server needs to hand every call
// it does not serve itself to the router.
func (r *Router) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(r.handle),
		grpc.ForceServerCodecV2(rpc.FrameCodec{}),
	}
}

// forwardUnary relays a unary call with one Invoke: cheaper than a proxied
// stream by a goroutine pair and, more to the point, by the separate
// end-of-stream frame a client-streaming call costs on the backend hop.
func (r *Router) forwardUnary(ctx context.Context, ss grpc.ServerStream, be *backend, svc, method string) error {
	req := &rpc.Frame{}
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	resp, header, trailer, err := r.unaryCall(ctx, be, svc, method, req)
	if len(header) > 0 {
		_ = ss.SetHeader(header)
	}
	ss.SetTrailer(trailer)
	if err != nil {
		return err
	}
	if err := ss.SendMsg(resp); err != nil {
		if f, ok := resp.(*rpc.Frame); ok {
			f.Free()
		}
		return err
	}
	return nil
}

// unaryCall makes a unary call to a backend, over ttrpc when it can, and
// returns the response (a message, or an undecoded frame) and, from gRPC,
// the backend's header and trailer. ctx carries the outgoing metadata.
func (r *Router) unaryCall(ctx context.Context, be *backend, svc, method string, req *rpc.Frame) (any, metadata.MD, metadata.MD, error) {
	defer req.Free()
	if out, done, err := r.forwardFast(ctx, be, svc, method, req); done {
		return out, nil, nil, err
	}
	if err := r.waitReady(ctx, be, svc); err != nil {
		return nil, nil, nil, err
	}
	// A call that may be made again (it only reads, or is idempotent, by
	// its method's descriptor) is, when its service went away under it
	// (a restart): the client sees latency, not an error. Its request is
	// kept apart (and may be empty: a List without a filter encodes to no
	// bytes).
	repeatable := rpc.Repeatable(method)
	var again []byte
	if repeatable {
		again = append([]byte(nil), req.Bytes()...)
	}
	var header, trailer metadata.MD
	resp := &rpc.Frame{}
	err := be.conn.Invoke(ctx, method, req, resp, grpc.ForceCodecV2(rpc.FrameCodec{}),
		grpc.WaitForReady(true), grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil && repeatable && status.Code(err) == codes.Unavailable && ctx.Err() == nil {
		if werr := r.waitReady(ctx, be, svc); werr == nil {
			header, trailer = nil, nil
			resp = &rpc.Frame{}
			err = be.conn.Invoke(ctx, method, rpc.NewFrame(again), resp, grpc.ForceCodecV2(rpc.FrameCodec{}),
				grpc.WaitForReady(true), grpc.Header(&header), grpc.Trailer(&trailer))
		}
	}
	return resp, header, trailer, err
}

// RegisterUnary registers, on the gateway's server, every unary method of
// the containerd services whose descriptors are linked in (except those in
// skip, which the gateway serves itself) as a unary handler that routes the
// call: gRPC serves a unary call with less than a stream costs. Streaming
// methods still reach the router as unknown methods.
func (r *Router) RegisterUnary(s *grpc.Server, prefix string, skip map[string]bool) {
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		svcs := fd.Services()
		for i := 0; i < svcs.Len(); i++ {
			sd := svcs.Get(i)
			name := string(sd.FullName())
			if !strings.HasPrefix(name, prefix) || skip[name] {
				continue
			}
			desc := &grpc.ServiceDesc{ServiceName: name, HandlerType: (*any)(nil), Metadata: fd.Path()}
			methods := sd.Methods()
			for j := 0; j < methods.Len(); j++ {
				md := methods.Get(j)
				if md.IsStreamingClient() || md.IsStreamingServer() {
					continue
				}
				desc.Methods = append(desc.Methods, grpc.MethodDesc{
					MethodName: string(md.Name()),
					Handler:    r.unaryHandler(name, "/"+name+"/"+string(md.Name())),
				})
			}
			if len(desc.Methods) > 0 {
				s.RegisterService(desc, struct{}{})
			}
		}
		return true
	})
}

func (r *Router) unaryHandler(svc, method string) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	info := &grpc.UnaryServerInfo{FullMethod: method}
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		req := &rpc.Frame{}
		if err := dec(req); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return r.routeUnary(ctx, svc, method, req)
		}
		return interceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return r.routeUnary(ctx, svc, method, req.(*rpc.Frame))
		})
	}
}

func (r *Router) routeUnary(ctx context.Context, svc, method string, req *rpc.Frame) (any, error) {
	be, err := r.acquire(ctx, svc)
	if err != nil {
		req.Free()
		return nil, err // the gateway's own answer, logged as such
	}
	defer be.done()
	in, _ := metadata.FromIncomingContext(ctx)
	octx := metadata.NewOutgoingContext(ctx, forwardable(in))
	var deleted string
	if method == contentDelete {
		deleted = deletedDigest(req)
	}
	resp, header, trailer, err := r.unaryCall(octx, be, svc, method, req)
	if err == nil && deleted != "" {
		// Before the client hears of it: its next read must not find
		// the blob granted still.
		if ns := in.Get("containerd-namespace"); len(ns) > 0 {
			r.ForgetBlob(ns[0], deleted)
		}
	}
	if len(header) > 0 {
		_ = grpc.SetHeader(ctx, header)
	}
	if len(trailer) > 0 {
		_ = grpc.SetTrailer(ctx, trailer)
	}
	return resp, rpc.Relayed(err)
}

// waitReady holds a call for a backend whose connection is down (its process
// restarting) for at most the router's wait.
func (r *Router) waitReady(ctx context.Context, be *backend, svc string) error {
	st := be.conn.GetState()
	if st == connectivity.Ready || st == connectivity.Idle {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.wait)
	defer cancel()
	be.conn.Connect()
	for st = be.conn.GetState(); st != connectivity.Ready; st = be.conn.GetState() {
		if !be.conn.WaitForStateChange(ctx, st) {
			if ctx.Err() == context.DeadlineExceeded {
				return status.Errorf(codes.Unavailable, "service %s (%s) is not available after %s", be.name, svc, r.wait)
			}
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	return nil
}

// callKind is what a method streams, from the descriptors the gateway's
// binary registers (containerd's API packages); a method it does not know
// is proxied as a bidirectional stream, which carries any kind.
type callKind uint8

const (
	bidiStream callKind = iota
	unary
	serverStream
	clientStream
)

func (k callKind) desc() *grpc.StreamDesc {
	switch k {
	case serverStream:
		return &grpc.StreamDesc{ServerStreams: true}
	case clientStream:
		return &grpc.StreamDesc{ClientStreams: true}
	}
	return &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
}

var kinds sync.Map // method -> callKind

func kindOf(method string) callKind {
	if k, ok := kinds.Load(method); ok {
		return k.(callKind)
	}
	k := bidiStream
	name := strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
		if md, ok := d.(protoreflect.MethodDescriptor); ok {
			switch {
			case !md.IsStreamingClient() && !md.IsStreamingServer():
				k = unary
			case md.IsStreamingServer() && !md.IsStreamingClient():
				k = serverStream
			case md.IsStreamingClient() && !md.IsStreamingServer():
				k = clientStream
			}
		}
	}
	kinds.Store(method, k)
	return k
}

func (r *Router) handle(srv any, ss grpc.ServerStream) error {
	err := r.route(srv, ss)
	var own refusal
	if errors.As(err, &own) {
		return own.error
	}
	return rpc.Relayed(err)
}

// refusal is the gateway's own answer to a call it routes nowhere (an
// unknown service, a restarting one past the wait), which the gateway logs,
// unlike the answers of the services it relays.
type refusal struct{ error }

func (r *Router) route(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "no method in stream")
	}
	if method == contentread.Method {
		if done, err := r.readFromFile(ss); done {
			return err
		}
	}
	svc := serviceOf(method)
	be, target, err := r.acquireMethod(ss.Context(), svc, method)
	if err != nil {
		return refusal{err}
	}
	defer be.done()

	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	in, _ := metadata.FromIncomingContext(ctx)
	octx := metadata.NewOutgoingContext(ctx, forwardable(in))

	kind := kindOf(method)
	if kind == unary {
		return r.forwardUnary(octx, ss, be, svc, target)
	}
	if kind == serverStream && rpc.ReadOnly(method) {
		return r.forwardReading(octx, ss, be, svc, method, target)
	}

	cs, err := r.openStream(octx, cancel, be, svc, target, kind.desc())
	if err != nil {
		return err
	}

	fromClient := make(chan error, 1)
	go func() { fromClient <- forwardClient(ss, cs) }()
	fromBackend := make(chan error, 1)
	go func() { fromBackend <- forwardBackend(cs, ss) }()

	for {
		select {
		case err := <-fromClient:
			if err != nil {
				// The client went away or sent garbage: end the backend call.
				cancel()
				return status.Convert(err).Err()
			}
			fromClient = nil // half-closed; wait for the backend to finish
		case err := <-fromBackend:
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			if fromClient != nil && status.Code(err) == codes.Unavailable {
				// The backend went away (a restart) between two of the
				// client's messages. containerd's clients send their next
				// message before they read (a content writer's commit
				// after its last write): ended now, the stream would fail
				// that send with a bare EOF, which they report as Unknown.
				// Taking that message first lets them read Unavailable.
				select {
				case <-fromClient:
				case <-time.After(brokenStreamGrace):
				}
			}
			return err
		}
	}
}

// openStream opens a stream to a backend, waiting for a restarting one
// but only so long: past the router's wait, cancel (which ends ctx, the
// call) gives up and the answer is Unavailable.
func (r *Router) openStream(ctx context.Context, cancel context.CancelFunc, be *backend, svc, method string, desc *grpc.StreamDesc) (grpc.ClientStream, error) {
	var expired atomic.Bool
	timer := time.AfterFunc(r.wait, func() { expired.Store(true); cancel() })
	cs, err := be.conn.NewStream(ctx, desc, method, grpc.ForceCodecV2(rpc.FrameCodec{}), grpc.WaitForReady(true))
	if !timer.Stop() || expired.Load() {
		return nil, status.Errorf(codes.Unavailable, "service %s (%s) is not available after %s", be.name, svc, r.wait)
	}
	return cs, err
}

// forwardReading relays a server stream that only reads (a List, a content
// Read). When the backend goes away under it (a restart), the call is made
// again: from the start if the client has been sent nothing yet, and for a
// content Read from the first byte the client has not been sent.
//
// method is the client's; target, what the backend serves it under.
func (r *Router) forwardReading(ctx context.Context, ss grpc.ServerStream, be *backend, svc, method, target string) error {
	req := &rpc.Frame{}
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	first := append([]byte(nil), req.Bytes()...)
	req.Free()
	return r.forwardReadingRequest(ctx, ss, be, svc, method, target, first)
}

// forwardReadingRequest is forwardReading of a request already received.
func (r *Router) forwardReadingRequest(ctx context.Context, ss grpc.ServerStream, be *backend, svc, method, target string, first []byte) error {
	var resume *contentread.Resume
	if method == contentread.Method {
		var err error
		if resume, err = contentread.Parse(first); err != nil {
			return err
		}
	}
	var relayed, headerSent bool
	next := first
	for attempt := 1; ; attempt++ {
		err := r.relayReading(ctx, ss, be, svc, target, next, resume, &relayed, &headerSent)
		if err == nil || attempt == maxReadingAttempts || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		switch {
		case resume != nil:
			rest, more := resume.Rest()
			if !more {
				return nil
			}
			if next, err = proto.Marshal(rest); err != nil {
				return status.Errorf(codes.Internal, "resume read: %v", err)
			}
		case relayed:
			return err
		}
		r.logger.Debug("backend went away under a reading stream, calling again", "service", be.name, "method", method, "error", err)
	}
}

// maxReadingAttempts bounds how many restarts of its backend one reading
// stream rides out.
const maxReadingAttempts = 3

func (r *Router) relayReading(ctx context.Context, ss grpc.ServerStream, be *backend, svc, method string, req []byte, resume *contentread.Resume, relayed, headerSent *bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := r.openStream(ctx, cancel, be, svc, method, serverStream.desc())
	if err != nil {
		return err
	}
	if err := cs.SendMsg(rpc.NewFrame(req)); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	if md, err := cs.Header(); err == nil && len(md) > 0 && !*headerSent {
		if err := ss.SendHeader(md); err != nil {
			return err
		}
		*headerSent = true
	}
	for {
		f := &rpc.Frame{}
		if err := cs.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				ss.SetTrailer(cs.Trailer())
				return nil
			}
			return err
		}
		if resume != nil {
			if err := resume.Relayed(f.Head(contentread.HeadSize), f.Len()); err != nil {
				f.Free()
				return status.Errorf(codes.Internal, "relay read: %v", err)
			}
		}
		if err := ss.SendMsg(f); err != nil {
			f.Free()
			return err
		}
		*relayed = true
	}
}

// brokenStreamGrace is how long a stream whose backend went away waits for
// the client's next message before it ends.
const brokenStreamGrace = 250 * time.Millisecond

// forwardClient copies client messages to the backend until the client
// half-closes (nil) or fails.
func forwardClient(ss grpc.ServerStream, cs grpc.ClientStream) error {
	for {
		f := &rpc.Frame{}
		if err := ss.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				return cs.CloseSend()
			}
			return err
		}
		if err := cs.SendMsg(f); err != nil {
			f.Free()
			if errors.Is(err, io.EOF) {
				// The backend finished the call early; its status comes
				// through the other direction.
				return nil
			}
			return err
		}
	}
}

// forwardBackend copies the backend's header and messages to the client and
// returns io.EOF when the backend finished cleanly, or its status.
func forwardBackend(cs grpc.ClientStream, ss grpc.ServerStream) error {
	md, err := cs.Header()
	if err == nil && len(md) > 0 {
		if err := ss.SendHeader(md); err != nil {
			return err
		}
	}
	for {
		f := &rpc.Frame{}
		if err := cs.RecvMsg(f); err != nil {
			return err
		}
		if err := ss.SendMsg(f); err != nil {
			f.Free()
			return err
		}
	}
}

func serviceOf(method string) string {
	method = strings.TrimPrefix(method, "/")
	if i := strings.LastIndex(method, "/"); i >= 0 {
		return method[:i]
	}
	return method
}

// forwardable drops the headers gRPC manages per hop and the trace context,
// which the gateway's own instrumentation re-injects with its span as parent.
func forwardable(in metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range in {
		switch {
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"),
			k == "content-type", k == "user-agent", k == "te",
			k == "traceparent", k == "tracestate", k == "baggage":
			continue
		}
		out[k] = v
	}
	return out
}
