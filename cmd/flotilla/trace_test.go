package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/pkg/tracing"
)

// writeSpans writes spans to span files in <state>/traces, one per service.
func writeSpans(t *testing.T, state string, spans ...tracing.FileSpan) {
	t.Helper()
	dir := filepath.Join(state, "traces")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, s := range spans {
		f, err := os.OpenFile(tracing.FilePath(dir, strings.TrimPrefix(s.Service, "flotilla-")), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.NewEncoder(f).Encode(s); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

func span(trace, id, parent, service, name, kind string, t0 time.Time, from, to time.Duration) tracing.FileSpan {
	return tracing.FileSpan{TraceID: trace, SpanID: id, ParentID: parent, Service: "flotilla-" + service,
		Name: name, Kind: kind, Start: t0.Add(from), End: t0.Add(to)}
}

func TestTraceLastDrawsTheLatestClientCallIndentedByParent(t *testing.T) {
	state := t.TempDir()
	t0 := time.Now()
	ms := time.Millisecond
	writeSpans(t, state,
		// An older client call.
		span("aaaa", "a1", "", "gateway", "containerd.services.namespaces.v1.Namespaces/List", "server", t0, 0, ms),
		// The latest one: gateway -> metadata -> content.
		span("bbbb", "b1", "", "gateway", "containerd.services.content.v1.Content/Write", "server", t0, 10*ms, 20*ms),
		span("bbbb", "b2", "b1", "metadata", "containerd.services.content.v1.Content/Write", "server", t0, 11*ms, 19*ms),
		span("bbbb", "b3", "b2", "content", "containerd.services.content.v1.Content/Write", "server", t0, 12*ms, 18*ms),
		// Later still, but a service's own work, not a client call.
		span("cccc", "c1", "", "metadata", "gc", "internal", t0, 30*ms, 31*ms),
	)
	var out bytes.Buffer
	if err := run([]string{"trace", "--state", state, "last"}, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if !strings.HasPrefix(got, "trace bbbb ") {
		t.Fatalf("trace last drew another trace than the latest client call:\n%s", got)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")[3:]
	if len(lines) != 3 {
		t.Fatalf("want one line per span (3):\n%s", got)
	}
	for i, svc := range []string{"gateway", "metadata", "content"} {
		f := strings.Fields(lines[i])
		if f[0] != svc {
			t.Errorf("line %d is of %s, want %s:\n%s", i, f[0], svc, got)
		}
		indent := strings.Index(lines[i], "content.v1") - strings.Index(lines[0], "content.v1")
		if indent != 2*i {
			t.Errorf("line %d indented by %d, want %d:\n%s", i, indent, 2*i, got)
		}
	}
	// The gateway's span covers the whole trace; content's starts later.
	if !strings.Contains(lines[0], "|"+strings.Repeat("█", barWidth)+"|") {
		t.Errorf("the root's bar does not span the timeline: %q", lines[0])
	}
	if strings.Contains(lines[2], "|█") {
		t.Errorf("content's bar starts with the trace: %q", lines[2])
	}

	out.Reset()
	if err := run([]string{"trace", "--state", state, "aaa"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "trace aaaa ") || !strings.Contains(out.String(), "Namespaces/List") {
		t.Errorf("trace by id prefix drew:\n%s", out.String())
	}
	if err := run([]string{"trace", "--state", state, "dddd"}, &out); err == nil {
		t.Error("an unknown trace id is no error")
	}
}

func TestTraceWithoutSpanFilesSaysWhatToConfigure(t *testing.T) {
	err := run([]string{"trace", "--state", t.TempDir(), "last"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "[trace] file = true") {
		t.Fatalf("error %v does not say how to get span files", err)
	}
}
