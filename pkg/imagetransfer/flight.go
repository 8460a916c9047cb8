package imagetransfer

import (
	"context"
	"sync"
)

// flights are the downloads in progress, by namespace and digest: a pull
// that wants a blob another is downloading waits for that download instead
// of making its own.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done chan struct{}
	err  error
}

// start returns the flight of key and whether the caller is to make it
// (lead): then it must call finish.
func (f *flights) start(key string) (*flight, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.m[key]; ok {
		return fl, false
	}
	if f.m == nil {
		f.m = map[string]*flight{}
	}
	fl := &flight{done: make(chan struct{})}
	f.m[key] = fl
	return fl, true
}

// finish ends the flight of key with its outcome.
func (f *flights) finish(key string, fl *flight, err error) {
	f.mu.Lock()
	if f.m[key] == fl {
		delete(f.m, key)
	}
	f.mu.Unlock()
	fl.err = err
	close(fl.done)
}

// wait waits for a flight another caller makes.
func (fl *flight) wait(ctx context.Context) error {
	select {
	case <-fl.done:
		return fl.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// locks are mutexes by key, taken with a context: the unpack of a layer
// chain in one namespace and snapshotter happens once at a time, and a
// second pull of it waits for the first to commit it.
type locks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

// lock takes the lock of key; the returned function releases it.
func (l *locks) lock(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	k, ok := l.m[key]
	if !ok {
		k = &keyLock{ch: make(chan struct{}, 1)}
		l.m[key] = k
	}
	k.refs++
	l.mu.Unlock()
	select {
	case k.ch <- struct{}{}:
		return func() { <-k.ch; l.release(key, k) }, nil
	case <-ctx.Done():
		l.release(key, k)
		return nil, ctx.Err()
	}
}

func (l *locks) release(key string, k *keyLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k.refs--
	if k.refs == 0 {
		delete(l.m, key)
	}
}
