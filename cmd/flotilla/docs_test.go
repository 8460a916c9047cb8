package main

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/metrics"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

// The documents under deploy/ are what top and an operator's Prometheus read:
// these tests keep them true to the code.

const repoRoot = "../.."

var registerGC sync.Once

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exportedMetrics is every metric family a Flotilla process can export: what
// pkg/metrics registers in this process once a gRPC server and client have
// been through it, flotillad's supervisor series, and the flotilla_<name>
// metrics the services register through pkg/metrics (found in their source).
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	registerGC.Do(func() { metrics.NewGC() }) // once a process: it registers globally
	sock := filepath.Join(t.TempDir(), "m.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(metrics.Server.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(metrics.Server.StreamServerInterceptor()))
	adminpb.RegisterAdminServer(s, &fakeAdmin{})
	metrics.Server.InitializeMetrics(s)
	go s.Serve(l)
	defer s.Stop()
	conn, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := adminpb.NewAdminClient(conn).Services(ctx, &adminpb.ServicesRequest{}); err != nil {
		t.Fatal(err)
	}

	d := metrics.NewDaemon(slog.New(slog.NewTextHandler(io.Discard, nil)), func() []metrics.Process {
		return []metrics.Process{{Name: "content", State: "running", Pid: os.Getpid()}}
	})
	mfs, err := d.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	registered := regexp.MustCompile(`metrics\.(?:GaugeFunc|CounterVec)\(\s*"([a-z0-9_]+)"`)
	for _, dir := range []string{"services", "pkg", "gateway", "cmd/flotillad"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			b, err := os.ReadFile(p)
			for _, m := range registered.FindAllStringSubmatch(string(b), -1) {
				names[metrics.Namespace+"_"+m[1]] = true
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return names
}

func documented(doc, name string) bool {
	if strings.Contains(doc, "`"+name+"`") {
		return true
	}
	// The Go runtime's memstats are documented as a family.
	return strings.HasPrefix(name, "go_memstats_") && strings.Contains(doc, "`go_memstats_*`")
}

func TestMetricsReferenceListsEveryExportedMetric(t *testing.T) {
	doc := readDoc(t, "deploy/metrics.md")
	names := exportedMetrics(t)
	for _, want := range []string{"grpc_server_handled_total", "grpc_client_handling_seconds", "flotilla_service_up", "flotilla_gc_runs_total", "flotilla_tasks", "process_cpu_seconds_total"} {
		if !names[want] {
			t.Errorf("the test found no %s exported: it no longer sees what it checks", want)
		}
	}
	for name := range names {
		if !documented(doc, name) {
			t.Errorf("deploy/metrics.md does not list %s", name)
		}
	}
}

func TestGrafanaDashboardQueriesDocumentedMetrics(t *testing.T) {
	doc := readDoc(t, "deploy/metrics.md")
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(readDoc(t, "deploy/grafana-dashboard.json")), &dash); err != nil {
		t.Fatalf("deploy/grafana-dashboard.json: %v", err)
	}
	metric := regexp.MustCompile(`\b(?:flotilla|grpc|process|go)_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metric.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				if !documented(doc, base) {
					t.Errorf("panel %q queries %s, which deploy/metrics.md does not list", p.Title, m)
				}
				n++
			}
		}
	}
	if n == 0 {
		t.Error("the dashboard queries no metric")
	}
}

func TestSampleConfigsParse(t *testing.T) {
	var conflist struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type string `json:"type"`
			IPAM struct {
				Type string `json:"type"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(readDoc(t, "deploy/cni/10-flotilla.conflist")), &conflist); err != nil {
		t.Fatalf("the sample conflist: %v", err)
	}
	// The plugins it names are those doctor checks for.
	used := []string{conflist.Plugins[0].Type, conflist.Plugins[0].IPAM.Type, conflist.Plugins[1].Type}
	for _, p := range used {
		if !strings.Contains(readDoc(t, "internal/hostcheck/checks.go"), `"`+p+`"`) {
			t.Errorf("the sample conflist uses %s, which doctor does not check for", p)
		}
	}
	crictl := readDoc(t, "deploy/crictl.yaml")
	if !strings.Contains(crictl, "runtime-endpoint: unix://"+defaultAddress) {
		t.Errorf("crictl.yaml does not point at %s:\n%s", defaultAddress, crictl)
	}
	if k := readDoc(t, "deploy/kubernetes/kubelet-config.yaml"); !strings.Contains(k, "cgroupDriver: cgroupfs") {
		t.Errorf("the kubelet config does not set cgroupDriver: cgroupfs")
	}
}
