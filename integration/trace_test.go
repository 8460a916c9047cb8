package integration

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	containerd "github.com/containerd/containerd/v2/client"
)

// otlpReceiver is an OTLP/gRPC trace collector in the test process.
type otlpReceiver struct {
	collectorpb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	service string
	name    string
	traceID []byte
	spanID  []byte
	parent  []byte
}

func (r *otlpReceiver) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		svc := ""
		for _, a := range rs.Resource.GetAttributes() {
			if a.Key == "service.name" {
				svc = a.Value.GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans = append(r.spans, receivedSpan{svc, s.Name, s.TraceId, s.SpanId, s.ParentSpanId})
			}
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) trace(id []byte) []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []receivedSpan
	for _, s := range r.spans {
		if bytes.Equal(s.traceID, id) {
			out = append(out, s)
		}
	}
	return out
}

func TestOneClientCallIsOneTraceAcrossProcesses(t *testing.T) {
	requireRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv := &otlpReceiver{}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, recv)
	go srv.Serve(l)
	defer srv.Stop()

	d := newDaemon(t, withEnv(
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+l.Addr().String(),
		"OTEL_EXPORTER_OTLP_INSECURE=true",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	)).start()

	// The test's own span is the root, so the trace id is known up front.
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	prop := propagation.TraceContext{}
	client, err := containerd.New(d.address, containerd.WithDialOpts([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop))),
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	ctx, span := tp.Tracer("integration").Start(context.Background(), "content write")
	traceID := span.SpanContext().TraceID()
	ctx = namespaces.WithNamespace(ctx, "tracing")
	blob := []byte("one trace per client call")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := content.WriteBlob(ctx, client.ContentStore(), "trace-ref", bytes.NewReader(blob), desc); err != nil {
		t.Fatalf("content write: %v", err)
	}
	span.End()

	want := map[string]bool{"flotilla-gateway": false, "flotilla-metadata": false, "flotilla-content": false}
	var spans []receivedSpan
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		spans = recv.trace(traceID[:])
		for _, s := range spans {
			if _, ok := want[s.service]; ok {
				want[s.service] = true
			}
		}
		if want["flotilla-gateway"] && want["flotilla-metadata"] && want["flotilla-content"] {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for svc, seen := range want {
		if !seen {
			t.Errorf("no span from %s in trace %s; spans: %+v", svc, traceID, spans)
		}
	}
	// Every span's parent is a span of the same trace: the test's client
	// span or one exported by a Flotilla process.
	known := map[trace.SpanID]bool{}
	for _, s := range spans {
		known[trace.SpanID(s.spanID)] = true
	}
	for _, s := range spans {
		if len(s.parent) == 0 {
			t.Errorf("span %s of %s has no parent: the trace was not propagated", s.name, s.service)
			continue
		}
		// Only the gateway's server span hangs off the test's own span.
		if s.service != "flotilla-gateway" && !known[trace.SpanID(s.parent)] {
			t.Errorf("span %s of %s has a parent no Flotilla process exported", s.name, s.service)
		}
	}
}
