// Package gc holds the metadata service's garbage collection machinery that
// does not depend on how records are stored: the tricolor mark over a graph
// of resources, and the scheduler that decides when a collection runs.
package gc

import (
	"context"
	"sync"
	"time"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Type is a kind of resource.
type Type uint8

// Resource kinds. Flat content is content reached through a flat lease: it
// is kept, but what it references is not kept on its account.
const (
	Content Type = iota + 1
	ContentFlat
	Ingest
	Image
	Lease
	Snapshot
	SnapshotFlat
	Container
)

// Node is one resource: its kind, namespace and key (for snapshots,
// "<snapshotter>/<key>").
type Node struct {
	Type      Type
	Namespace string
	Key       string
}

// Mark returns every node reachable from roots, following refs. refs is not
// called for nodes it has already seen.
func Mark(roots []Node, refs func(Node, func(Node)) error) (map[Node]struct{}, error) {
	reached := make(map[Node]struct{}, len(roots))
	grey := make([]Node, 0, len(roots))
	visit := func(n Node) {
		if _, ok := reached[n]; !ok {
			reached[n] = struct{}{}
			grey = append(grey, n)
		}
	}
	for _, r := range roots {
		visit(r)
	}
	for len(grey) > 0 {
		n := grey[len(grey)-1]
		grey = grey[:len(grey)-1]
		if err := refs(n, visit); err != nil {
			return nil, err
		}
	}
	return reached, nil
}

// Scheduler runs collections: soon after something became garbage, coalescing
// bursts of removals into one run, or at once when a caller waits for it.
type Scheduler struct {
	collect func(context.Context) error
	delay   time.Duration
	// ctx is what scheduled collections run and log with.
	ctx context.Context

	run     sync.Mutex // one collection at a time
	mu      sync.Mutex
	pending bool
	timer   *time.Timer
	closed  bool
}

// NewScheduler runs collect at most delay after Trigger(false). The
// collections it starts run with ctx, and log through it.
func NewScheduler(ctx context.Context, collect func(context.Context) error, delay time.Duration) *Scheduler {
	return &Scheduler{collect: collect, delay: delay, ctx: ctx}
}

// Trigger notes that something became garbage. With wait set it collects
// before returning, so a caller that asked for a synchronous removal sees
// the space freed: the collection runs with a context Synchronous says so
// of.
func (s *Scheduler) Trigger(wait bool) {
	if wait {
		if err := s.RunNow(context.WithValue(s.ctx, synchronousKey{}, true)); err != nil {
			logging.G(s.ctx).Error("garbage collection failed", "error", err)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.pending {
		return
	}
	s.pending = true
	s.timer = time.AfterFunc(s.delay, func() {
		s.mu.Lock()
		s.pending = false
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return
		}
		if err := s.RunNow(s.ctx); err != nil {
			logging.G(s.ctx).Error("garbage collection failed", "error", err)
		}
	})
}

// Every also collects every interval, until the returned stop is called.
func (s *Scheduler) Every(interval time.Duration) (stop func()) {
	t := time.NewTicker(interval)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-t.C:
				s.Trigger(false)
			case <-done:
				return
			}
		}
	}()
	return func() { t.Stop(); close(done) }
}

// RunNow collects now.
func (s *Scheduler) RunNow(ctx context.Context) error {
	s.run.Lock()
	defer s.run.Unlock()
	start := time.Now()
	err := s.collect(ctx)
	logging.G(ctx).Debug("garbage collected", "duration", time.Since(start), "error", err)
	return err
}

type synchronousKey struct{}

// Synchronous says whether a collection runs for a caller that waits for it
// (a synchronous removal), which is owed every part of it, even the parts
// a background collection leaves to run on after it returns.
func Synchronous(ctx context.Context) bool {
	v, _ := ctx.Value(synchronousKey{}).(bool)
	return v
}

// Close stops scheduled runs and waits for one in progress.
func (s *Scheduler) Close() {
	s.mu.Lock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.run.Lock()
	s.run.Unlock() //nolint:staticcheck // waits for a running collection
}
