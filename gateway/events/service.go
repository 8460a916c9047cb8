package events

import (
	"context"
	"fmt"

	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Service is the containerd.services.events.v1.Events server over an
// Exchange. Handlers return errdefs errors; rpc.NewServer's interceptor maps
// them to gRPC codes.
type Service struct {
	api.UnimplementedEventsServer
	x *Exchange
}

// NewService serves x.
func NewService(x *Exchange) *Service { return &Service{x: x} }

// Register adds the service to s.
func (s *Service) Register(r grpc.ServiceRegistrar) { api.RegisterEventsServer(r, s) }

// Publish publishes in the caller's namespace (gRPC metadata
// containerd-namespace); without one it fails with FailedPrecondition, as
// containerd does.
func (s *Service) Publish(ctx context.Context, r *api.PublishRequest) (*emptypb.Empty, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed publishing event: %w", err)
	}
	if r.Event == nil {
		return nil, fmt.Errorf("event must be set: %w", errdefs.ErrInvalidArgument)
	}
	if err := s.x.Publish(ctx, ns, r.Topic, r.Event); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Forward distributes an envelope whose namespace, topic and timestamp the
// caller sets.
func (s *Service) Forward(ctx context.Context, r *api.ForwardRequest) (*emptypb.Empty, error) {
	if err := s.x.Forward(ctx, r.Envelope); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// SubscribedHeader is the header of a Subscribe stream, sent once the
// subscription is registered.
const SubscribedHeader = "flotilla-events-subscribed"

// Subscribe streams matching events until the client goes away or falls
// too far behind (then the stream ends with ResourceExhausted).
func (s *Service) Subscribe(r *api.SubscribeRequest, srv api.Events_SubscribeServer) error {
	sub, err := s.x.Subscribe(r.Filters...)
	if err != nil {
		return err
	}
	defer sub.Close()
	// The header tells a client that waits for it that every event
	// published from now on reaches it, without probes through the
	// exchange that every other subscriber would see too. containerd's
	// clients ignore it.
	if err := srv.SendHeader(metadata.Pairs(SubscribedHeader, "true")); err != nil {
		return err
	}
	ctx := srv.Context()
	for {
		select {
		case env := <-sub.Events():
			if err := srv.Send(env); err != nil {
				return fmt.Errorf("failed sending event to subscriber: %w", err)
			}
		case <-sub.Done():
			return sub.Err()
		case <-ctx.Done():
			return nil
		}
	}
}
