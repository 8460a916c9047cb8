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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// TTRPCCarries says whether a request of size bytes to the method (its
// full name) is small enough to go over ttrpc; a larger one goes over gRPC,
// which takes up to MaxMsgSize.
func TTRPCCarries(method string, size int) bool {
	// ttrpc carries no cancellation: a call that runs for minutes (a pull
	// through Transfer) takes gRPC, so that a client giving up stops it.
	if strings.HasSuffix(method, "/Transfer") {
		return false
	}
	// A reply too large for ttrpc is refused after the call was made, and
	// the call is made again over gRPC: only a repeatable one may take
	// that chance. Any other's reply is mostly its request echoed, which
	// MaxTTRPCChange leaves room for.
	if Repeatable(method) {
		return size <= MaxTTRPCRequest
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

// TTRPCFailed says what a failed ttrpc call to a method (its full name)
// means: again is set when it should be made over gRPC instead — ttrpc
// refused to send it, its reply was too large for ttrpc, or the connection
// broke under a call that may be made again; otherwise err is what the
// caller gets (who names the callee in a broken connection's error).
func TTRPCFailed(method, who string, err error) (again bool, _ error) {
	if TTRPCRefused(err) {
		return true, nil
	}
	if st, ok := status.FromError(err); ok {
		if st.Code() == codes.ResourceExhausted && Repeatable(method) {
			return true, nil
		}
		return false, err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false, status.FromContextError(err).Err()
	}
	// Whether the service saw a call that changes something is unknown,
	// so it is not made again.
	if Repeatable(method) {
		return true, nil
	}
	return false, status.Error(codes.Unavailable, fmt.Sprintf("%s: %v", who, err))
}
