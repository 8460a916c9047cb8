package imagetransfer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// progress reports how a transfer goes, in the events containerd's
// transfer service sends (ctr draws them as a tree of blobs under the
// image): a status line (an event with no name), then per blob "waiting",
// "downloading" or "uploading" with bytes so far, "complete" or "already
// exists", and for a layer "extracting" and "extracted". A nil *progress
// reports nothing.
type progress struct {
	pf transfer.ProgressFunc
	mu sync.Mutex // one event at a time, in order
}

func progressOf(pf transfer.ProgressFunc) *progress {
	if pf == nil {
		return nil
	}
	return &progress{pf: pf}
}

func (p *progress) send(ev transfer.Progress) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pf(ev)
}

// status sets the transfer's status line.
func (p *progress) status(event string) { p.send(transfer.Progress{Event: event}) }

// saved reports an image stored under name.
func (p *progress) saved(name string, desc ocispec.Descriptor) {
	p.send(transfer.Progress{Event: "saved", Name: name, Desc: &desc})
}

// tickEvery is how often the bytes moved so far are reported.
const tickEvery = 100 * time.Millisecond

type jobState int

const (
	jobWaiting jobState = iota
	jobMoving
	jobDone
	jobExtracting
	jobExtracted
)

type job struct {
	name    string
	parents []string
	desc    ocispec.Descriptor
	state   jobState
	moved   atomic.Int64 // bytes downloaded or uploaded
	applied atomic.Int64 // compressed bytes extracted
	sent    int64        // last count reported
}

// tracker follows the blobs of one transfer.
type tracker struct {
	p     *progress
	root  string
	state string // "downloading" or "uploading"

	mu      sync.Mutex
	jobs    map[digest.Digest]*job
	parents map[digest.Digest][]string

	stop chan struct{}
	done chan struct{}
}

// track starts following the blobs of a transfer of the image root; state
// names what moving a blob is. Close stops it.
func (p *progress) track(root, state string) *tracker {
	if p == nil {
		return nil
	}
	t := &tracker{
		p: p, root: root, state: state,
		jobs:    map[digest.Digest]*job{},
		parents: map[digest.Digest][]string{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go t.tick()
	return t
}

func (t *tracker) tick() {
	defer close(t.done)
	tk := time.NewTicker(tickEvery)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			t.report()
		case <-t.stop:
			t.report()
			return
		}
	}
}

// report sends the bytes moved or extracted since the last report.
func (t *tracker) report() {
	t.mu.Lock()
	var evs []transfer.Progress
	for _, j := range t.jobs {
		switch j.state {
		case jobWaiting, jobMoving:
			if n := j.moved.Load(); n > j.sent {
				j.sent, j.state = n, jobMoving
				evs = append(evs, t.event(j, t.state, n))
			}
		case jobExtracting:
			if n := j.applied.Load(); n > j.sent {
				j.sent = n
				evs = append(evs, t.event(j, "extracting", n))
			}
		}
	}
	t.mu.Unlock()
	for _, ev := range evs {
		t.p.send(ev)
	}
}

func (t *tracker) event(j *job, event string, n int64) transfer.Progress {
	desc := j.desc
	return transfer.Progress{Event: event, Name: j.name, Parents: j.parents, Progress: n, Total: desc.Size, Desc: &desc}
}

// Close reports what is left to report and stops.
func (t *tracker) Close() {
	if t == nil {
		return
	}
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	<-t.done
}

// children records the blobs parent refers to, so that each is drawn
// under it.
func (t *tracker) children(ctx context.Context, parent ocispec.Descriptor, children []ocispec.Descriptor) {
	if t == nil || len(children) == 0 {
		return
	}
	name := remotes.MakeRefKey(ctx, parent)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range children {
		t.parents[c.Digest] = append(t.parents[c.Digest], name)
	}
}

// add starts following a blob ("waiting").
func (t *tracker) add(ctx context.Context, desc ocispec.Descriptor) *job {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	j, ok := t.jobs[desc.Digest]
	if ok {
		t.mu.Unlock()
		return j
	}
	parents := t.parents[desc.Digest]
	if len(parents) == 0 {
		parents = []string{t.root}
	}
	j = &job{name: remotes.MakeRefKey(ctx, desc), parents: parents, desc: desc}
	t.jobs[desc.Digest] = j
	ev := t.event(j, "waiting", 0)
	t.mu.Unlock()
	t.p.send(ev)
	return j
}

// job returns the job of a blob, starting to follow it if need be.
func (t *tracker) job(ctx context.Context, desc ocispec.Descriptor) *job {
	return t.add(ctx, desc)
}

// set moves a blob's job to state and reports the event.
func (t *tracker) set(ctx context.Context, desc ocispec.Descriptor, state jobState, event string) {
	if t == nil {
		return
	}
	j := t.job(ctx, desc)
	t.mu.Lock()
	if j.state == state || (state < j.state && state != jobExtracting) {
		t.mu.Unlock()
		return
	}
	j.state, j.sent = state, 0
	ev := t.event(j, event, desc.Size)
	t.mu.Unlock()
	t.p.send(ev)
}

// moved returns what counts a blob's bytes as they are downloaded or
// uploaded.
func (t *tracker) moved(ctx context.Context, desc ocispec.Descriptor) func(int64) {
	if t == nil {
		return func(int64) {}
	}
	j := t.job(ctx, desc)
	return func(n int64) { j.moved.Add(n) }
}

// complete reports a blob all moved.
func (t *tracker) complete(ctx context.Context, desc ocispec.Descriptor) {
	t.set(ctx, desc, jobDone, "complete")
}

// exists reports a blob that was there already.
func (t *tracker) exists(ctx context.Context, desc ocispec.Descriptor) {
	t.set(ctx, desc, jobDone, "already exists")
}

// extracting reports a layer being unpacked from the content store and
// returns what counts its bytes.
func (t *tracker) extracting(ctx context.Context, desc ocispec.Descriptor) func(int64) {
	if t == nil {
		return func(int64) {}
	}
	j := t.job(ctx, desc)
	t.mu.Lock()
	j.state, j.sent = jobExtracting, 0
	t.mu.Unlock()
	return func(n int64) { j.applied.Store(n) }
}

// extracted reports a layer unpacked.
func (t *tracker) extracted(ctx context.Context, desc ocispec.Descriptor) {
	t.set(ctx, desc, jobExtracted, "extracted")
}
