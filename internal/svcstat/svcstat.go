// Package svcstat turns what a Flotilla process exports on its metrics
// socket (pkg/metrics: the gRPC and ttrpc server metrics of every call, the
// process collector's CPU and memory) into the figures `flotilla top` shows:
// CPU %, memory, calls per second, p99 latency and errors, from two samples
// taken an interval apart.
package svcstat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Sample is one scrape of one process, summed over its methods.
type Sample struct {
	At time.Time
	// CPUSeconds is process_cpu_seconds_total; RSS process_resident_memory_bytes.
	CPUSeconds float64
	RSS        float64
	HasProcess bool
	// Calls counts the calls the process served, Errors those that ended
	// with a code other than OK (NotFound for a missing blob counts too).
	Calls, Errors float64
	// Buckets is the latency histogram of every call: upper bound in
	// seconds, cumulative count, by bound ascending.
	Buckets []Bucket
}

// Bucket is one bucket of a cumulative histogram.
type Bucket struct {
	UpperBound float64
	Count      float64
}

// ignored are services whose calls are the machinery's, not the graph's
// work: the supervisor's health checks and go-plugin's own.
var ignored = map[string]bool{
	"grpc.health.v1.Health": true,
	"plugin.GRPCBroker":     true,
	"plugin.GRPCController": true,
	"plugin.GRPCStdio":      true,
}

// Parse sums a scrape's families into a Sample.
func Parse(mfs []*dto.MetricFamily, at time.Time) Sample {
	s := Sample{At: at}
	buckets := map[float64]float64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "process_cpu_seconds_total":
			for _, m := range mf.Metric {
				s.CPUSeconds += m.GetCounter().GetValue()
				s.HasProcess = true
			}
		case "process_resident_memory_bytes":
			for _, m := range mf.Metric {
				s.RSS += m.GetGauge().GetValue()
			}
		case "grpc_server_handled_total":
			for _, m := range mf.Metric {
				if ignored[label(m, "grpc_service")] {
					continue
				}
				v := m.GetCounter().GetValue()
				s.Calls += v
				if label(m, "grpc_code") != "OK" {
					s.Errors += v
				}
			}
		case "grpc_server_handling_seconds":
			for _, m := range mf.Metric {
				if ignored[label(m, "grpc_service")] {
					continue
				}
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					if !math.IsInf(b.GetUpperBound(), 1) {
						buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
					}
				}
				// The exposition leaves the +Inf bucket implied: it is
				// the count of every observation.
				buckets[math.Inf(1)] += float64(h.GetSampleCount())
			}
		}
	}
	for ub, c := range buckets {
		s.Buckets = append(s.Buckets, Bucket{ub, c})
	}
	sort.Slice(s.Buckets, func(i, j int) bool { return s.Buckets[i].UpperBound < s.Buckets[j].UpperBound })
	return s
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Stats are the figures of one interval.
type Stats struct {
	// CPUPercent is of one CPU (200 is two CPUs busy), as top shows it.
	CPUPercent  float64
	CallsPerSec float64
	// P99 is the 99th percentile latency of the interval's calls; NaN
	// when there were none.
	P99 float64
	// Errors is how many calls of the interval failed; ErrorsTotal how
	// many since the process started.
	Errors, ErrorsTotal float64
	RSS                 float64
}

// Between computes the figures of the interval from prev to cur, two
// samples of one process. A process that restarted in between (its counters
// went down) is measured from zero.
func Between(prev, cur Sample) Stats {
	st := Stats{P99: math.NaN(), ErrorsTotal: cur.Errors, RSS: cur.RSS}
	secs := cur.At.Sub(prev.At).Seconds()
	if secs <= 0 {
		return st
	}
	if cur.CPUSeconds < prev.CPUSeconds || cur.Calls < prev.Calls {
		prev = Sample{At: prev.At}
	}
	st.CPUPercent = 100 * (cur.CPUSeconds - prev.CPUSeconds) / secs
	st.CallsPerSec = (cur.Calls - prev.Calls) / secs
	st.Errors = cur.Errors - prev.Errors
	st.P99 = Quantile(0.99, delta(prev.Buckets, cur.Buckets))
	return st
}

// delta is cur's buckets less prev's, bound by bound.
func delta(prev, cur []Bucket) []Bucket {
	was := map[float64]float64{}
	for _, b := range prev {
		was[b.UpperBound] = b.Count
	}
	out := make([]Bucket, len(cur))
	for i, b := range cur {
		out[i] = Bucket{b.UpperBound, max(b.Count-was[b.UpperBound], 0)}
	}
	return out
}

// Quantile estimates the q-quantile of a cumulative histogram as Prometheus's
// histogram_quantile does: linearly within the bucket it falls in. It is
// NaN for an empty histogram; in the +Inf bucket it is the highest finite
// bound.
func Quantile(q float64, buckets []Bucket) float64 {
	if len(buckets) == 0 {
		return math.NaN()
	}
	total := buckets[len(buckets)-1].Count
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	lowerBound, lowerCount := 0.0, 0.0
	for _, b := range buckets {
		if b.Count >= rank {
			if math.IsInf(b.UpperBound, 1) {
				return lowerBound
			}
			if b.Count == lowerCount {
				return b.UpperBound
			}
			return lowerBound + (b.UpperBound-lowerBound)*(rank-lowerCount)/(b.Count-lowerCount)
		}
		lowerBound, lowerCount = b.UpperBound, b.Count
	}
	// Observations above the highest finite bound, with no +Inf bucket
	// listed: the highest bound is all that is known.
	return lowerBound
}

// Scraper reads metrics sockets, keeping one HTTP client a socket.
type Scraper struct {
	clients map[string]*http.Client
}

// NewScraper returns a Scraper.
func NewScraper() *Scraper { return &Scraper{clients: map[string]*http.Client{}} }

// Scrape reads one process's metrics socket.
func (s *Scraper) Scrape(ctx context.Context, socket string) (Sample, error) {
	c, ok := s.clients[socket]
	if !ok {
		c = &http.Client{
			Timeout: 3 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", socket)
				},
				MaxIdleConnsPerHost: 1,
			},
		}
		s.clients[socket] = c
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://service/metrics", nil)
	if err != nil {
		return Sample{}, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	resp, err := c.Do(req)
	if err != nil {
		return Sample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Sample{}, fmt.Errorf("GET /metrics on %s: %s", socket, resp.Status)
	}
	at := time.Now()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	var mfs []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return Parse(mfs, at), nil
			}
			return Sample{}, fmt.Errorf("metrics of %s: %w", socket, err)
		}
		mfs = append(mfs, mf)
	}
}

// Close drops the scraper's connections.
func (s *Scraper) Close() {
	for _, c := range s.clients {
		c.CloseIdleConnections()
	}
}
