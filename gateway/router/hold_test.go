package router

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestRouterHeldCallWaitsAndSucceedsAfterRelease(t *testing.T) {
	f := newFixture(t, 5*time.Second)
	if err := f.router.Set("echo", f.backend, []string{"test.Echo"}, nil); err != nil {
		t.Fatal(err)
	}
	f.router.Ready()
	f.router.Hold("echo")

	done := make(chan error, 1)
	var out wrapperspb.StringValue
	go func() {
		done <- f.client.Invoke(context.Background(), "/test.Echo/Once", wrapperspb.String("x"), &out)
	}()
	select {
	case err := <-done:
		t.Fatalf("a call to a held service went through at once (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	f.router.Release("echo")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("held call failed after Release: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("held call still waiting 5s after Release")
	}
	if out.Value != "echo:x" {
		t.Errorf("got %q, want echo:x", out.Value)
	}
}

func TestRouterHeldCallGivesUpAfterRouteWait(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	_ = f.router.Set("echo", f.backend, []string{"test.Echo"}, nil)
	f.router.Ready()
	f.router.Hold("echo")
	defer f.router.Release("echo")
	start := time.Now()
	var out wrapperspb.StringValue
	err := f.client.Invoke(context.Background(), "/test.Echo/Once", wrapperspb.String("x"), &out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable once the route wait passed", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 5*time.Second {
		t.Errorf("gave up after %s, want about the route wait (300ms)", el)
	}
}

func TestRouterDrainWaitsForCallsInFlightWhileHeld(t *testing.T) {
	f := newFixture(t, 5*time.Second)
	_ = f.router.Set("echo", f.backend, []string{"test.Echo"}, nil)
	f.router.Ready()

	// A stream that has exchanged a message is in flight at the backend.
	cs, err := f.client.NewStream(context.Background(), bidi, "/test.Echo/Chat")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(wrapperspb.String("a")); err != nil {
		t.Fatal(err)
	}
	var got wrapperspb.StringValue
	if err := cs.RecvMsg(&got); err != nil {
		t.Fatal(err)
	}
	if n := f.router.InFlight("echo"); n != 1 {
		t.Fatalf("%d calls in flight, want 1", n)
	}

	f.router.Hold("echo")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err = f.router.Drain(ctx, "echo")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a call in flight returned %v, want a deadline error", err)
	}

	// The call in flight goes on while the service is held, and finishes.
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		drained <- f.router.Drain(ctx, "echo")
	}()
	if err := cs.SendMsg(wrapperspb.String("b")); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(&got); err != nil || got.Value != "echo:b" {
		t.Fatalf("in-flight stream broke while held: %q, %v", got.Value, err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(&got); !errors.Is(err, io.EOF) {
		t.Fatalf("end of in-flight stream: %v", err)
	}
	if err := <-drained; err != nil {
		t.Fatalf("Drain after the last call finished: %v", err)
	}
	f.router.Release("echo")
	var out wrapperspb.StringValue
	if err := f.client.Invoke(context.Background(), "/test.Echo/Once", wrapperspb.String("c"), &out); err != nil {
		t.Fatalf("call after Release: %v", err)
	}
	if n := f.router.InFlight("echo"); n != 0 {
		t.Errorf("%d calls in flight after every call ended, want 0", n)
	}
}
