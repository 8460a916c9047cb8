package rpc

import (
	"context"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"

	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/pkg/idle"
	"github.com/flotilla-project/flotilla/pkg/metrics"
)

// The gateway's hop to a service is the one every routed call pays twice
// over (request and response) on top of the client's own. gRPC over HTTP/2
// costs about twice what ttrpc does for a small unary call, so each service
// also serves its unary methods over ttrpc on a second socket, and the
// gateway uses it when it can. The API is the same: ttrpc carries the same
// protobuf messages, the same metadata, deadlines and status codes.

// Registrar registers a service on the gRPC server and its unary methods on
// the ttrpc server, so a service registers once (it is a
// grpc.ServiceRegistrar, what every generated Register function takes).
type Registrar struct {
	GRPC  *grpc.Server
	TTRPC *ttrpc.Server
	// interceptor is the unary chain gRPC calls go through.
	interceptor grpc.UnaryServerInterceptor
}

// NewRegistrar pairs a gRPC server from NewServer with a ttrpc server from
// NewTTRPCServer.
func NewRegistrar(logger *slog.Logger, g *grpc.Server, t *ttrpc.Server) *Registrar {
	return &Registrar{GRPC: g, TTRPC: t, interceptor: unaryChain(logger)}
}

// RegisterService implements grpc.ServiceRegistrar.
func (r *Registrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.GRPC.RegisterService(desc, impl)
	if r.TTRPC == nil || len(desc.Methods) == 0 {
		return
	}
	methods := make(map[string]ttrpc.Method, len(desc.Methods))
	for _, m := range desc.Methods {
		h := m.Handler
		methods[m.MethodName] = func(ctx context.Context, unmarshal func(any) error) (any, error) {
			resp, err := h(impl, ctx, unmarshal, r.interceptor)
			// A reply ttrpc cannot carry is refused here, before ttrpc
			// would drop the whole connection over it; the caller asks
			// again over gRPC.
			if m, ok := resp.(proto.Message); ok && err == nil {
				if size := proto.Size(m); size > MaxTTRPCReply {
					return nil, status.Errorf(codes.ResourceExhausted, "reply of %d bytes is larger than ttrpc carries", size)
				}
			}
			return resp, err
		}
	}
	r.TTRPC.RegisterService(desc.ServiceName, &ttrpc.ServiceDesc{Methods: methods})
}

// unaryChain is the metrics, recovery and error mapping of NewServer's
// chain. A call that came over ttrpc is counted with the gRPC ones
// (grpc_type "unary"): to whoever reads the metrics it is the same RPC.
func unaryChain(logger *slog.Logger) grpc.UnaryServerInterceptor {
	track := idle.Process.UnaryServerInterceptor()
	count := metrics.Server.UnaryServerInterceptor()
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return track(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return count(ctx, req, info, func(ctx context.Context, req any) (resp any, err error) {
				defer func() {
					if p := recover(); p != nil {
						logger.Error("panic in RPC handler", "panic", p, "stack", string(debug.Stack()))
						err = status.Errorf(codes.Internal, "internal error: %v", p)
					}
				}()
				return unaryErrors(callLogger(ctx, logger), req, info, h)
			})
		})
	}
}

// NewTTRPCServer builds the ttrpc server of a service: incoming ttrpc
// metadata becomes gRPC incoming metadata (handlers read the namespace and
// lease headers from there), and the trace context it carries parents a
// server span, as otelgrpc does for gRPC calls.
func NewTTRPCServer() (*ttrpc.Server, error) {
	tracer := otel.Tracer("github.com/flotilla-project/flotilla/pkg/rpc")
	return ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(
		func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
			if md, ok := ttrpc.GetMetadata(ctx); ok {
				gmd := metadata.MD(md)
				ctx = metadata.NewIncomingContext(ctx, gmd)
				ctx = otel.GetTextMapPropagator().Extract(ctx, mdCarrier(gmd))
			}
			name := strings.TrimPrefix(info.FullMethod, "/")
			ctx, span := tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attribute.String("rpc.system", "ttrpc"), attribute.String("rpc.method", name)))
			defer span.End()
			resp, err := m(ctx, unmarshal)
			if err != nil {
				st, _ := status.FromError(err)
				span.SetStatus(otelcodes.Error, st.Message())
				span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(st.Code())))
			}
			return resp, err
		}))
}

// ServeTTRPC serves s on the Unix socket at path (0600, as Listen).
func ServeTTRPC(ctx context.Context, s *ttrpc.Server, path string) (net.Listener, error) {
	l, err := Listen(path)
	if err != nil {
		return nil, err
	}
	go func() { _ = s.Serve(ctx, l) }()
	return l, nil
}

// mdCarrier lets OpenTelemetry read and write trace context in metadata.
type mdCarrier metadata.MD

func (c mdCarrier) Get(k string) string {
	if v := metadata.MD(c).Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c mdCarrier) Set(k, v string) { metadata.MD(c).Set(k, v) }

func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// InjectTrace writes the trace context of ctx into md.
func InjectTrace(ctx context.Context, md metadata.MD) {
	otel.GetTextMapPropagator().Inject(ctx, mdCarrier(md))
}
