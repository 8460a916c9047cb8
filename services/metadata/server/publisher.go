package server

import (
	"context"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Publisher sends events to the gateway's exchange. Publishing never holds
// up the call that caused the event: events queue (in order) and a slow or
// restarting gateway costs dropped events, logged, never a stuck API.
type Publisher struct {
	client eventsapi.EventsClient
	queue  chan event
	done   chan struct{}
}

type event struct {
	ctx   context.Context
	ns    string
	topic string
	body  any
}

// publishQueue bounds the events waiting for the gateway.
const publishQueue = 1024

// NewPublisher publishes through client; a nil client discards events (a
// metadata service started by hand, without a gateway). What the sending
// goroutine has to say is logged through ctx.
func NewPublisher(ctx context.Context, client eventsapi.EventsClient) *Publisher {
	p := &Publisher{client: client, queue: make(chan event, publishQueue), done: make(chan struct{})}
	if client == nil {
		close(p.done)
		return p
	}
	go p.run(ctx)
	return p
}

// Publish queues an event of the namespace of ctx (or fallback when ctx
// carries none).
func (p *Publisher) Publish(ctx context.Context, topic string, body any, fallback string) {
	if p.client == nil {
		return
	}
	ns, ok := namespaces.Namespace(ctx)
	fellBack := !ok || ns == ""
	if fellBack {
		ns = fallback
	}
	// The event outlives the call, but keeps its trace.
	ev := event{ctx: context.WithoutCancel(ctx), ns: ns, topic: topic, body: body}
	select {
	case p.queue <- ev:
	default:
		// The call's logger names the call's namespace, not a fallback.
		log := logging.G(ctx)
		if fellBack {
			log = log.With("namespace", ns)
		}
		log.Warn("event dropped: queue full", "topic", topic)
	}
}

func (p *Publisher) run(ctx context.Context) {
	defer close(p.done)
	for ev := range p.queue {
		any, err := typeurl.MarshalAnyToProto(ev.body)
		if err != nil {
			logging.G(ctx).Error("event not encodable", "topic", ev.topic, "error", err)
			continue
		}
		pctx := metadata.NewOutgoingContext(ev.ctx, metadata.Pairs(namespaces.GRPCHeader, ev.ns))
		pctx, cancel := context.WithTimeout(pctx, 5*time.Second)
		_, err = p.client.Publish(pctx, &eventsapi.PublishRequest{Topic: ev.topic, Event: any})
		cancel()
		if err != nil {
			logging.G(ctx).Warn("event not published", "topic", ev.topic, "namespace", ev.ns, "error", err)
		}
	}
}

// Close sends what is queued (bounded by ctx) and stops.
func (p *Publisher) Close(ctx context.Context) {
	if p.client == nil {
		return
	}
	close(p.queue)
	select {
	case <-p.done:
	case <-ctx.Done():
	}
}
