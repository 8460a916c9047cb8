package metadb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// memStore stands in for the content service: an unnamespaced blob store in
// memory that records what the metadata store asked it to delete or abort,
// so tests can check both sides of a collection.
type memStore struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte
	infos   map[digest.Digest]content.Info
	ingests map[string]*memWriter

	deleted []digest.Digest
	aborted []string

	// beforeWriter, when set, runs at the start of Writer (without the
	// lock held); tests use it to stage races.
	beforeWriter func(ref string)
}

func newMemStore() *memStore {
	return &memStore{
		blobs:   map[digest.Digest][]byte{},
		infos:   map[digest.Digest]content.Info{},
		ingests: map[string]*memWriter{},
	}
}

// put stores a blob directly, as if some earlier run had committed it.
func (s *memStore) put(b []byte) digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := digest.FromBytes(b)
	s.blobs[d] = bytes.Clone(b)
	s.infos[d] = content.Info{Digest: d, Size: int64(len(b)), CreatedAt: time.Now(), UpdatedAt: time.Now()}
	return d
}

func (s *memStore) has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blobs[d]
	return ok
}

func (s *memStore) hasIngest(ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ingests[ref]
	return ok
}

func (s *memStore) wasAborted(ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.aborted, ref)
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
	cur.Labels = info.Labels
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
	if _, ok := s.blobs[d]; !ok {
		return fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	delete(s.blobs, d)
	delete(s.infos, d)
	s.deleted = append(s.deleted, d)
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
	w, ok := s.ingests[ref]
	s.mu.Unlock()
	if !ok {
		return content.Status{}, fmt.Errorf("ingest %s: %w", ref, errdefs.ErrNotFound)
	}
	return w.Status()
}

func (s *memStore) ListStatuses(context.Context, ...string) ([]content.Status, error) {
	s.mu.Lock()
	ws := make([]*memWriter, 0, len(s.ingests))
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

func (s *memStore) Abort(_ context.Context, ref string) error {
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

func (s *memStore) Writer(_ context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if wo.Ref == "" {
		return nil, fmt.Errorf("ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if s.beforeWriter != nil {
		s.beforeWriter(wo.Ref)
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

// memWriter is one ingest. As in containerd's local store, a commit that
// fails its size or digest check leaves the ingest for the client to fix.
type memWriter struct {
	s        *memStore
	ref      string
	mu       sync.Mutex
	buf      bytes.Buffer
	total    int64
	expected digest.Digest
	started  time.Time
	aborted  bool // an aborted ingest is gone: writes and commits fail
}

func (w *memWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.aborted {
		return 0, fmt.Errorf("ingest %s was aborted: %w", w.ref, errdefs.ErrNotFound)
	}
	return w.buf.Write(p)
}

func (w *memWriter) Close() error { return nil }

func (w *memWriter) Digest() digest.Digest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return digest.FromBytes(w.buf.Bytes())
}

func (w *memWriter) Truncate(size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if size < 0 || size > int64(w.buf.Len()) {
		return fmt.Errorf("truncate to %d: %w", size, errdefs.ErrInvalidArgument)
	}
	w.buf.Truncate(int(size))
	return nil
}

func (w *memWriter) Status() (content.Status, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return content.Status{Ref: w.ref, Offset: int64(w.buf.Len()), Total: w.total, Expected: w.expected, StartedAt: w.started, UpdatedAt: time.Now()}, nil
}

func (w *memWriter) Commit(_ context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
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

// --- helpers shared by this package's tests ---

func newTestDB(t *testing.T) (*DB, *memStore) {
	t.Helper()
	be := newMemStore()
	db, err := Open(t.TempDir(), be, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open meta.db: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db, be
}

func nsCtx(ns string) context.Context {
	return namespaces.WithNamespace(context.Background(), ns)
}

func leaseCtx(ctx context.Context, id string) context.Context {
	return leases.WithLease(ctx, id)
}

// writeBlob writes b through the namespaced store with its expected digest
// and returns the digest. An AlreadyExists answer counts as success, as it
// does for containerd's clients.
func writeBlob(t *testing.T, ctx context.Context, cs content.Store, b []byte, labels map[string]string) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := tryWriteBlob(ctx, cs, "ref-"+d.Encoded()[:12], b, d, labels); err != nil && !errdefs.IsAlreadyExists(err) {
		t.Fatalf("write %s: %v", d, err)
	}
	return d
}

func tryWriteBlob(ctx context.Context, cs content.Store, ref string, b []byte, expected digest.Digest, labels map[string]string) error {
	desc := ocispec.Descriptor{Digest: expected, Size: int64(len(b))}
	w, err := cs.Writer(ctx, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		return err
	}
	defer w.Close()
	var opts []content.Opt
	if labels != nil {
		opts = append(opts, content.WithLabels(labels))
	}
	// As containerd's clients write: what the writer's status reports as
	// written already is not sent again.
	return content.Copy(ctx, w, bytes.NewReader(b), int64(len(b)), expected, opts...)
}

func readAll(t *testing.T, ctx context.Context, cs content.Store, d digest.Digest) ([]byte, error) {
	t.Helper()
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	return io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
}

// wantErr checks err against an errdefs predicate and names the class in
// the failure message.
func wantErr(t *testing.T, what string, err error, is func(error) bool, class string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %s", what, class)
	}
	if !is(err) {
		t.Fatalf("%s: error %v (%T), want %s", what, err, errors.Unwrap(err), class)
	}
}
