package metrics

import (
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDaemonMergesServicesWithTheirNameAndItsOwnAsGateway(t *testing.T) {
	// A service's registry, served as a service serves it: HTTP on a
	// Unix socket. It is this process's Registry too, which is fine: the
	// endpoint must show it twice, once per label.
	sock := filepath.Join(t.TempDir(), SocketName)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go Serve(l)
	CounterVec("test_things_total", "Things counted by a test.", "kind").WithLabelValues("a").Add(3)

	d := NewDaemon(slog.New(slog.NewTextHandler(io.Discard, nil)), func() []Process {
		return []Process{
			{Name: "content", State: "running", Pid: os.Getpid(), Restarts: 2, Socket: sock},
			{Name: "tasks", State: "restarting", Restarts: 5, Socket: "/nonexistent/metrics.sock"},
		}
	})
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 {
		t.Fatalf("status %d:\n%s", rec.Code, body)
	}
	for _, want := range []string{
		`flotilla_test_things_total{kind="a",service="content"} 3`,
		`flotilla_test_things_total{kind="a",service="gateway"} 3`,
		`flotilla_service_restarts_total{service="content"} 2`,
		`flotilla_service_restarts_total{service="tasks"} 5`,
		`flotilla_service_up{service="tasks",state="restarting"} 0`,
		`flotilla_service_memory_rss_bytes{service="content"}`,
		`go_goroutines{service="content"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("endpoint lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("endpoint:\n%s", body)
	}
}

func TestRSSReadsThisProcess(t *testing.T) {
	if n, ok := RSS(os.Getpid()); !ok || n == 0 {
		t.Fatalf("RSS of this process = %d, %v", n, ok)
	}
	if _, ok := RSS(-1); ok {
		t.Fatal("RSS of no process succeeded")
	}
}
