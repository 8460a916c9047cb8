package server

import (
	"context"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/tasks/shim"
)

// Publisher publishes to the gateway's exchange the events no shim can send
// any more: the exit and delete of a task whose shim died. Shims publish
// every other task event themselves, straight to the gateway. What goes
// wrong is logged through ctx, whose logger names the task and namespace.
func Publisher(client eventsapi.EventsClient) shim.Publisher {
	return func(ctx context.Context, ns, topic string, event any) {
		if client == nil {
			return
		}
		a, err := typeurl.MarshalAnyToProto(event)
		if err != nil {
			logging.G(ctx).Error("event not encodable", "topic", topic, "error", err)
			return
		}
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.WithoutCancel(ctx), ns), 5*time.Second)
		defer cancel()
		if _, err := client.Publish(ctx, &eventsapi.PublishRequest{Topic: topic, Event: a}); err != nil {
			logging.G(ctx).Warn("event not published", "topic", topic, "error", err)
		}
	}
}
