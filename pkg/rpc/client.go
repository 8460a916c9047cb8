package rpc

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla-project/flotilla/pkg/metrics"
)

// DefaultCallTimeout bounds every inter-process unary call (a shorter
// deadline of the caller's still applies), so that a hung peer can never
// wedge its caller.
const DefaultCallTimeout = 30 * time.Second

// WindowSize is the HTTP/2 flow-control window of every Flotilla connection,
// stream and connection alike (see NewServer).
const WindowSize = 8 << 20

// reconnect is tuned for peers on the same machine that restart in well under
// a second: gRPC's default backoff (up to two minutes) would turn a 100ms
// restart into a long outage.
var reconnect = backoff.Config{
	BaseDelay:  20 * time.Millisecond,
	Multiplier: 1.6,
	Jitter:     0.2,
	MaxDelay:   500 * time.Millisecond,
}

// Dial builds a client for the Unix socket at path. The connection is lazy and
// re-established by itself when the peer restarts; calls wait for it (up to
// their deadline) instead of failing at once.
func Dial(path string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return DialTimeout(path, DefaultCallTimeout, opts...)
}

// DialTimeout is Dial with timeout as the longest a unary call may take;
// zero sets no limit (the gateway relays its clients' own deadlines).
func DialTimeout(path string, timeout time.Duration, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		grpc.WithChainUnaryInterceptor(metrics.Client.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(metrics.Client.StreamClientInterceptor()),
		grpc.WithInitialWindowSize(WindowSize),
		grpc.WithInitialConnWindowSize(WindowSize),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnect, MinConnectTimeout: time.Second}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMsgSize),
			grpc.MaxCallSendMsgSize(MaxMsgSize),
			grpc.WaitForReady(true),
		),
	}
	if timeout > 0 {
		base = append(base, grpc.WithChainUnaryInterceptor(unaryDeadline(timeout)))
	}
	conn, err := grpc.NewClient("unix://"+abs, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return conn, nil
}

func unaryDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		// A call between processes never waits longer than d, whatever
		// the client upstream allowed: a hung service must fail its
		// callers within the configured time, not the client's.
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > d {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
