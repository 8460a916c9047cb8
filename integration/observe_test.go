package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freeAddress is a localhost TCP address nothing listens on (yet).
func freeAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	return string(b)
}

// series reports whether the exposition text has a sample of metric whose
// labels include every one of labels (each `name="value"`).
func series(text, metric string, labels ...string) bool {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func TestObservedCallsShowInMetricsAndTraceWaterfall(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	addr := freeAddress(t)
	d := newDaemon(t, withConfig(fmt.Sprintf("[metrics]\naddress = %q\n\n[trace]\nfile = true\n", addr))).start()

	d.mustCtr("namespaces", "ls")
	d.ctrStdinMust(strings.NewReader("observed bytes"), "-n", "observe", "content", "ingest", "observed")

	text := scrape(t, addr)
	for _, c := range []struct {
		why    string
		metric string
		labels []string
	}{
		{"metadata's RPCs", "grpc_server_handled_total", []string{`service="metadata"`}},
		{"metadata served Namespaces.List", "grpc_server_handled_total", []string{`service="metadata"`, `grpc_method="List"`, `grpc_service="containerd.services.namespaces.v1.Namespaces"`}},
		{"content's RPCs (the namespaced writes the gateway routes there)", "grpc_server_handled_total", []string{`service="content"`, `grpc_service="flotilla.content.v1.Namespaced"`, `grpc_method="Write"`}},
		{"metadata's control half of the writes", "grpc_server_handled_total", []string{`service="metadata"`, `grpc_service="flotilla.ingest.v1.Ingests"`}},
		{"the gateway's RPCs", "grpc_server_handled_total", []string{`service="gateway"`, `grpc_service="containerd.services.namespaces.v1.Namespaces"`}},
		{"latency histograms", "grpc_server_handling_seconds_bucket", []string{`service="metadata"`}},
		{"content's calls to metadata", "grpc_client_handled_total", []string{`service="content"`}},
		{"restarts per service", "flotilla_service_restarts_total", []string{`service="metadata"`}},
		{"memory per service", "flotilla_service_memory_rss_bytes", []string{`service="content"`}},
		{"GC runs", "flotilla_gc_runs_total", []string{`service="metadata"`}},
		{"tasks held", "flotilla_tasks", []string{`service="tasks"`}},
		{"a service's Go runtime", "go_goroutines", []string{`service="content"`}},
	} {
		if !series(text, c.metric, c.labels...) {
			t.Errorf("/metrics lacks %s: no %s with %s", c.why, c.metric, strings.Join(c.labels, ","))
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}

	// The last client call was the ingest: one Write stream through the
	// gateway to content, which asks metadata to open and record it. Spans
	// reach their files within a batch delay.
	var out string
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		b, err := exec.CommandContext(ctx, filepath.Join(binDir, "flotilla"), "trace", "last", "--state", d.state).CombinedOutput()
		cancel()
		out = string(b)
		if err == nil && strings.Contains(out, "gateway") && strings.Contains(out, "metadata") && strings.Contains(out, "content") &&
			strings.Contains(out, "content.v1.Content/Write") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flotilla trace last does not show the ingest across gateway, metadata and content (err %v):\n%s", err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("flotilla trace last:\n%s", out)
	services := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.Contains(l, "|") {
			services[f[0]] = true
			if !strings.Contains(l, "█") {
				t.Errorf("waterfall line has no bar: %q", l)
			}
		}
	}
	for _, s := range []string{"gateway", "metadata", "content"} {
		if !services[s] {
			t.Errorf("waterfall has no span of %s:\n%s", s, out)
		}
	}

	// The same trace by its id, and the listing.
	id := strings.Fields(strings.SplitN(out, "\n", 2)[0])[1]
	byID := d.flotilla("trace", "--state", d.state, id[:12])
	if !strings.HasPrefix(byID, "trace "+id) {
		t.Errorf("flotilla trace %s drew another trace:\n%s", id[:12], byID)
	}
	if ls := d.flotilla("trace", "ls", "--state", d.state); !strings.Contains(ls, id) {
		t.Errorf("flotilla trace ls does not list %s:\n%s", id, ls)
	}
}
