// Command flotilla-metadata is Flotilla's metadata service: meta.db and the
// namespaced containerd APIs over it, with content bytes kept by the content
// service and events sent to the gateway.
package main

import (
	"context"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/v2/core/content/proxy"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/metadata/gc"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
	"github.com/flotilla-project/flotilla/services/metadata/server"
)

// gcDelay coalesces a burst of removals (an image and its layers, say) into
// one collection.
const gcDelay = 100 * time.Millisecond

func main() {
	service.Run("metadata", func(ctx context.Context, p *service.Process) (*service.Instance, error) {
		conn, err := p.Dial("content")
		if err != nil {
			return nil, err
		}
		db, err := metadb.Open(p.Env.Root, proxy.NewContentStore(contentapi.NewContentClient(conn)), p.Logger)
		if err != nil {
			conn.Close()
			return nil, err
		}
		sched := gc.NewScheduler(func(ctx context.Context) error {
			_, err := db.GarbageCollect(ctx)
			return err
		}, gcDelay, p.Logger)
		db.OnDirty(sched.Trigger)
		// What a crash left half-done is collected soon after start.
		sched.Trigger(false)

		var events eventsapi.EventsClient
		if p.Env.Gateway != "" {
			gw, err := rpc.Dial(p.Env.Gateway)
			if err != nil {
				return nil, err
			}
			events = eventsapi.NewEventsClient(gw)
		}
		pub := server.NewPublisher(events, p.Logger)

		return &service.Instance{
			Type:     "io.containerd.metadata.v1",
			Routes:   server.Routes,
			Requires: []string{"io.containerd.content.v1"},
			Register: server.Register(db, pub, p.Logger),
			Close: func(ctx context.Context) error {
				sched.Close()
				pub.Close(ctx)
				err := db.Close()
				conn.Close()
				return err
			},
		}, nil
	})
}
