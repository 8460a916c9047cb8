package imagetransfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// blobFetch is one blob to download into the content store.
type blobFetch struct {
	fetcher transfer.Fetcher
	desc    ocispec.Descriptor
	// labels are set on the blob when this download commits it.
	labels map[string]string
	// live, when not nil, is opened once the blob is known to be
	// downloaded by this call, and is sent its bytes as they arrive (a
	// layer unpacked while it downloads). commit, when not nil, is called
	// once live has taken every byte, with what it applied, and returns
	// labels to add to the blob's.
	live   func() (LayerWriter, error)
	commit func(applied ocispec.Descriptor) (map[string]string, error)
	// moved counts the bytes downloaded.
	moved func(int64)
	// slot, when not nil, is called (maybe more than once) when this
	// fetch holds a download slot, waits for another's download, or
	// ends.
	slot func()
}

// fetchResult is how a blob came to be in the content store.
type fetchResult struct {
	// existed: the namespace had it, or another pull downloaded it; live
	// was not opened. The call's lease holds the blob either way.
	existed bool
}

// fetchBlob puts a blob in the content store, downloading it unless the
// namespace has it; a download another pull is making of it is waited for
// rather than made twice.
func (e *Engine) fetchBlob(ctx context.Context, f blobFetch) (fetchResult, error) {
	ns, _ := namespaces.Namespace(ctx)
	key := ns + "/" + f.desc.Digest.String()
	if f.slot != nil {
		// However it ends, the caller learns it is under way.
		defer f.slot()
	}
	for {
		fl, lead := e.blobs.start(key)
		if !lead {
			// Another pull's download holds the slot.
			if f.slot != nil {
				f.slot()
			}
			if err := fl.wait(ctx); err != nil && ctx.Err() != nil {
				return fetchResult{}, err
			}
			// Done (or failed: then this call tries itself); either
			// way the next round finds out.
			continue
		}
		res, err := e.download(ctx, f)
		e.blobs.finish(key, fl, err)
		return res, err
	}
}

// chunkSize is what one message carries to the content store and to the
// snapshotter.
const chunkSize = 1 << 20

// download makes one download of f. A blob the namespace has already is
// not downloaded: opening its writer adds it to the call's lease.
func (e *Engine) download(ctx context.Context, f blobFetch) (res fetchResult, err error) {
	if err := e.downloads.Acquire(ctx, 1); err != nil {
		return res, err
	}
	defer e.downloads.Release(1)
	if f.slot != nil {
		f.slot()
	}

	ref := remotes.MakeRefKey(ctx, f.desc)
	cw, err := content.OpenWriter(ctx, e.stores.Content, content.WithRef(ref), content.WithDescriptor(f.desc))
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return fetchResult{existed: true}, nil
		}
		return res, fmt.Errorf("open content writer for %s: %w", f.desc.Digest, err)
	}
	committed := false
	defer func() {
		cw.Close()
		if !committed {
			// No half-written ingest is left behind.
			_ = e.stores.Content.Abort(context.WithoutCancel(ctx), ref)
		}
	}()
	if st, err := cw.Status(); err == nil && st.Offset > 0 {
		// A live apply needs the blob from its first byte: an ingest
		// a failed pull left is started over.
		if err := cw.Truncate(0); err != nil {
			return res, fmt.Errorf("restart ingest of %s: %w", f.desc.Digest, err)
		}
	}
	rc, err := f.fetcher.Fetch(ctx, f.desc)
	if err != nil {
		return res, fmt.Errorf("fetch %s: %w", f.desc.Digest, err)
	}
	defer rc.Close()

	var live LayerWriter
	if f.live != nil {
		if live, err = f.live(); err != nil {
			return res, err
		}
		defer func() {
			if err != nil {
				live.Abort()
			}
		}()
	}
	n, err := copyTo(ctx, rc, f.moved, cw, live)
	if err != nil {
		return res, fmt.Errorf("download %s: %w", f.desc.Digest, err)
	}
	if f.desc.Size >= 0 && n != f.desc.Size {
		return res, fmt.Errorf("download %s: %d bytes, its descriptor says %d: %w", f.desc.Digest, n, f.desc.Size, errdefs.ErrFailedPrecondition)
	}
	labels := f.labels
	if live != nil {
		applied, err := live.Commit()
		if err != nil {
			return res, err
		}
		if f.commit != nil {
			more, err := f.commit(applied)
			if err != nil {
				return res, err
			}
			labels = mergeLabels(labels, more)
		}
	}
	if err := cw.Commit(ctx, n, f.desc.Digest, content.WithLabels(labels)); err != nil && !errdefs.IsAlreadyExists(err) {
		return res, fmt.Errorf("commit %s: %w", f.desc.Digest, err)
	}
	committed = true
	return res, nil
}

func mergeLabels(a, b map[string]string) map[string]string {
	if len(b) == 0 {
		return a
	}
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// copyTo reads r to its end and writes every byte to each of the writers
// not nil, each from its own goroutine so that a slow one (an apply) does
// not hold up a fast one (the content store) by more than a few chunks.
// It returns the bytes read; a writer's failure stops the copy.
func copyTo(ctx context.Context, r io.Reader, moved func(int64), ws ...io.Writer) (int64, error) {
	const inFlight = 4
	type chunk struct {
		b    []byte
		refs sync.WaitGroup
	}
	var (
		failOnce sync.Once
		failed   = make(chan struct{})
		sinkErr  error
	)
	fail := func(err error) {
		failOnce.Do(func() { sinkErr = err; close(failed) })
	}
	free := make(chan *chunk, inFlight)
	for range inFlight {
		free <- &chunk{b: make([]byte, chunkSize)}
	}
	var (
		sinks []chan *chunk
		wg    sync.WaitGroup
	)
	for _, w := range ws {
		if w == nil {
			continue
		}
		ch := make(chan *chunk, inFlight)
		sinks = append(sinks, ch)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				select {
				case <-failed:
				default:
					if _, err := w.Write(c.b); err != nil {
						fail(err)
					}
				}
				c.refs.Done()
			}
		}()
	}
	var n int64
	readErr := func() error {
		for {
			var c *chunk
			select {
			case c = <-free:
			case <-failed:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
			m, err := io.ReadFull(r, c.b[:cap(c.b)])
			if m > 0 {
				n += int64(m)
				if moved != nil {
					moved(int64(m))
				}
				c.b = c.b[:m]
				c.refs.Add(len(sinks))
				for _, s := range sinks {
					s <- c
				}
				go func() { c.refs.Wait(); free <- c }()
			} else {
				free <- c
			}
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				return nil
			case err != nil:
				return err
			}
		}
	}()
	for _, s := range sinks {
		close(s)
	}
	wg.Wait()
	if sinkErr != nil {
		return n, sinkErr
	}
	return n, readErr
}
