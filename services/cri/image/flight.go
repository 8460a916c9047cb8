package image

import (
	"context"
	"sync"
)

// flightGroup runs one call per key at a time and gives its result to every
// caller that asked while it ran: concurrent pulls of one image share one
// download. Unlike x/sync/singleflight, the shared call does not run in its
// first caller's context: it goes on while any caller still waits, and is
// cancelled once every caller has gone.
type flightGroup[T any] struct {
	mu      sync.Mutex
	flights map[string]*flight[T]
}

type flight[T any] struct {
	done    chan struct{}
	val     T
	err     error
	waiters int
	cancel  context.CancelFunc
}

// Do runs fn for key unless a call for key is running, and returns that
// call's result. shared reports whether the result came from another
// caller's call.
func (g *flightGroup[T]) Do(ctx context.Context, key string, fn func(context.Context) (T, error)) (val T, shared bool, err error) {
	g.mu.Lock()
	if g.flights == nil {
		g.flights = map[string]*flight[T]{}
	}
	f, shared := g.flights[key]
	if shared {
		f.waiters++
	} else {
		// The call keeps the caller's values (namespace, trace) but not
		// its cancellation, which the waiter count takes over.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight[T]{done: make(chan struct{}), waiters: 1, cancel: cancel}
		g.flights[key] = f
		go func() {
			f.val, f.err = fn(fctx)
			g.mu.Lock()
			if g.flights[key] == f {
				delete(g.flights, key)
			}
			g.mu.Unlock()
			cancel()
			close(f.done)
		}()
	}
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.val, shared, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// A caller arriving now starts afresh rather than joining
			// a call that is being cancelled.
			if g.flights[key] == f {
				delete(g.flights, key)
			}
			f.cancel()
		}
		g.mu.Unlock()
		var zero T
		return zero, shared, ctx.Err()
	}
}
