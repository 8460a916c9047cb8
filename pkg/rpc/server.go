// Package rpc holds the one gRPC server constructor and the one client
// constructor every Flotilla process uses, so that message limits, tracing,
// panic recovery and error mapping cannot drift apart between processes.
package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/containerd/errdefs/pkg/errgrpc"
	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla-project/flotilla/pkg/idle"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/metrics"
)

// MaxMsgSize is containerd's limit for sent and received messages (16 MiB).
// Every server and client in Flotilla uses it, so a message that passes the
// gateway can never be refused by a backend, and vice versa.
const MaxMsgSize = 16 << 20

// Server is a gRPC server with its health service.
type Server struct {
	*grpc.Server
	Health *health.Server
}

// NewServer builds a gRPC server with Flotilla's interceptor chain:
// Prometheus metrics, panic recovery, error mapping from errdefs sentinels to
// gRPC codes, OpenTelemetry tracing, and containerd's message limits. Extra
// options are appended.
func NewServer(logger *slog.Logger, opts ...grpc.ServerOption) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	recover := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		logger.Error("panic in RPC handler", "panic", p, "stack", string(debug.Stack()))
		return status.Errorf(codes.Internal, "internal error: %v", p)
	})
	base := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMsgSize),
		grpc.MaxSendMsgSize(MaxMsgSize),
		// Peers are local: a fixed, large flow-control window lets a 1 MiB
		// chunk cross in one go and turns off gRPC's bandwidth probing,
		// whose pings cost every small call extra wakeups on both sides.
		grpc.InitialWindowSize(WindowSize),
		grpc.InitialConnWindowSize(WindowSize),
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		// Frames let a handler relay a backend's messages without decoding
		// them; every other message is plain protobuf.
		grpc.ForceServerCodecV2(FrameCodec{}),
		// Metrics come first so that they count the code the client
		// gets, after recovery and error mapping.
		grpc.ChainUnaryInterceptor(idle.Process.UnaryServerInterceptor(), metrics.Server.UnaryServerInterceptor(), recovery.UnaryServerInterceptor(recover), unaryLogger(logger), unaryErrors),
		grpc.ChainStreamInterceptor(idle.Process.StreamServerInterceptor(), metrics.Server.StreamServerInterceptor(), recovery.StreamServerInterceptor(recover), streamLogger(logger), streamErrors),
	}
	s := grpc.NewServer(append(base, opts...)...)
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	return &Server{Server: s, Health: h}
}

// Errors maps a handler's error to a gRPC status once, at the API boundary:
// errdefs sentinels become their codes, context errors become Canceled or
// DeadlineExceeded, and an error that already is a status passes unchanged.
func Errors(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return errgrpc.ToGRPC(err)
}

func unaryErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	err = Errors(err)
	logRefused(ctx, info.FullMethod, err)
	return resp, err
}

func streamErrors(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := Errors(h(srv, ss))
	logRefused(ss.Context(), info.FullMethod, err)
	return err
}

// logRefused logs a call the service refused for what it asked (bad input,
// a state that does not allow it, a method it does not serve) or failed at
// (an internal error), so that a failure a client reports has a line where
// it happened. What a client asks about and does not find, or creates twice,
// is an answer, not a failure, and is not logged.
func logRefused(ctx context.Context, method string, err error) {
	var relayed relayedError
	if err == nil || errors.As(err, &relayed) {
		return
	}
	switch c := status.Code(err); c {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.Unimplemented, codes.OutOfRange:
		logging.G(ctx).Info("call refused", "method", method, "code", c.String(), "error", status.Convert(err).Message())
	case codes.Internal, codes.Unknown, codes.DataLoss:
		logging.G(ctx).Error("call failed", "method", method, "code", c.String(), "error", status.Convert(err).Message())
	}
}

// Relayed marks an error a relay (the gateway) passes on from the service
// that answered: that service logged it, if it was a refusal.
func Relayed(err error) error {
	if err == nil {
		return nil
	}
	return relayedError{err}
}

type relayedError struct{ error }

func (e relayedError) GRPCStatus() *status.Status { return status.Convert(e.error) }
func (e relayedError) Unwrap() error              { return e.error }

// unaryLogger gives each call's context the process's logger, with the
// call's namespace when it names one.
func unaryLogger(logger *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(callLogger(ctx, logger), req)
	}
}

func streamLogger(logger *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		w := middleware.WrapServerStream(ss)
		w.WrappedContext = callLogger(ss.Context(), logger)
		return h(srv, w)
	}
}

func callLogger(ctx context.Context, logger *slog.Logger) context.Context {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if ns := md.Get(namespaceHeader); len(ns) > 0 {
			logger = logger.With("namespace", ns[0])
		}
	}
	return logging.WithLogger(ctx, logger)
}

// namespaceHeader is containerd's namespace header.
const namespaceHeader = "containerd-namespace"

// Listen opens a Unix socket at path for the current user only (0600),
// replacing a stale socket left by a previous run of the same service.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The umask makes the socket 0600 from the moment it exists; a chmod
	// afterwards would leave a window where it is wider.
	old := umask(0o177)
	l, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}
