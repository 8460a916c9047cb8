package metadata

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refusedRetry bounds how long a call to a remote snapshotter whose socket
// refuses connections is tried again before it fails: long enough for an
// operator's restart of it, short against the call timeout (30 s) a caller
// would otherwise wait.
const refusedRetry = time.Second

// failFast is the connection to a remote snapshotter: Flotilla does not run
// it, so a socket that refuses connections (ECONNREFUSED, or no socket at
// all) means it is down, not restarting under flotillad. A call is made
// without gRPC's wait for a connection, tried again for at most
// refusedRetry while the socket refuses, and then fails Unavailable naming
// the snapshotter. A snapshotter that accepts the connection and then does
// not answer (a stopped process) still fails by the call's deadline.
type failFast struct {
	name string
	conn grpc.ClientConnInterface
}

func newFailFast(name string, conn grpc.ClientConnInterface) *failFast {
	return &failFast{name: name, conn: conn}
}

var _ grpc.ClientConnInterface = (*failFast)(nil)

func (f *failFast) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	opts = append(opts, grpc.WaitForReady(false))
	return f.retry(ctx, func() error { return f.conn.Invoke(ctx, method, args, reply, opts...) })
}

func (f *failFast) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	opts = append(opts, grpc.WaitForReady(false))
	var cs grpc.ClientStream
	err := f.retry(ctx, func() error {
		var err error
		cs, err = f.conn.NewStream(ctx, desc, method, opts...)
		return err
	})
	return cs, err
}

// retry makes call until it is not refused a connection, for at most
// refusedRetry. Nothing reached the snapshotter when its connection was
// refused, so any call may be made again.
func (f *failFast) retry(ctx context.Context, call func() error) error {
	deadline := time.Now().Add(refusedRetry)
	backoff := 20 * time.Millisecond
	for {
		err := call()
		if err == nil || !refused(err) {
			return err
		}
		wait := min(backoff, time.Until(deadline))
		if wait <= 0 {
			return status.Errorf(codes.Unavailable, "remote snapshotter %s does not accept connections: %v", f.name, status.Convert(err).Message())
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(wait):
		}
		backoff *= 2
	}
}

// refused says whether err is a connection the snapshotter's socket
// refused, or a socket that is not there: gRPC reports a failed dial of a
// call made without waiting as Unavailable with the dial's error in its
// message.
func refused(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	msg := st.Message()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such file or directory")
}
