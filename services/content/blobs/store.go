// Package blobs is a digest-addressed blob store on local disk with
// resumable ingests, the storage behind Flotilla's content service. It
// implements containerd's content.Store.
//
// Layout under the root:
//
//	blobs/<alg>/<encoded>    committed blobs, read-only, named by digest
//	ingest/<sha256(ref)>/    one directory per ingest (a resumable write)
//	  data                   the bytes written so far
//	  status                 JSON: ref, total, expected, startedAt, updatedAt
//	meta.db                  bbolt: labels and times of blobs (see meta.go)
//
// An ingest directory is named by the hash of its ref, so no ref, whatever it
// contains, can name a path outside ingest/.
package blobs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Store is the blob store. It is safe for concurrent use; only one process
// may use a root at a time.
type Store struct {
	root string
	meta *metaDB

	mu      sync.Mutex
	writers map[string]*writer // active ingests by ref: the ref lock
	digests keyedMutex         // orders commit, delete and update of one digest
	// held counts, by digest, the commits whose record in a namespace is
	// still being written (see Hold).
	held map[digest.Digest]int
}

var _ content.Store = (*Store)(nil)

// Open opens (creating if needed) the store at root.
func Open(root string) (*Store, error) {
	for _, d := range []string{root, filepath.Join(root, "blobs"), filepath.Join(root, "ingest")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	// Commits fsync blobs/<alg>; the directories above it must be durable
	// too or a crash can lose every blob at once.
	for _, d := range []string{filepath.Dir(root), root, filepath.Join(root, "blobs")} {
		if err := syncDir(d); err != nil {
			return nil, err
		}
	}
	meta, err := openMeta(filepath.Join(root, "meta.db"))
	if err != nil {
		return nil, err
	}
	return &Store{
		root:    root,
		meta:    meta,
		writers: map[string]*writer{},
		digests: keyedMutex{held: map[digest.Digest]*keyedEntry{}},
		held:    map[digest.Digest]int{},
	}, nil
}

// Hold keeps d from Delete until release is called. A namespaced commit
// holds its blob from before the bytes are committed here until metadata has
// recorded them: in between, metadata's collector sees a blob no namespace
// records, and must not take it. The hold lives in memory only: after a
// crash, the commit it guarded never answered its client, and the blob is
// rightly collected unless it was recorded.
func (s *Store) Hold(d digest.Digest) (release func()) {
	// Under the digest's lock: a Delete already past its check finishes
	// before the hold is taken, so a blob seen after Hold stays.
	unlock := s.digests.lock(d)
	s.mu.Lock()
	s.held[d]++
	s.mu.Unlock()
	unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.held[d]--; s.held[d] <= 0 {
				delete(s.held, d)
			}
			s.mu.Unlock()
		})
	}
}

// Close releases the store. Ingests keep what was written to them, to be
// resumed by the next process; writers must not be used after Close.
func (s *Store) Close() error {
	return s.meta.close()
}

// Root is the directory the store lives in.
func (s *Store) Root() string { return s.root }

func (s *Store) blobPath(d digest.Digest) string {
	return filepath.Join(s.root, "blobs", d.Algorithm().String(), d.Encoded())
}

// Info returns what the store knows of a committed blob.
func (s *Store) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	if err := validateDigest(d); err != nil {
		return content.Info{}, err
	}
	fi, err := os.Stat(s.blobPath(d))
	if err != nil {
		return content.Info{}, notFound(err, "content %s", d)
	}
	return s.info(d, fi)
}

func (s *Store) info(d digest.Digest, fi fs.FileInfo) (content.Info, error) {
	info := content.Info{Digest: d, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime()}
	rec, err := s.meta.get(d)
	switch {
	case errors.Is(err, errNoMetaRecord):
	case err != nil:
		return content.Info{}, fmt.Errorf("content %s: metadata: %w", d, err)
	default:
		info.CreatedAt, info.UpdatedAt, info.Labels = rec.createdAt, rec.updatedAt, rec.labels
	}
	return info, nil
}

// Update changes the labels of a blob, the only mutable part of it. With no
// field paths all labels are replaced; "labels" does the same, and
// "labels.<key>" sets (or, with an empty value, removes) one key.
func (s *Store) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	if err := validateDigest(info.Digest); err != nil {
		return content.Info{}, err
	}
	replace := len(fieldpaths) == 0
	var keys []string
	for _, p := range fieldpaths {
		switch {
		case p == "labels":
			replace = true
		case len(p) > len("labels.") && p[:len("labels.")] == "labels.":
			keys = append(keys, p[len("labels."):])
		default:
			return content.Info{}, fmt.Errorf("cannot update field %q of content %s: %w", p, info.Digest, errdefs.ErrInvalidArgument)
		}
	}
	if err := ValidateLabels(info.Labels); err != nil {
		return content.Info{}, err
	}

	unlock := s.digests.lock(info.Digest)
	defer unlock()
	fi, err := os.Stat(s.blobPath(info.Digest))
	if err != nil {
		return content.Info{}, notFound(err, "content %s", info.Digest)
	}
	now := time.Now()
	rec, err := s.meta.update(info.Digest, metaRecord{createdAt: fi.ModTime()}, func(r *metaRecord) {
		r.updatedAt = now
		if replace {
			r.labels = nil
			for k, v := range info.Labels {
				setLabel(&r.labels, k, v)
			}
		}
		for _, k := range keys {
			setLabel(&r.labels, k, info.Labels[k])
		}
	})
	if err != nil {
		return content.Info{}, fmt.Errorf("update content %s: %w", info.Digest, err)
	}
	return content.Info{
		Digest:    info.Digest,
		Size:      fi.Size(),
		CreatedAt: rec.createdAt,
		UpdatedAt: rec.updatedAt,
		Labels:    rec.labels,
	}, nil
}

func setLabel(m *map[string]string, k, v string) {
	if v == "" {
		delete(*m, k)
		return
	}
	if *m == nil {
		*m = map[string]string{}
	}
	(*m)[k] = v
}

// Walk calls fn for every committed blob matching any of the filters, in
// digest order within each algorithm. Blobs committed or deleted during the
// walk may or may not be seen.
func (s *Store) Walk(ctx context.Context, fn content.WalkFunc, exprs ...string) error {
	filter, err := parseFilters(exprs)
	if err != nil {
		return err
	}
	algs, err := os.ReadDir(filepath.Join(s.root, "blobs"))
	if err != nil {
		return fmt.Errorf("walk blobs: %w", err)
	}
	for _, a := range algs {
		alg := digest.Algorithm(a.Name())
		if !a.IsDir() || !alg.Available() {
			continue
		}
		dir := filepath.Join(s.root, "blobs", a.Name())
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("walk blobs: %w", err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			d := digest.NewDigestFromEncoded(alg, e.Name())
			if !e.Type().IsRegular() || d.Validate() != nil {
				// Not ours: a leftover of a tool or a corrupted tree.
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted since the listing
			} else if err != nil {
				return fmt.Errorf("walk blobs: %w", err)
			}
			info, err := s.info(d, fi)
			if err != nil {
				return err
			}
			if !filter.Match(adaptInfo(info)) {
				continue
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes a committed blob. Readers that already opened it keep
// reading it.
func (s *Store) Delete(ctx context.Context, d digest.Digest) error {
	if err := validateDigest(d); err != nil {
		return err
	}
	unlock := s.digests.lock(d)
	defer unlock()
	s.mu.Lock()
	held := s.held[d] > 0
	s.mu.Unlock()
	if held {
		return fmt.Errorf("content %s is being committed to a namespace: %w", d, errdefs.ErrFailedPrecondition)
	}
	if err := os.Remove(s.blobPath(d)); err != nil {
		return notFound(err, "content %s", d)
	}
	if err := s.meta.delete(d); err != nil {
		// The blob is gone, which is what the caller asked; the stale record
		// is replaced if the digest is ever committed again.
		logging.G(ctx).Warn("delete blob metadata", "digest", d, "error", err)
	}
	return nil
}

// OpenFile opens a committed blob's file for reading, to hand to another
// process.
func (s *Store) OpenFile(d digest.Digest) (*os.File, error) {
	if err := validateDigest(d); err != nil {
		return nil, err
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		return nil, notFound(err, "content %s", d)
	}
	return f, nil
}

// ReaderAt opens a committed blob for reading.
func (s *Store) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if err := validateDigest(desc.Digest); err != nil {
		return nil, err
	}
	f, err := os.Open(s.blobPath(desc.Digest))
	if err != nil {
		return nil, notFound(err, "content %s", desc.Digest)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("content %s: %w", desc.Digest, err)
	}
	return &fileReaderAt{File: f, size: fi.Size()}, nil
}

type fileReaderAt struct {
	*os.File
	size int64
}

func (r *fileReaderAt) Size() int64 { return r.size }

func (s *Store) exists(d digest.Digest) bool {
	_, err := os.Stat(s.blobPath(d))
	return err == nil
}

// notFound turns a file's absence into errdefs.ErrNotFound, with context.
func notFound(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", what, errdefs.ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// keyedMutex is a mutex per digest, held only for the short steps that must
// not interleave (existence check and rename; remove and forget labels).
type keyedMutex struct {
	mu   sync.Mutex
	held map[digest.Digest]*keyedEntry
}

type keyedEntry struct {
	sync.Mutex
	users int
}

func (k *keyedMutex) lock(d digest.Digest) (unlock func()) {
	k.mu.Lock()
	e := k.held[d]
	if e == nil {
		e = &keyedEntry{}
		k.held[d] = e
	}
	e.users++
	k.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		k.mu.Lock()
		e.users--
		if e.users == 0 {
			delete(k.held, d)
		}
		k.mu.Unlock()
	}
}
