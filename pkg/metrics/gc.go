package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GC counts the metadata service's garbage collections.
type GC struct {
	runs     *prometheus.CounterVec
	removed  *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewGC registers the garbage collection metrics of this process.
func NewGC() *GC {
	g := &GC{
		runs:    CounterVec("gc_runs_total", "Garbage collections run, by result (ok or error).", "result"),
		removed: CounterVec("gc_removed_total", "Items garbage collection removed, by kind (blobs, ingests, leases, snapshots, backend_blobs, ...).", "kind"),
		bytes:   CounterVec("gc_reclaimed_bytes_total", "Bytes of content garbage collection removed from the content service.", "store"),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "gc_duration_seconds",
			Help:    "How long a garbage collection held meta.db.",
			Buckets: buckets,
		}),
	}
	Registry.MustRegister(g.duration)
	for _, r := range []string{"ok", "error"} {
		g.runs.WithLabelValues(r)
	}
	return g
}

// Record counts one collection: what it removed, by kind, the bytes of
// content it reclaimed, and how long it took.
func (g *GC) Record(took time.Duration, err error, removed map[string]int, reclaimed int64) {
	g.bytes.WithLabelValues("content").Add(float64(reclaimed))
	if err != nil {
		g.runs.WithLabelValues("error").Inc()
	} else {
		g.runs.WithLabelValues("ok").Inc()
	}
	if took > 0 {
		g.duration.Observe(took.Seconds())
	}
	for kind, n := range removed {
		// Every kind is reported from the first run on, so that rate()
		// has a series to start from.
		g.removed.WithLabelValues(kind).Add(float64(n))
	}
}
