// Package metrics holds the Prometheus registry of one Flotilla process: the
// gRPC server and client metrics pkg/rpc records on every call, the Go
// runtime and process collectors, and whatever a service adds (GC runs,
// tasks). A service process serves its registry over HTTP on a Unix socket
// in its state directory (SocketName); flotillad scrapes those sockets and
// serves everything, labelled by service, on the TCP address of its config
// (see Daemon).
package metrics

import (
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// SocketName is the file name of a service's metrics socket in its state
// directory.
const SocketName = "metrics.sock"

// Namespace prefixes Flotilla's own metrics (not the gRPC, Go and process
// ones, which keep their usual names so existing dashboards work).
const Namespace = "flotilla"

// buckets suit calls between processes on one machine: most take well under
// a millisecond, a pull or a layer apply takes seconds.
var buckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

var (
	// Registry is this process's registry.
	Registry = prometheus.NewRegistry()
	// Server records every RPC a gRPC (or ttrpc) server of this process
	// handles; pkg/rpc installs its interceptors.
	Server = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(buckets)))
	// Client records every RPC this process makes through pkg/rpc.
	Client = grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram(grpcprom.WithHistogramBuckets(buckets)))
)

func init() {
	Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		Server,
		Client,
	)
}

// Handler serves Registry in Prometheus's exposition formats.
func Handler() http.Handler {
	return promhttp.HandlerFor(Registry, promhttp.HandlerOpts{})
}

// PprofEnv, set to anything in a service's environment (flotillad's, which
// its services inherit), has the metrics endpoint serve Go's profiles too
// (/debug/pprof/ on <state>/metrics.sock): a profile of one process of the
// graph while it works, for a developer, never on by default.
const PprofEnv = "FLOTILLA_PPROF"

// Serve answers GET /metrics on l until l is closed. A scrape is cheap and
// local, so the timeouts only guard against a stuck peer.
func Serve(l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	if os.Getenv(PprofEnv) != "" {
		// Profiles take as long as they are asked to.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		srv.WriteTimeout = 0
	}
	err := srv.Serve(l)
	if errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// GaugeFunc registers a gauge read at each scrape, named flotilla_<name>.
func GaugeFunc(name, help string, fn func() float64) {
	Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, fn))
}

// CounterVec registers a counter named flotilla_<name> with the given labels.
func CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	Registry.MustRegister(c)
	return c
}
