// Package memstore is an in-memory content.Store for tests: blobs in a map,
// one buffer per ingest, no namespaces. It stands in for the content
// service where a test wants neither a daemon nor containerd's on-disk
// store, and it records what it was asked to delete or abort so that a test
// can check both sides of a garbage collection.
//
// It behaves like containerd's local store where tests can tell: a commit
// that fails its size or digest check keeps the ingest for the client to
// fix, an aborted ingest refuses later writes and commits, and missing
// blobs and ingests are errdefs.ErrNotFound. Filters on Walk and
// ListStatuses are ignored.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Store is the in-memory content.Store. The zero value is not usable; call
// New.
type Store struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte
	infos   map[digest.Digest]content.Info
	ingests map[string]*writer

	deleted []digest.Digest
	aborted []string

	beforeWriter func(ref string)
}

var _ content.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{
		blobs:   map[digest.Digest][]byte{},
		infos:   map[digest.Digest]content.Info{},
		ingests: map[string]*writer{},
	}
}

// Put stores a blob directly, as if some earlier run had committed it, and
// returns its digest.
func (s *Store) Put(b []byte) digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := digest.FromBytes(b)
	now := time.Now()
	s.blobs[d] = bytes.Clone(b)
	s.infos[d] = content.Info{Digest: d, Size: int64(len(b)), CreatedAt: now, UpdatedAt: now}
	return d
}

// Has reports whether the blob d is stored.
func (s *Store) Has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blobs[d]
	return ok
}

// Bytes returns a copy of the blob d, and whether it is stored.
func (s *Store) Bytes(d digest.Digest) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[d]
	return bytes.Clone(b), ok
}

// HasIngest reports whether an ingest named ref is open.
func (s *Store) HasIngest(ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ingests[ref]
	return ok
}

// WasAborted reports whether the ingest ref was ever aborted.
func (s *Store) WasAborted(ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.aborted, ref)
}

// Deleted lists the blobs deleted so far, in order.
func (s *Store) Deleted() []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.deleted)
}

// Aborted lists the ingests aborted so far, in order.
func (s *Store) Aborted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.aborted)
}

// BeforeWriter sets fn to run at the start of every Writer call, before the
// store looks at its blobs or ingests and without its lock held: a test uses
// it to land another client's commit between a caller's checks and its
// Writer call. nil removes the hook.
func (s *Store) BeforeWriter(fn func(ref string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beforeWriter = fn
}

func (s *Store) Info(_ context.Context, d digest.Digest) (content.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, ok := s.infos[d]
	if !ok {
		return content.Info{}, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	return info, nil
}

// Update changes labels as containerd's stores do: no field paths replace
// them all, "labels" too, and "labels.<key>" sets (or, given an empty
// value, removes) one key.
func (s *Store) Update(_ context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.infos[info.Digest]
	if !ok {
		return content.Info{}, fmt.Errorf("blob %s: %w", info.Digest, errdefs.ErrNotFound)
	}
	labels := cloneLabels(cur.Labels)
	if len(fieldpaths) == 0 {
		labels = cloneLabels(info.Labels)
	}
	for _, p := range fieldpaths {
		if key, ok := strings.CutPrefix(p, "labels."); ok {
			if v := info.Labels[key]; v != "" {
				labels[key] = v
			} else {
				delete(labels, key)
			}
			continue
		}
		if p != "labels" {
			return content.Info{}, fmt.Errorf("update field %q of blob %s: %w", p, info.Digest, errdefs.ErrInvalidArgument)
		}
		labels = cloneLabels(info.Labels)
	}
	cur.Labels = labels
	cur.UpdatedAt = time.Now()
	s.infos[info.Digest] = cur
	return cur, nil
}

func cloneLabels(l map[string]string) map[string]string {
	out := make(map[string]string, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}

// Walk calls fn for every blob, without the lock held, so that fn may call
// back into the store.
func (s *Store) Walk(_ context.Context, fn content.WalkFunc, _ ...string) error {
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

func (s *Store) Delete(_ context.Context, d digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[d]; !ok {
		return fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	delete(s.blobs, d)
	delete(s.infos, d)
	s.deleted = append(s.deleted, d)
	return nil
}

type reader struct{ *bytes.Reader }

func (reader) Close() error { return nil }

func (s *Store) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return reader{bytes.NewReader(b)}, nil
}

func (s *Store) Status(_ context.Context, ref string) (content.Status, error) {
	s.mu.Lock()
	w, ok := s.ingests[ref]
	s.mu.Unlock()
	if !ok {
		return content.Status{}, fmt.Errorf("ingest %s: %w", ref, errdefs.ErrNotFound)
	}
	return w.Status()
}

func (s *Store) ListStatuses(context.Context, ...string) ([]content.Status, error) {
	s.mu.Lock()
	ws := make([]*writer, 0, len(s.ingests))
	for _, w := range s.ingests {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	var out []content.Status
	for _, w := range ws {
		st, _ := w.Status()
		out = append(out, st)
	}
	return out, nil
}

func (s *Store) Abort(_ context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.ingests[ref]
	if !ok {
		return fmt.Errorf("ingest %s: %w", ref, errdefs.ErrNotFound)
	}
	w.mu.Lock()
	w.aborted = true
	w.mu.Unlock()
	delete(s.ingests, ref)
	s.aborted = append(s.aborted, ref)
	return nil
}

// Writer starts the ingest named by the ref option, or resumes it. As in
// containerd's local store, one writer at a time holds an ingest: another
// Writer call for it is errdefs.ErrUnavailable until the first is closed.
func (s *Store) Writer(_ context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if wo.Ref == "" {
		return nil, fmt.Errorf("ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	s.mu.Lock()
	hook := s.beforeWriter
	s.mu.Unlock()
	if hook != nil {
		hook(wo.Ref)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if wo.Desc.Digest != "" {
		if _, ok := s.blobs[wo.Desc.Digest]; ok {
			return nil, fmt.Errorf("blob %s: %w", wo.Desc.Digest, errdefs.ErrAlreadyExists)
		}
	}
	if w, ok := s.ingests[wo.Ref]; ok {
		if w.open {
			return nil, fmt.Errorf("ingest %s is in use by another writer: %w", wo.Ref, errdefs.ErrUnavailable)
		}
		w.open = true
		return w, nil
	}
	now := time.Now()
	w := &writer{s: s, ref: wo.Ref, total: wo.Desc.Size, expected: wo.Desc.Digest, started: now, updated: now, open: true}
	s.ingests[wo.Ref] = w
	return w, nil
}

// writer is one ingest.
type writer struct {
	s        *Store
	ref      string
	total    int64
	expected digest.Digest
	started  time.Time
	open     bool // a writer holds the ingest; guarded by s.mu

	mu      sync.Mutex
	buf     bytes.Buffer
	updated time.Time
	aborted bool // an aborted ingest is gone: writes and commits fail
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.aborted {
		return 0, fmt.Errorf("ingest %s was aborted: %w", w.ref, errdefs.ErrNotFound)
	}
	w.updated = time.Now()
	return w.buf.Write(p)
}

// Close lets another Writer call take the ingest.
func (w *writer) Close() error {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.open = false
	return nil
}

func (w *writer) Digest() digest.Digest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return digest.FromBytes(w.buf.Bytes())
}

func (w *writer) Truncate(size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if size < 0 || size > int64(w.buf.Len()) {
		return fmt.Errorf("truncate to %d: %w", size, errdefs.ErrInvalidArgument)
	}
	w.buf.Truncate(int(size))
	w.updated = time.Now()
	return nil
}

func (w *writer) Status() (content.Status, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return content.Status{Ref: w.ref, Offset: int64(w.buf.Len()), Total: w.total, Expected: w.expected, StartedAt: w.started, UpdatedAt: w.updated}, nil
}

// Commit stores what was written. As in containerd's local store, a commit
// that fails its size or digest check leaves the ingest for the client to
// fix; one that finds the blob already stored ends the ingest.
func (w *writer) Commit(_ context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	w.mu.Lock()
	b := bytes.Clone(w.buf.Bytes())
	aborted := w.aborted
	w.mu.Unlock()
	if aborted {
		return fmt.Errorf("ingest %s was aborted: %w", w.ref, errdefs.ErrNotFound)
	}
	d := digest.FromBytes(b)
	if size > 0 && size != int64(len(b)) {
		return fmt.Errorf("commit %s: size %d, expected %d: %w", w.ref, len(b), size, errdefs.ErrFailedPrecondition)
	}
	if expected != "" && expected != d {
		return fmt.Errorf("commit %s: digest %s, expected %s: %w", w.ref, d, expected, errdefs.ErrFailedPrecondition)
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	delete(w.s.ingests, w.ref)
	if _, ok := w.s.blobs[d]; ok {
		return fmt.Errorf("blob %s: %w", d, errdefs.ErrAlreadyExists)
	}
	now := time.Now()
	info := content.Info{Digest: d, Size: int64(len(b)), CreatedAt: now, UpdatedAt: now}
	for _, o := range opts {
		if err := o(&info); err != nil {
			return err
		}
	}
	w.s.blobs[d] = b
	w.s.infos[d] = info
	return nil
}
