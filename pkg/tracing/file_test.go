package tracing

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

func TestSpanFileHoldsParentsServicesAndErrors(t *testing.T) {
	dir := t.TempDir()
	exp, err := newFileExporter(dir, "metadata")
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(ServiceName("metadata")))))
	ctx, parent := tp.Tracer("test").Start(context.Background(), "parent")
	_, child := tp.Tracer("test").Start(ctx, "child")
	child.SetStatus(codes.Error, "boom")
	child.End()
	parent.End()
	if err := tp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	spans, err := ReadFileSpans(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 2 {
		t.Fatalf("read %d spans, want 2: %+v", len(spans), spans)
	}
	c, p := spans[0], spans[1]
	if c.Name != "child" || p.Name != "parent" {
		t.Fatalf("spans out of order or misnamed: %+v", spans)
	}
	if c.TraceID != p.TraceID || c.ParentID != p.SpanID || p.ParentID != "" {
		t.Errorf("child is not linked to its parent: %+v", spans)
	}
	if c.Service != "flotilla-metadata" || c.Error != "boom" || c.End.Before(c.Start) {
		t.Errorf("child span lost its service, error or times: %+v", c)
	}
}

func TestSpanFileStartsOverPastItsLimitKeepingThePreviousOne(t *testing.T) {
	dir := t.TempDir()
	exp, err := newFileExporter(dir, "content")
	if err != nil {
		t.Fatal(err)
	}
	exp.size = MaxFileSize + 1 // as if full
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	_, s := tp.Tracer("test").Start(context.Background(), "after rotation")
	s.End()
	_ = tp.Shutdown(context.Background())
	if _, err := os.Stat(FilePath(dir, "content") + ".1"); err != nil {
		t.Errorf("full file was not kept as .1: %v", err)
	}
	spans, err := ReadFileSpans(dir)
	if err != nil || len(spans) != 1 {
		t.Fatalf("after rotation read %d spans (%v), want 1", len(spans), err)
	}
}

func TestReadingSpansSkipsATornLastLine(t *testing.T) {
	dir := t.TempDir()
	line := `{"trace_id":"aa","span_id":"01","service":"flotilla-gateway","name":"x","kind":"server"}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "gateway"+FileExt), []byte(line+`{"trace_id":"a`), 0o600); err != nil {
		t.Fatal(err)
	}
	spans, err := ReadFileSpans(dir)
	if err != nil || len(spans) != 1 {
		t.Fatalf("read %d spans (%v), want the one whole line", len(spans), err)
	}
}

func TestReadingSpansWithoutFilesSaysHowToGetThem(t *testing.T) {
	if _, err := ReadFileSpans(t.TempDir()); err == nil {
		t.Fatal("no error for a directory without span files")
	}
}
