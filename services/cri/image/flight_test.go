package image

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConcurrentCallsOfOneKeyShareOneRun(t *testing.T) {
	var g flightGroup[int]
	var runs atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context) (int, error) {
		runs.Add(1)
		<-release
		return 42, nil
	}
	const n = 8
	var wg sync.WaitGroup
	results := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _, err := g.Do(context.Background(), "k", fn)
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		}()
	}
	// Let every caller join before the run finishes.
	waitUntil(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		f := g.flights["k"]
		return f != nil && f.waiters == n
	})
	close(release)
	wg.Wait()
	if runs.Load() != 1 {
		t.Fatalf("%d concurrent calls ran fn %d times, want once", n, runs.Load())
	}
	for i, v := range results {
		if v != 42 {
			t.Fatalf("caller %d got %d, want 42", i, v)
		}
	}
}

func TestSharedCallSurvivesItsFirstCallerLeaving(t *testing.T) {
	var g flightGroup[string]
	release := make(chan struct{})
	fn := func(ctx context.Context) (string, error) {
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	first, cancelFirst := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, _, err := g.Do(first, "k", fn); firstErr <- err }()
	waitUntil(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.flights["k"] != nil })

	second := make(chan string, 1)
	go func() { v, _, _ := g.Do(context.Background(), "k", fn); second <- v }()
	waitUntil(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.flights["k"].waiters == 2 })

	cancelFirst()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled first caller got %v, want context.Canceled", err)
	}
	close(release)
	if v := <-second; v != "done" {
		t.Fatalf("second caller got %q after the first left, want the shared result", v)
	}
}

func TestCallIsCancelledWhenEveryCallerLeaves(t *testing.T) {
	var g flightGroup[int]
	cancelled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _, _ = g.Do(ctx, "k", func(ctx context.Context) (int, error) {
			<-ctx.Done()
			close(cancelled)
			return 0, ctx.Err()
		})
	}()
	waitUntil(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.flights["k"] != nil })
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the call ran on after its only caller left")
	}
	// A new caller starts a fresh call rather than joining the cancelled one.
	v, shared, err := g.Do(context.Background(), "k", func(context.Context) (int, error) { return 7, nil })
	if err != nil || v != 7 || shared {
		t.Fatalf("call after cancellation: %d, shared %v, %v; want a fresh 7", v, shared, err)
	}
}

func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
