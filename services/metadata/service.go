// Package metadata is Flotilla's metadata service: meta.db and the
// namespaced containerd APIs over it, with content bytes kept by the content
// service and events sent to the gateway.
package metadata

import (
	"context"
	"fmt"
	"slices"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/metrics"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/metadata/gc"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
	"github.com/flotilla-project/flotilla/services/metadata/server"
)

// Options are the metadata service's options ([services.metadata.options],
// or --option key=value by hand), durations as Go writes them ("10m").
type Options struct {
	// GCSchedule is how often collection runs with nothing deleted.
	GCSchedule string `toml:"gc_schedule" json:"gc_schedule" comment:"Garbage collection runs this often even when nothing is deleted (leases expire by the clock); \"0s\": only after deletions."`
	// GCDeleteDelay coalesces a burst of removals (an image and its
	// layers, say) into one collection.
	GCDeleteDelay string `toml:"gc_delete_delay" json:"gc_delete_delay" comment:"Garbage collection runs this long after a deletion, so that a burst of deletions costs one run."`
}

// DefaultOptions are the options the metadata service runs with unless told.
func DefaultOptions() *Options {
	return &Options{GCSchedule: "10m", GCDeleteDelay: "100ms"}
}

// Validate checks the durations, for flotillad to refuse a bad one before
// it starts anything.
func (o *Options) Validate() error {
	if _, err := duration("gc_schedule", o.GCSchedule, 0); err != nil {
		return err
	}
	_, err := duration("gc_delete_delay", o.GCDeleteDelay, 0)
	return err
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
	opts := DefaultOptions()
	if err := p.DecodeOptions(ctx, opts); err != nil {
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
	db, err := metadb.Open(p.Env.Root, proxy.NewContentStore(contentapi.NewContentClient(content)))
	if err != nil {
		graph.Close()
		return nil, err
	}
	gcMetrics := metrics.NewGC()
	sched := gc.NewScheduler(ctx, func(ctx context.Context) error {
		st, err := db.GarbageCollect(ctx)
		gcMetrics.Record(st.Duration, err, map[string]int{
			"blobs": st.Blobs, "ingests": st.Ingests, "leases": st.Leases, "snapshots": st.Snapshots,
			"backend_blobs": st.BackendBlobs, "backend_ingests": st.BackendIngests, "backend_snapshots": st.BackendSnapshots,
		}, st.BytesReclaimed)
		return err
	}, delay)
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
	var remotes []*grpc.ClientConn
	for name := range p.Env.Snapshotters {
		var cc grpc.ClientConnInterface
		if slices.Contains(p.Env.RemoteSnapshotters, name) {
			// Not a process of the graph: a call fails fast when it
			// refuses connections instead of waiting for it as for a
			// restarting service.
			conn, err := rpc.DialTimeout(p.Env.Snapshotters[name], p.CallTimeout())
			if err != nil {
				return nil, fmt.Errorf("snapshotter %s: %w", name, err)
			}
			remotes = append(remotes, conn)
			cc = newFailFast(name, conn)
		} else {
			sc, err := graph.Process(service.SnapshotterProcess(name))
			if err != nil {
				return nil, fmt.Errorf("snapshotter %s: %w", name, err)
			}
			cc = sc
		}
		sns[name] = snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(cc), name)
	}
	db.SetSnapshotters(sns)
	db.SetCallTimeout(p.CallTimeout())

	var events eventsapi.EventsClient
	if p.Env.Gateway != "" {
		events = eventsapi.NewEventsClient(graph)
	}
	pub := server.NewPublisher(ctx, events)

	return &service.Instance{
		Type:     "io.containerd.metadata.v1",
		Routes:   server.Routes,
		Requires: []string{"io.containerd.content.v1"},
		Register: server.Register(db, pub),
		Close: func(ctx context.Context) error {
			stopTicker()
			sched.Close()
			pub.Close(ctx)
			err := db.Close()
			graph.Close()
			for _, c := range remotes {
				c.Close()
			}
			return err
		},
	}, nil
}
