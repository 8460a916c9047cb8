// Package metadata is Flotilla's metadata service: meta.db and the
// namespaced containerd APIs over it, with content bytes kept by the content
// service and events sent to the gateway.
package metadata

import (
	"context"
	"fmt"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"

	"github.com/flotilla-project/flotilla/pkg/metrics"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/metadata/gc"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
	"github.com/flotilla-project/flotilla/services/metadata/server"
)

// options are the [services.metadata.options] of flotillad's config, as Go
// durations.
type options struct {
	// GCSchedule is how often collection runs with nothing deleted.
	GCSchedule string `json:"gc_schedule"`
	// GCDeleteDelay coalesces a burst of removals (an image and its
	// layers, say) into one collection.
	GCDeleteDelay string `json:"gc_delete_delay"`
}

func duration(name, v string, def time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("option %s %q: want a duration such as \"10m\"", name, v)
	}
	return d, nil
}

// New builds the metadata service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	var opts options
	if err := p.Env.DecodeOptions(&opts); err != nil {
		return nil, err
	}
	every, err := duration("gc_schedule", opts.GCSchedule, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	delay, err := duration("gc_delete_delay", opts.GCDeleteDelay, 100*time.Millisecond)
	if err != nil {
		return nil, err
	}
	graph, err := p.Graph()
	if err != nil {
		return nil, err
	}
	content, err := graph.Process("content")
	if err != nil {
		return nil, err
	}
	conn, err := p.Dial("content")
	if err != nil {
		graph.Close()
		return nil, err
	}
	db, err := metadb.Open(p.Env.Root, proxy.NewContentStore(contentapi.NewContentClient(content)), p.Logger)
	if err != nil {
		conn.Close()
		graph.Close()
		return nil, err
	}
	gcMetrics := metrics.NewGC()
	sched := gc.NewScheduler(func(ctx context.Context) error {
		st, err := db.GarbageCollect(ctx)
		gcMetrics.Record(st.Duration, err, map[string]int{
			"blobs": st.Blobs, "ingests": st.Ingests, "leases": st.Leases, "snapshots": st.Snapshots,
			"backend_blobs": st.BackendBlobs, "backend_ingests": st.BackendIngests, "backend_snapshots": st.BackendSnapshots,
		}, st.BytesReclaimed)
		return err
	}, delay, p.Logger)
	db.OnDirty(sched.Trigger)
	// Leases expire by the clock and a crash can leave an ingest
	// behind, so collection also runs on a schedule. Not at start: a
	// restart must not sweep what a client just wrote and has yet to
	// reference, any more than it would have without the restart.
	stopTicker := func() {}
	if every > 0 {
		stopTicker = sched.Every(every)
	}

	// Snapshotters, local and remote alike, are reached as containerd
	// reaches a proxy snapshotter; each call carries the configured
	// deadline, so a hung one fails its callers instead of holding them.
	sns := map[string]snapshots.Snapshotter{}
	for name := range p.Env.Snapshotters {
		sc, err := graph.Process(service.SnapshotterProcess(name))
		if err != nil {
			return nil, fmt.Errorf("snapshotter %s: %w", name, err)
		}
		sns[name] = snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(sc), name)
	}
	db.SetSnapshotters(sns)
	db.SetCallTimeout(p.CallTimeout())

	var events eventsapi.EventsClient
	if p.Env.Gateway != "" {
		events = eventsapi.NewEventsClient(graph)
	}
	pub := server.NewPublisher(events, p.Logger)

	return &service.Instance{
		Type:     "io.containerd.metadata.v1",
		Routes:   server.Routes,
		Requires: []string{"io.containerd.content.v1"},
		Register: server.Register(db, conn, pub, p.Logger),
		Close: func(ctx context.Context) error {
			stopTicker()
			sched.Close()
			pub.Close(ctx)
			err := db.Close()
			conn.Close()
			graph.Close()
			return err
		},
	}, nil
}
