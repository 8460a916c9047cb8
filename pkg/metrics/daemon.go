package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
)

// ServiceLabel names the process a series comes from on flotillad's
// endpoint; flotillad's own series carry service="gateway".
const ServiceLabel = "service"

// Process is a service process as flotillad's supervisor sees it.
type Process struct {
	Name     string
	State    string
	Pid      int
	Restarts int
	// Socket is the process's metrics socket; empty if it serves none.
	Socket string
}

// Daemon is flotillad's endpoint: its own registry, labelled
// service="gateway", the supervisor's view of every service (restarts,
// memory, state), and every service's registry, scraped over its socket
// at each request and labelled with the service's name.
type Daemon struct {
	logger    *slog.Logger
	processes func() []Process
	self      *prometheus.Registry

	mu      sync.Mutex
	clients map[string]*http.Client // by socket
}

// scrapeTimeout bounds the scrape of one service: a wedged service costs
// its own series, never the whole endpoint.
const scrapeTimeout = 3 * time.Second

// NewDaemon builds flotillad's endpoint; processes is called at each scrape.
func NewDaemon(logger *slog.Logger, processes func() []Process) *Daemon {
	d := &Daemon{logger: logger, processes: processes, self: prometheus.NewRegistry(), clients: map[string]*http.Client{}}
	d.self.MustRegister(supervised{d})
	return d
}

// Gather implements prometheus.Gatherer.
func (d *Daemon) Gather() ([]*dto.MetricFamily, error) {
	own, err := Registry.Gather()
	if err != nil {
		return nil, err
	}
	gs := prometheus.Gatherers{
		fixed(withLabel(own, ServiceLabel, "gateway")),
		d.self,
	}
	procs := d.processes()
	results := make([][]*dto.MetricFamily, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		if p.Socket == "" || p.Pid == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			mfs, err := d.scrape(p.Socket)
			if err != nil {
				// A service that is restarting has no socket for
				// a moment; that is not the endpoint's failure.
				d.logger.Debug("scrape service metrics", "service", p.Name, "error", err)
				return
			}
			results[i] = withLabel(mfs, ServiceLabel, p.Name)
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r != nil {
			gs = append(gs, fixed(r))
		}
	}
	return gs.Gather()
}

// Handler serves Gather's result.
func (d *Daemon) Handler() http.Handler {
	return promhttp.HandlerFor(d, promhttp.HandlerOpts{
		// One inconsistent family (two binaries of different versions,
		// say) must not blank the whole endpoint.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      errorLog{d.logger},
	})
}

// ListenAndServe serves d's /metrics on a TCP address until stop is called.
func (d *Daemon) ListenAndServe(addr string) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && err != http.ErrServerClosed {
			d.logger.Error("metrics endpoint stopped", "error", err)
		}
	}()
	d.logger.Info("serving metrics", "address", l.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

func (d *Daemon) client(socket string) *http.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.clients[socket]
	if !ok {
		c = &http.Client{
			Timeout: scrapeTimeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var dl net.Dialer
					return dl.DialContext(ctx, "unix", socket)
				},
				MaxIdleConnsPerHost: 1,
				IdleConnTimeout:     time.Minute,
			},
		}
		d.clients[socket] = c
	}
	return c
}

// scrape reads a service's registry in the protobuf format (exact, and
// what the text parser would have to rebuild anyway).
func (d *Daemon) scrape(socket string) ([]*dto.MetricFamily, error) {
	req, err := http.NewRequest(http.MethodGet, "http://service/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	resp, err := d.client(socket).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics on %s: %s", socket, resp.Status)
	}
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	var out []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decode metrics of %s: %w", socket, err)
		}
		out = append(out, mf)
	}
}

// withLabel adds name=value to every metric of mfs. A label of that name
// already there is kept as exported_<name>, as Prometheus does with
// honor_labels off.
func withLabel(mfs []*dto.MetricFamily, name, value string) []*dto.MetricFamily {
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if lp.GetName() == name {
					lp.Name = proto.String("exported_" + name)
				}
			}
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(name), Value: proto.String(value)})
			sort.Slice(m.Label, func(i, j int) bool { return m.Label[i].GetName() < m.Label[j].GetName() })
		}
	}
	return mfs
}

type fixed []*dto.MetricFamily

func (f fixed) Gather() ([]*dto.MetricFamily, error) { return f, nil }

// supervised exposes the supervisor's view of each service.
type supervised struct{ d *Daemon }

var (
	restartsDesc = prometheus.NewDesc(Namespace+"_service_restarts_total",
		"Times the supervisor restarted a service process (crashes, OOM kills and operator restarts) since flotillad started.",
		[]string{ServiceLabel}, nil)
	memoryDesc = prometheus.NewDesc(Namespace+"_service_memory_rss_bytes",
		"Resident memory of a service process (VmRSS).", []string{ServiceLabel}, nil)
	upDesc = prometheus.NewDesc(Namespace+"_service_up",
		"1 if the service process is running, else 0; the state label says what it is doing.",
		[]string{ServiceLabel, "state"}, nil)
)

func (s supervised) Describe(ch chan<- *prometheus.Desc) {
	ch <- restartsDesc
	ch <- memoryDesc
	ch <- upDesc
}

func (s supervised) Collect(ch chan<- prometheus.Metric) {
	for _, p := range s.d.processes() {
		ch <- prometheus.MustNewConstMetric(restartsDesc, prometheus.CounterValue, float64(p.Restarts), p.Name)
		up := 0.0
		if p.Pid > 0 && p.State == "running" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, p.Name, p.State)
		if p.Pid > 0 {
			if rss, ok := RSS(p.Pid); ok {
				ch <- prometheus.MustNewConstMetric(memoryDesc, prometheus.GaugeValue, float64(rss), p.Name)
			}
		}
	}
}

// RSS is a process's resident memory in bytes, from /proc/<pid>/status.
func RSS(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(v) // "12345 kB"
		if len(f) == 0 {
			return 0, false
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		return kb * 1024, true
	}
	return 0, false
}

type errorLog struct{ l *slog.Logger }

func (e errorLog) Println(v ...any) { e.l.Warn("metrics endpoint", "error", fmt.Sprint(v...)) }
