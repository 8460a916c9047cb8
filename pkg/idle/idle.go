// Package idle hands a process's free memory back to the system once it has
// gone quiet after work. Go's runtime returns freed heap pages slowly (its
// scavenger paces itself over minutes), so a service that has just moved a
// large blob or applied a layer would otherwise keep that memory resident
// while it idles; with a process per service, the graph would idle at the sum
// of every process's high-water mark.
package idle

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// Tracker counts calls in flight and notes when the last one ended.
type Tracker struct {
	inflight atomic.Int64
	busy     atomic.Bool // some call ran since the last trim
	last     atomic.Int64
}

// Process is the tracker of this process's server calls.
var Process = &Tracker{}

func (t *Tracker) begin() { t.inflight.Add(1); t.busy.Store(true) }

func (t *Tracker) end() {
	t.last.Store(time.Now().UnixNano())
	t.inflight.Add(-1)
}

// UnaryServerInterceptor tracks unary calls.
func (t *Tracker) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		t.begin()
		defer t.end()
		return h(ctx, req)
	}
}

// StreamServerInterceptor tracks streaming calls.
func (t *Tracker) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		t.begin()
		defer t.end()
		return h(srv, ss)
	}
}

// Trim returns free memory to the system whenever the process has had no
// call in flight for quiet after some work, until ctx ends. One trim costs a
// full collection, so it happens once per burst of work, not on a clock.
func (t *Tracker) Trim(ctx context.Context, quiet time.Duration) {
	tick := time.NewTicker(quiet / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if t.inflight.Load() > 0 || !t.busy.Load() || time.Since(time.Unix(0, t.last.Load())) < quiet {
			continue
		}
		t.busy.Store(false)
		// Two collections: what sync.Pools held (1 MiB read buffers,
		// say) survives the first as their victims, and goes with the
		// second, whose free pages are then returned.
		runtime.GC()
		debug.FreeOSMemory()
	}
}
