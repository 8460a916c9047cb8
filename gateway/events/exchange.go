// Package events is the daemon's event exchange: service processes and the
// gateway publish to it, clients subscribe through containerd's Events API.
//
// It follows containerd's exchange (core/events/exchange) in what it accepts
// and how filters match, but differs in one deliberate way: containerd queues
// without bound for a slow subscriber, so one stuck client can grow the
// daemon's memory forever. Here each subscriber has a bounded buffer, and a
// subscriber that lets it fill up is dropped with ResourceExhausted; the
// publisher never waits.
package events

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultBuffer is how many events a subscriber may fall behind before it is
// dropped. Events are small; this absorbs a burst (an image pull publishes a
// few per layer) without letting a stuck client pin much memory.
const DefaultBuffer = 1024

// Exchange fans published events out to subscribers.
type Exchange struct {
	logger *slog.Logger
	buffer int

	// mu is held while an event is offered to every subscriber, so two
	// concurrent publishers' events reach all subscribers in one order.
	// Offers never block, so holding it is short.
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

// NewExchange returns an empty exchange. buffer <= 0 means DefaultBuffer.
func NewExchange(logger *slog.Logger, buffer int) *Exchange {
	if logger == nil {
		logger = slog.Default()
	}
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	return &Exchange{logger: logger, buffer: buffer, subs: map[*Subscription]struct{}{}}
}

// Publish sends event on topic in namespace, stamped now. event is a proto
// message or anything typeurl can marshal (an Any passes through as is).
func (e *Exchange) Publish(ctx context.Context, namespace, topic string, event any) error {
	if err := identifiers.Validate(namespace); err != nil {
		return fmt.Errorf("namespace validation: %w", err)
	}
	if err := validateTopic(topic); err != nil {
		return fmt.Errorf("envelope topic %q: %w", topic, err)
	}
	if event == nil {
		return fmt.Errorf("event must be set: %w", errdefs.ErrInvalidArgument)
	}
	encoded, err := typeurl.MarshalAny(event)
	if err != nil {
		return fmt.Errorf("encode event for %s: %w", topic, err)
	}
	e.broadcast(ctx, &types.Envelope{
		Timestamp: timestamppb.New(time.Now().UTC()),
		Namespace: namespace,
		Topic:     topic,
		Event:     typeurl.MarshalProto(encoded),
	})
	return nil
}

// Forward distributes an envelope published elsewhere (another process, or
// on behalf of another namespace) unchanged; it must carry its own timestamp.
func (e *Exchange) Forward(ctx context.Context, env *types.Envelope) error {
	if env == nil {
		return fmt.Errorf("envelope must be set: %w", errdefs.ErrInvalidArgument)
	}
	if err := identifiers.Validate(env.Namespace); err != nil {
		return fmt.Errorf("event envelope has invalid namespace: %w", err)
	}
	if err := validateTopic(env.Topic); err != nil {
		return fmt.Errorf("envelope topic %q: %w", env.Topic, err)
	}
	// containerd rejects the zero time; an unset or epoch timestamp is the
	// same mistake on the wire.
	if ts := env.Timestamp; ts == nil || (ts.Seconds == 0 && ts.Nanos == 0) || ts.AsTime().IsZero() {
		return fmt.Errorf("timestamp must be set on forwarded event: %w", errdefs.ErrInvalidArgument)
	}
	e.broadcast(ctx, env)
	return nil
}

func (e *Exchange) broadcast(ctx context.Context, env *types.Envelope) {
	// One adaptor per event, so a filter on event fields decodes the event
	// once however many subscribers look at it.
	a := newEnvelopeAdaptor(env)
	e.mu.Lock()
	defer e.mu.Unlock()
	for s := range e.subs {
		if !s.filter.Match(a) {
			continue
		}
		select {
		case s.ch <- env:
		default:
			delete(e.subs, s)
			s.end(fmt.Errorf("subscriber fell %d events behind and was dropped: %w", e.buffer, errdefs.ErrResourceExhausted))
			e.logger.WarnContext(ctx, "dropped slow event subscriber", "buffer", e.buffer, "topic", env.Topic)
		}
	}
	e.logger.Log(ctx, slog.LevelDebug-4, "event published", "ns", env.Namespace, "topic", env.Topic, "type", env.Event.GetTypeUrl())
}

// Subscription is one subscriber's view of the exchange.
type Subscription struct {
	x      *Exchange
	filter filters.Filter
	ch     chan *types.Envelope

	once sync.Once
	done chan struct{}
	err  error
}

// Subscribe starts receiving events matching any of fs (containerd's filter
// syntax over namespace, topic and event.<field>; none matches everything).
// The caller must Close the subscription when done with it.
func (e *Exchange) Subscribe(fs ...string) (*Subscription, error) {
	f, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("failed parsing subscription filters: %w", err)
	}
	s := &Subscription{x: e, filter: f, ch: make(chan *types.Envelope, e.buffer), done: make(chan struct{})}
	e.mu.Lock()
	e.subs[s] = struct{}{}
	e.mu.Unlock()
	return s, nil
}

// Events delivers matching envelopes in publication order.
func (s *Subscription) Events() <-chan *types.Envelope { return s.ch }

// Done is closed when the subscription ends: closed by its owner, or
// dropped by the exchange (then Err says why).
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err is why the subscription ended, nil while it runs or after Close.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close ends the subscription; it is safe to call more than once.
func (s *Subscription) Close() {
	s.x.mu.Lock()
	delete(s.x.subs, s)
	s.x.mu.Unlock()
	s.end(nil)
}

func (s *Subscription) end(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.done)
	})
}

// Subscribers is the number of live subscriptions.
func (e *Exchange) Subscribers() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.subs)
}

// validateTopic applies containerd's rule: "/" followed by one or more
// identifiers separated by "/".
func validateTopic(topic string) error {
	if topic == "" {
		return fmt.Errorf("must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if topic[0] != '/' {
		return fmt.Errorf("must start with '/': %w", errdefs.ErrInvalidArgument)
	}
	if len(topic) == 1 {
		return fmt.Errorf("must have at least one component: %w", errdefs.ErrInvalidArgument)
	}
	for _, c := range strings.Split(topic[1:], "/") {
		if err := identifiers.Validate(c); err != nil {
			return fmt.Errorf("failed validation on component %q: %w", c, err)
		}
	}
	return nil
}
