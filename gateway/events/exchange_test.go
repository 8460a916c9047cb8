package events

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	cevents "github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/events/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// serve starts an rpc server hosting the events service on a temp socket
// and returns the exchange behind it and a client connection.
func serve(t *testing.T, buffer int) (*Exchange, *grpc.ClientConn) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	x := NewExchange(logger, buffer)
	s := rpc.NewServer(logger)
	NewService(x).Register(s)
	sock := filepath.Join(t.TempDir(), "gw.sock")
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return x, conn
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type received struct {
	ch   <-chan *cevents.Envelope
	errs <-chan error
}

func (r received) next(t *testing.T) *cevents.Envelope {
	t.Helper()
	select {
	case env := <-r.ch:
		return env
	case err := <-r.errs:
		t.Fatalf("subscription ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no event delivered within 5s")
	}
	return nil
}

func (r received) none(t *testing.T) {
	t.Helper()
	select {
	case env := <-r.ch:
		t.Fatalf("unexpected event delivered: %s %s", env.Namespace, env.Topic)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestSubscribersReceiveOnlyMatchingEvents(t *testing.T) {
	x, conn := serve(t, 0)
	remote := proxy.NewRemoteEvents(conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	sub := func(fs ...string) received {
		ch, errs := remote.Subscribe(ctx, fs...)
		return received{ch, errs}
	}
	byTopic := sub(`topic=="/x/y"`)
	byNamespace := sub(`namespace==a`)
	otherNamespace := sub(`namespace==b`)
	byEventField := sub(`event.id==c1`)
	byEitherFilter := sub(`topic=="/nope"`, `namespace==a,topic~="^/x/"`)
	all := sub()
	waitFor(t, "6 subscribers", func() bool { return x.Subscribers() == 6 })

	pctx := namespaces.WithNamespace(context.Background(), "a")
	if err := remote.Publish(pctx, "/x/y", &eventsapi.ContainerCreate{ID: "c1"}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	for name, r := range map[string]received{"topic": byTopic, "namespace": byNamespace, "event field": byEventField, "any of filters": byEitherFilter, "no filter": all} {
		env := r.next(t)
		if env.Namespace != "a" || env.Topic != "/x/y" || env.Timestamp.IsZero() {
			t.Errorf("%s subscriber got envelope ns=%q topic=%q ts=%v", name, env.Namespace, env.Topic, env.Timestamp)
		}
		ev, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			t.Fatalf("%s subscriber: decode event: %v", name, err)
		}
		if cc, ok := ev.(*eventsapi.ContainerCreate); !ok || cc.ID != "c1" {
			t.Errorf("%s subscriber got event %#v, want ContainerCreate c1", name, ev)
		}
	}
	otherNamespace.none(t)

	// A second event matches only the namespace filters.
	if err := remote.Publish(pctx, "/x/z", &eventsapi.ContainerCreate{ID: "c2"}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if env := byNamespace.next(t); env.Topic != "/x/z" {
		t.Errorf("namespace subscriber got %q, want /x/z", env.Topic)
	}
	byTopic.none(t)
	byEventField.none(t)
	otherNamespace.none(t)
}

func TestPublishRejectsBadInputLikeContainerd(t *testing.T) {
	_, conn := serve(t, 0)
	remote := proxy.NewRemoteEvents(conn)
	ev := &eventsapi.ContainerCreate{ID: "c1"}
	ctx := namespaces.WithNamespace(context.Background(), "a")

	for _, topic := range []string{"", "x/y", "/", "/x//y", "/x/y/", "/x/$"} {
		if err := remote.Publish(ctx, topic, ev); !errdefs.IsInvalidArgument(err) {
			t.Errorf("publish on topic %q: got %v, want InvalidArgument", topic, err)
		}
	}
	// containerd's NamespaceRequired answers FailedPrecondition when the
	// namespace is missing, InvalidArgument when it is malformed.
	if err := remote.Publish(context.Background(), "/x/y", ev); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("publish without namespace: got %v, want FailedPrecondition", err)
	}
	if err := remote.Publish(namespaces.WithNamespace(context.Background(), "bad/ns"), "/x/y", ev); !errdefs.IsInvalidArgument(err) {
		t.Errorf("publish in malformed namespace: got %v, want InvalidArgument", err)
	}
	if _, err := api.NewEventsClient(conn).Publish(ctx, &api.PublishRequest{Topic: "/x/y"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("publish without event: got %v, want InvalidArgument", err)
	}
}

func TestForwardKeepsEnvelopeAndValidatesIt(t *testing.T) {
	x, conn := serve(t, 0)
	remote := proxy.NewRemoteEvents(conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, errs := remote.Subscribe(ctx, `namespace==other`)
	r := received{ch, errs}
	waitFor(t, "subscriber", func() bool { return x.Subscribers() == 1 })

	any, err := typeurl.MarshalAny(&eventsapi.ImageCreate{Name: "img"})
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	// Forward needs no namespace in the caller's context: the envelope has it.
	if err := remote.Forward(context.Background(), &cevents.Envelope{Timestamp: ts, Namespace: "other", Topic: "/images/create", Event: any}); err != nil {
		t.Fatalf("forward: %v", err)
	}
	env := r.next(t)
	if !env.Timestamp.Equal(ts) || env.Topic != "/images/create" {
		t.Errorf("forwarded envelope changed: ts=%v topic=%q", env.Timestamp, env.Topic)
	}

	client := api.NewEventsClient(conn)
	good := func() *types.Envelope {
		return &types.Envelope{Timestamp: timestamppb.New(ts), Namespace: "other", Topic: "/t", Event: typeurl.MarshalProto(any)}
	}
	bad := map[string]func(*types.Envelope){
		"no timestamp":  func(e *types.Envelope) { e.Timestamp = nil },
		"no namespace":  func(e *types.Envelope) { e.Namespace = "" },
		"bad namespace": func(e *types.Envelope) { e.Namespace = "a b" },
		"bad topic":     func(e *types.Envelope) { e.Topic = "t" },
	}
	for name, mutate := range bad {
		e := good()
		mutate(e)
		if _, err := client.Forward(ctx, &api.ForwardRequest{Envelope: e}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("forward with %s: got %v, want InvalidArgument", name, err)
		}
	}
	if _, err := client.Forward(ctx, &api.ForwardRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("forward without envelope: got %v, want InvalidArgument", err)
	}
	r.none(t)
}

func TestSubscribeWithBadFilterIsInvalidArgument(t *testing.T) {
	_, conn := serve(t, 0)
	stream, err := api.NewEventsClient(conn).Subscribe(context.Background(), &api.SubscribeRequest{Filters: []string{`topic==`}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("subscribe with bad filter: got %v, want InvalidArgument", err)
	}
}

func TestEndedStreamRemovesSubscriber(t *testing.T) {
	x, conn := serve(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := api.NewEventsClient(conn).Subscribe(ctx, &api.SubscribeRequest{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "subscriber to register", func() bool { return x.Subscribers() == 1 })
	cancel()
	waitFor(t, "subscriber to be removed after its stream ended", func() bool { return x.Subscribers() == 0 })
}

func TestSlowSubscriberIsDroppedWithoutBlockingPublisher(t *testing.T) {
	x, conn := serve(t, 2)
	stream, err := api.NewEventsClient(conn).Subscribe(namespaces.WithNamespace(context.Background(), "a"), &api.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "subscriber", func() bool { return x.Subscribers() == 1 })

	// An in-process subscription that is never read fills its buffer of 2.
	stuck, err := x.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 3; i++ {
			if err := x.Publish(context.Background(), "a", "/x/y", wrapperspb.String("v")); err != nil {
				t.Errorf("publish: %v", err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("publisher blocked on a subscriber that does not read")
	}
	select {
	case <-stuck.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("stuck subscriber was not dropped")
	}
	if !errdefs.IsResourceExhausted(stuck.Err()) {
		t.Errorf("dropped subscriber's error = %v, want ResourceExhausted", stuck.Err())
	}
	if len(stuck.Events()) != 2 {
		t.Errorf("stuck subscriber buffered %d events, want 2", len(stuck.Events()))
	}

	// The gRPC subscriber, read promptly, got all three (it may also have
	// been dropped if the test machine is very slow; that is not an error
	// here, but a missing event before the end would be).
	for i := 0; i < 3; i++ {
		env, err := stream.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.ResourceExhausted {
			t.Skipf("reading subscriber also fell behind on this machine after %d events", i)
		}
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if env.Topic != "/x/y" {
			t.Errorf("recv %d: topic %q", i, env.Topic)
		}
	}
}

func TestEventFieldFiltersReadAnyProtoMessage(t *testing.T) {
	x := NewExchange(slog.New(slog.DiscardHandler), 0)
	match, err := x.Subscribe(`event.value=="v1"`)
	if err != nil {
		t.Fatal(err)
	}
	defer match.Close()
	ctx := context.Background()
	for _, v := range []string{"v0", "v1"} {
		if err := x.Publish(ctx, "a", "/t", wrapperspb.String(v)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(match.Events()); n != 1 {
		t.Fatalf("event.value filter matched %d events, want 1", n)
	}
}
