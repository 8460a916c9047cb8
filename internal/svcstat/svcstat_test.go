package svcstat

import (
	"context"
	"math"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flotilla-project/flotilla/pkg/metrics"
)

func parseText(t *testing.T, text string) []*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.MetricFamily
	for _, f := range fams {
		out = append(out, f)
	}
	return out
}

const before = `
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 10
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.1e+07
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="OK",grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 100
grpc_server_handled_total{grpc_code="NotFound",grpc_method="Get",grpc_service="containerd.services.images.v1.Images",grpc_type="unary"} 3
grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"} 5000
# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_bucket{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary",le="0.001"} 100
grpc_server_handling_seconds_bucket{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary",le="0.01"} 100
grpc_server_handling_seconds_bucket{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary",le="+Inf"} 100
grpc_server_handling_seconds_sum{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 0.05
grpc_server_handling_seconds_count{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 100
`

// after is two seconds later: 1 CPU second, 200 more calls (2 failed), 100
// of them between 1 and 10 ms.
const after = `
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 11
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.2e+07
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="OK",grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 298
grpc_server_handled_total{grpc_code="NotFound",grpc_method="Get",grpc_service="containerd.services.images.v1.Images",grpc_type="unary"} 5
grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"} 9000
# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_bucket{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary",le="0.001"} 200
grpc_server_handling_seconds_bucket{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary",le="0.01"} 300
grpc_server_handling_seconds_bucket{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary",le="+Inf"} 300
grpc_server_handling_seconds_sum{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 0.5
grpc_server_handling_seconds_count{grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 300
`

func TestBetweenGivesCPUCallsErrorsAndP99OfTheInterval(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := Parse(parseText(t, before), t0)
	b := Parse(parseText(t, after), t0.Add(2*time.Second))
	if a.Calls != 103 {
		t.Errorf("calls before = %v, want 103 (health checks left out)", a.Calls)
	}
	st := Between(a, b)
	if st.CPUPercent != 50 {
		t.Errorf("CPU = %v%%, want 50%% (1 CPU second in 2)", st.CPUPercent)
	}
	if st.CallsPerSec != 100 {
		t.Errorf("calls/s = %v, want 100", st.CallsPerSec)
	}
	if st.Errors != 2 || st.ErrorsTotal != 5 {
		t.Errorf("errors = %v of %v in all, want 2 of 5", st.Errors, st.ErrorsTotal)
	}
	// 200 calls in the interval: 100 under 1ms, 100 between 1 and 10 ms;
	// the 198th is 98% of the way through the second bucket.
	if want := 0.001 + 0.009*0.98; math.Abs(st.P99-want) > 1e-9 {
		t.Errorf("p99 = %v, want %v", st.P99, want)
	}
	if st.RSS != 2.2e7 {
		t.Errorf("rss = %v", st.RSS)
	}
}

func TestBetweenARestartCountsFromZeroAndNoCallsHasNoP99(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := Parse(parseText(t, after), t0)
	b := Parse(parseText(t, before), t0.Add(time.Second)) // counters went down
	st := Between(a, b)
	if st.CallsPerSec != 103 || st.CPUPercent != 1000 {
		t.Errorf("after a restart: %v calls/s, %v%% CPU; want the new process's counts (103, 1000)", st.CallsPerSec, st.CPUPercent)
	}
	idle := Between(b, Sample{At: b.At.Add(time.Second), Calls: b.Calls, CPUSeconds: b.CPUSeconds, Errors: b.Errors, Buckets: b.Buckets})
	if !math.IsNaN(idle.P99) || idle.CallsPerSec != 0 {
		t.Errorf("an idle interval: p99 %v, %v calls/s; want NaN and 0", idle.P99, idle.CallsPerSec)
	}
}

func TestQuantileInTheInfBucketIsTheHighestBound(t *testing.T) {
	got := Quantile(0.99, []Bucket{{0.1, 0}, {1, 1}, {math.Inf(1), 100}})
	if got != 1 {
		t.Errorf("p99 of calls above every bound = %v, want 1 (the highest finite bound)", got)
	}
}

func TestScrapeReadsAMetricsSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), metrics.SocketName)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go metrics.Serve(l)
	s := NewScraper()
	defer s.Close()
	got, err := s.Scrape(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if !got.HasProcess || got.RSS <= 0 {
		t.Errorf("scrape of this process: %+v; want its process metrics (memory)", got)
	}
}
