package testimage_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// memStore is the smallest content.Store that containerd's importer accepts:
// blobs in a map, one buffer per ingest. It exists only so the import test
// needs neither a daemon nor containerd's on-disk store.
type memStore struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte
	infos   map[digest.Digest]content.Info
	ingests map[string]*memWriter
}

func newMemStore() *memStore {
	return &memStore{blobs: map[digest.Digest][]byte{}, infos: map[digest.Digest]content.Info{}, ingests: map[string]*memWriter{}}
}

func (s *memStore) Info(_ context.Context, d digest.Digest) (content.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, ok := s.infos[d]
	if !ok {
		return content.Info{}, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	return info, nil
}

func (s *memStore) Update(_ context.Context, info content.Info, _ ...string) (content.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.infos[info.Digest]
	if !ok {
		return content.Info{}, fmt.Errorf("blob %s: %w", info.Digest, errdefs.ErrNotFound)
	}
	if cur.Labels == nil {
		cur.Labels = map[string]string{}
	}
	for k, v := range info.Labels {
		cur.Labels[k] = v
	}
	s.infos[info.Digest] = cur
	return cur, nil
}

func (s *memStore) Walk(_ context.Context, fn content.WalkFunc, _ ...string) error {
	s.mu.Lock()
	infos := make([]content.Info, 0, len(s.infos))
	for _, i := range s.infos {
		infos = append(infos, i)
	}
	s.mu.Unlock()
	for _, i := range infos {
		if err := fn(i); err != nil {
			return err
		}
	}
	return nil
}

func (s *memStore) Delete(_ context.Context, d digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.blobs, d)
	delete(s.infos, d)
	return nil
}

type memReader struct{ *bytes.Reader }

func (memReader) Close() error { return nil }

func (s *memStore) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return memReader{bytes.NewReader(b)}, nil
}

func (s *memStore) Status(_ context.Context, ref string) (content.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.ingests[ref]
	if !ok {
		return content.Status{}, fmt.Errorf("ingest %s: %w", ref, errdefs.ErrNotFound)
	}
	return w.Status()
}

func (s *memStore) ListStatuses(context.Context, ...string) ([]content.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []content.Status
	for _, w := range s.ingests {
		st, _ := w.Status()
		out = append(out, st)
	}
	return out, nil
}

func (s *memStore) Abort(_ context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ingests, ref)
	return nil
}

func (s *memStore) Writer(_ context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if wo.Desc.Digest != "" {
		if _, ok := s.blobs[wo.Desc.Digest]; ok {
			return nil, fmt.Errorf("blob %s: %w", wo.Desc.Digest, errdefs.ErrAlreadyExists)
		}
	}
	if w, ok := s.ingests[wo.Ref]; ok {
		return w, nil
	}
	w := &memWriter{s: s, ref: wo.Ref, total: wo.Desc.Size, expected: wo.Desc.Digest, started: time.Now()}
	s.ingests[wo.Ref] = w
	return w, nil
}

type memWriter struct {
	s        *memStore
	ref      string
	buf      bytes.Buffer
	total    int64
	expected digest.Digest
	started  time.Time
}

func (w *memWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }
func (w *memWriter) Close() error                { return nil }
func (w *memWriter) Digest() digest.Digest       { return digest.FromBytes(w.buf.Bytes()) }
func (w *memWriter) Truncate(size int64) error {
	w.buf.Truncate(int(size))
	return nil
}

func (w *memWriter) Status() (content.Status, error) {
	return content.Status{Ref: w.ref, Offset: int64(w.buf.Len()), Total: w.total, Expected: w.expected, StartedAt: w.started, UpdatedAt: time.Now()}, nil
}

func (w *memWriter) Commit(_ context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	delete(w.s.ingests, w.ref)
	b := bytes.Clone(w.buf.Bytes())
	d := digest.FromBytes(b)
	if size > 0 && size != int64(len(b)) {
		return fmt.Errorf("commit %s: size %d, expected %d: %w", w.ref, len(b), size, errdefs.ErrFailedPrecondition)
	}
	if expected != "" && expected != d {
		return fmt.Errorf("commit %s: digest %s, expected %s: %w", w.ref, d, expected, errdefs.ErrFailedPrecondition)
	}
	if _, ok := w.s.blobs[d]; ok {
		return fmt.Errorf("blob %s: %w", d, errdefs.ErrAlreadyExists)
	}
	info := content.Info{Digest: d, Size: int64(len(b)), CreatedAt: time.Now(), UpdatedAt: time.Now()}
	for _, o := range opts {
		if err := o(&info); err != nil {
			return err
		}
	}
	w.s.blobs[d] = b
	w.s.infos[d] = info
	return nil
}
