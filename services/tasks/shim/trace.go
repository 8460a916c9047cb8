package shim

import (
	"context"

	"go.opentelemetry.io/otel"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracer names the steps of a task's creation and the calls to shims, so
// that a trace shows where Tasks.Create spends its time (bundle, shim
// start, connection, the shim's own Create) instead of one opaque span.
var tracer = otel.Tracer("github.com/flotilla-project/flotilla/services/tasks/shim")

// step starts an internal span; end it with its error (or nil).
func step(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, func(error)) {
	ctx, span := tracer.Start(ctx, name, opts...)
	return ctx, func(err error) {
		if err != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
		span.End()
	}
}
