package server

import (
	"context"
	"fmt"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/metadata"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/graphclient"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// eventFilters select, in the CRI namespace, the lifecycle events that
// become CRI container events.
var eventFilters = []string{
	fmt.Sprintf(`namespace==%q,topic~="^/(containers/(create|delete)|tasks/(start|exit))$"`, Namespace),
}

// GetContainerEvents streams CRI container events (created, started,
// stopped, deleted) of sandboxes and containers, translated from the
// metadata and task events of the gateway's exchange, each with the
// status of the pod and its containers at the time it is sent. The
// stream's header is sent once the subscription is live: a client that
// waits for it sees every event after.
func (s *Server) GetContainerEvents(_ *runtime.GetEventsRequest, srv runtime.RuntimeService_GetContainerEventsServer) error {
	ctx, cancel := context.WithCancel(withNamespace(srv.Context()))
	defer cancel()
	stream, err := eventsapi.NewEventsClient(s.daemon).Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: eventFilters})
	if err != nil {
		return fmt.Errorf("subscribe to events: %w", errgrpc.ToNative(err))
	}
	if err := graphclient.AwaitSubscribed(stream); err != nil {
		return err
	}
	envs := make(chan *types.Envelope, 128)
	errc := make(chan error, 1)
	go func() {
		for {
			env, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case envs <- env:
			case <-ctx.Done():
				return
			}
		}
	}()

	// Objects this stream knows: ID -> sandbox ID (a sandbox's own ID
	// for a sandbox), so that a delete, whose record is gone, still
	// names its pod.
	known := map[string]string{}
	if err := s.learnObjects(ctx, known); err != nil {
		return err
	}

	if err := srv.SendHeader(metadata.Pairs("flotilla-cri-events", "subscribed")); err != nil {
		return err
	}
	send := func(env *types.Envelope) error {
		ev := s.containerEvent(ctx, env, known)
		if ev == nil {
			return nil
		}
		return srv.Send(ev)
	}
	for {
		select {
		case env := <-envs:
			if err := send(env); err != nil {
				return err
			}
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("event subscription ended: %w", errgrpc.ToNative(err))
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *Server) learnObjects(ctx context.Context, known map[string]string) error {
	sbs, err := s.store.List(ctx, store.KindSandbox)
	if err != nil {
		return err
	}
	for _, c := range sbs {
		known[c.ID] = c.ID
	}
	ctrs, err := s.store.List(ctx, store.KindContainer)
	if err != nil {
		return err
	}
	for _, c := range ctrs {
		known[c.ID] = c.Labels[store.SandboxIDLabel]
	}
	return nil
}

// containerEvent translates an exchange envelope into a CRI event, or nil
// when it is about no CRI object (or is an exec's exit).
func (s *Server) containerEvent(ctx context.Context, env *types.Envelope, known map[string]string) *runtime.ContainerEventResponse {
	v, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		logging.G(ctx).Debug("undecodable event", "topic", env.GetTopic(), "error", err)
		return nil
	}
	var id string
	var kind runtime.ContainerEventType
	switch e := v.(type) {
	case *eventstypes.ContainerCreate:
		id, kind = e.ID, runtime.ContainerEventType_CONTAINER_CREATED_EVENT
		c, err := s.client.ContainerService().Get(ctx, id)
		if err != nil {
			return nil // created and gone already, or not readable
		}
		switch c.Labels[store.KindLabel] {
		case store.KindSandbox:
			known[id] = id
		case store.KindContainer:
			known[id] = c.Labels[store.SandboxIDLabel]
		default:
			return nil
		}
	case *eventstypes.TaskStart:
		id, kind = e.ContainerID, runtime.ContainerEventType_CONTAINER_STARTED_EVENT
	case *eventstypes.TaskExit:
		if e.ID != e.ContainerID {
			return nil // an exec ended, not the container
		}
		id, kind = e.ContainerID, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT
	case *eventstypes.ContainerDelete:
		id, kind = e.ID, runtime.ContainerEventType_CONTAINER_DELETED_EVENT
	default:
		return nil
	}
	sandboxID, ok := known[id]
	if !ok {
		return nil
	}
	if kind == runtime.ContainerEventType_CONTAINER_DELETED_EVENT {
		delete(known, id)
	}
	ev := &runtime.ContainerEventResponse{ContainerId: id, ContainerEventType: kind, CreatedAt: time.Now().UnixNano()}
	if ts := env.GetTimestamp(); ts != nil {
		ev.CreatedAt = ts.AsTime().UnixNano()
	}
	if st, err := s.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: sandboxID}); err == nil {
		ev.PodSandboxStatus = st.GetStatus()
	}
	if cs, err := s.store.SandboxContainers(ctx, sandboxID); err == nil {
		for _, c := range cs {
			if st, err := s.ContainerStatus(ctx, &runtime.ContainerStatusRequest{ContainerId: c.ID}); err == nil {
				ev.ContainersStatuses = append(ev.ContainersStatuses, st.GetStatus())
			}
		}
	}
	return ev
}
