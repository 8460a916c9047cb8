// Package tracing sets up OpenTelemetry for one Flotilla process. Spans are
// exported with OTLP when the standard OTEL_EXPORTER_OTLP_* variables ask for
// it, and written to a span file in the state directory when flotillad's
// config asks for that (see DirEnv); otherwise no SDK is installed and
// instrumentation costs next to nothing, while trace context is still
// propagated across every hop.
package tracing

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// ServiceName is the OpenTelemetry service.name of a Flotilla process.
func ServiceName(service string) string { return "flotilla-" + service }

// Enabled reports whether the environment asks for OTLP export.
func Enabled() bool {
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup installs the propagator and, when enabled, the exporters of the
// named service: OTLP when the OTEL_EXPORTER_OTLP_* variables ask for it, a
// span file in $FLOTILLA_TRACE_DIR when that is set, or both. The returned
// function flushes and stops them.
func Setup(ctx context.Context, service string) (func(context.Context) error, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	dir := os.Getenv(DirEnv)
	if !Enabled() && dir == "" {
		return func(context.Context) error { return nil }, nil
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(ServiceName(service)),
		semconv.ProcessPID(os.Getpid()),
	))
	if err != nil {
		return nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if Enabled() {
		exp, err := otlpExporter(ctx)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	if dir != "" {
		exp, err := newFileExporter(dir, service)
		if err != nil {
			return nil, err
		}
		// A short delay: `flotilla trace last` right after a call should
		// find it, and the file costs one write per batch either way.
		opts = append(opts, sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(200*time.Millisecond)))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

func otlpExporter(ctx context.Context) (*otlptrace.Exporter, error) {
	var (
		exp *otlptrace.Exporter
		err error
	)
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch strings.ToLower(proto) {
	case "", "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("unsupported OTLP protocol %q", proto)
	}
	if err != nil {
		return nil, fmt.Errorf("create OTLP exporter: %w", err)
	}
	return exp, nil
}
