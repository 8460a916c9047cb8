package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/pkg/metrics"
)

// TTRPCConn is a lazily dialled ttrpc client of one service, dialled again
// after the service restarts.
type TTRPCConn struct {
	path string
	mu   sync.Mutex
	c    *ttrpc.Client
}

// NewTTRPCConn returns a connection to the ttrpc socket at path; nothing is
// dialled until the first call.
func NewTTRPCConn(path string) *TTRPCConn { return &TTRPCConn{path: path} }

// Path is the socket dialled.
func (f *TTRPCConn) Path() string { return f.path }

// Client returns the current client, dialling when there is none.
func (f *TTRPCConn) Client() (*ttrpc.Client, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.c != nil {
		return f.c, nil
	}
	conn, err := net.DialTimeout("unix", f.path, time.Second)
	if err != nil {
		return nil, err
	}
	var c *ttrpc.Client
	c = ttrpc.NewClient(conn, ttrpc.WithOnClose(func() {
		f.mu.Lock()
		if f.c == c {
			f.c = nil
		}
		f.mu.Unlock()
	}))
	f.c = c
	return c, nil
}

// Connected reports whether a client is dialled.
func (f *TTRPCConn) Connected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.c != nil
}

// Close drops the client.
func (f *TTRPCConn) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.c != nil {
		_ = f.c.Close()
		f.c = nil
	}
}

// ReadOnly says whether a method of containerd's APIs only reads, by its
// name, so that making it twice is harmless.
func ReadOnly(method string) bool {
	for _, p := range []string{"Get", "List", "Stat", "Info", "Usage", "Mounts", "Status", "Version", "Check", "Read"} {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}

// MaxTTRPCRequest and MaxTTRPCReply leave room within ttrpc's 4 MiB message
// for the envelope (service, method, metadata, status).
//
// MaxTTRPCChange bounds the request of a call that changes something. Such a
// call cannot be made again over gRPC when the service finds its reply too
// large for ttrpc, because the change is made by then; its reply is mostly
// its request echoed with a little added (timestamps, ids), so this margin
// keeps a committed change from being reported as refused.
const (
	MaxTTRPCRequest = 4<<20 - 64<<10
	MaxTTRPCReply   = 4<<20 - 64<<10
	MaxTTRPCChange  = MaxTTRPCReply - 64<<10
)

// TTRPCCarries says whether a request of size bytes to the method named
// (without its service) is small enough to go over ttrpc; a larger one goes
// over gRPC, which takes up to MaxMsgSize.
func TTRPCCarries(name string, size int) bool {
	// ttrpc carries no cancellation: a call that runs for minutes (a pull
	// through Transfer) takes gRPC, so that a client giving up stops it.
	if name == "Transfer" {
		return false
	}
	if ReadOnly(name) {
		return size <= MaxTTRPCRequest
	}
	// An update's reply is the whole updated object, however small the
	// request (a field mask): its size is not known before the change is
	// made, and a change cannot be asked for again, so updates take gRPC.
	if strings.HasPrefix(name, "Update") {
		return false
	}
	return size <= MaxTTRPCChange
}

// TTRPCRefused says whether err is ttrpc's client refusing to send a message
// over ttrpc's limit (a request within MaxTTRPCRequest can still exceed it
// with large metadata). Nothing reached the service, so the call can be
// made over gRPC whatever it does.
func TTRPCRefused(err error) bool {
	var over *ttrpc.OversizedMessageErr
	return errors.As(err, &over)
}

// HybridConn is a client connection to a Flotilla service that makes unary
// calls over the service's ttrpc socket (about half the cost of a gRPC call
// between processes) and streams over gRPC. Generated gRPC clients take it
// as they take a grpc.ClientConn. A call that ttrpc cannot carry — a
// request or reply over its 4 MiB (the service refuses such a reply, and a
// read is asked again), or any call while the ttrpc socket does not
// answer — goes over gRPC.
type HybridConn struct {
	grpc    *grpc.ClientConn
	fast    *TTRPCConn
	timeout time.Duration
}

// NewHybridConn pairs a gRPC connection (from DialTimeout with timeout) with
// the service's ttrpc socket.
func NewHybridConn(g *grpc.ClientConn, ttrpcPath string, timeout time.Duration) *HybridConn {
	return &HybridConn{grpc: g, fast: NewTTRPCConn(ttrpcPath), timeout: timeout}
}

var _ grpc.ClientConnInterface = (*HybridConn)(nil)

// Invoke makes a unary call, over ttrpc when it can.
func (h *HybridConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	name := method[strings.LastIndex(method, "/")+1:]
	svc := strings.TrimPrefix(method[:strings.LastIndex(method, "/")], "/")
	if m, ok := args.(proto.Message); ok && !TTRPCCarries(name, proto.Size(m)) {
		return h.grpc.Invoke(ctx, method, args, reply, opts...)
	}
	c, err := h.fast.Client()
	if err != nil {
		return h.grpc.Invoke(ctx, method, args, reply, opts...)
	}
	md := metadata.MD{}
	if out, ok := metadata.FromOutgoingContext(ctx); ok {
		md = out.Copy()
	}
	InjectTrace(ctx, md)
	cctx := ttrpc.WithMetadata(ctx, ttrpc.MD(md))
	if dl, ok := cctx.Deadline(); h.timeout > 0 && (!ok || time.Until(dl) > h.timeout) {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(cctx, h.timeout)
		defer cancel()
	}
	// Counted as the gRPC calls are, so metrics do not depend on the path.
	err = metrics.Client.UnaryClientInterceptor()(cctx, method, args, reply, nil,
		func(ctx context.Context, _ string, args, reply any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			return c.Call(ctx, svc, name, args, reply)
		})
	if err == nil {
		return nil
	}
	if again, err := TTRPCFailed(name, method, err); !again {
		return err
	}
	return h.grpc.Invoke(ctx, method, args, reply, opts...)
}

// TTRPCFailed says what a failed ttrpc call to a method (named without its
// service) means: again is set when it should be made over gRPC instead —
// ttrpc refused to send it, its reply was too large for ttrpc, or the
// connection broke under a call that only reads; otherwise err is what the
// caller gets (who names the callee in a broken connection's error).
func TTRPCFailed(name, who string, err error) (again bool, _ error) {
	if TTRPCRefused(err) {
		return true, nil
	}
	if st, ok := status.FromError(err); ok {
		if st.Code() == codes.ResourceExhausted && ReadOnly(name) {
			return true, nil
		}
		return false, err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false, status.FromContextError(err).Err()
	}
	// Whether the service saw a call that changes something is unknown,
	// so it is not made again.
	if ReadOnly(name) {
		return true, nil
	}
	return false, status.Error(codes.Unavailable, fmt.Sprintf("%s: %v", who, err))
}

// NewStream opens a stream over gRPC.
func (h *HybridConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return h.grpc.NewStream(ctx, desc, method, opts...)
}

// Close closes both connections.
func (h *HybridConn) Close() error {
	h.fast.Close()
	return h.grpc.Close()
}
