package blobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// ingestStatus is the status file of an ingest: what must survive a restart
// besides the data itself.
type ingestStatus struct {
	Ref       string        `json:"ref"`
	Total     int64         `json:"total,omitempty"`
	Expected  digest.Digest `json:"expected,omitempty"`
	StartedAt time.Time     `json:"startedAt"`
	UpdatedAt time.Time     `json:"updatedAt"`
}

func (s *Store) ingestDir(ref string) string {
	h := sha256.Sum256([]byte(ref))
	return filepath.Join(s.root, "ingest", hex.EncodeToString(h[:]))
}

// Writer starts an ingest, or resumes the one of the same ref. Only one
// writer per ref may be open at a time; another gets errdefs.ErrUnavailable
// until it is closed or committed. A descriptor's size and digest are the
// expected total and digest; a digest already in the store gives
// errdefs.ErrAlreadyExists.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if err := ValidateRef(wo.Ref); err != nil {
		return nil, err
	}
	if wo.Desc.Size < 0 {
		return nil, fmt.Errorf("ref %q: negative size %d: %w", wo.Ref, wo.Desc.Size, errdefs.ErrInvalidArgument)
	}
	if wo.Desc.Digest != "" {
		if err := validateDigest(wo.Desc.Digest); err != nil {
			return nil, err
		}
	}

	w := &writer{s: s, ref: wo.Ref, dir: s.ingestDir(wo.Ref)}
	if err := s.lockRef(w); err != nil {
		return nil, err
	}
	if wo.Desc.Digest != "" && s.exists(wo.Desc.Digest) {
		s.unlockRef(w)
		return nil, fmt.Errorf("content %s: %w", wo.Desc.Digest, errdefs.ErrAlreadyExists)
	}
	if err := w.open(ctx, wo.Desc.Size, wo.Desc.Digest); err != nil {
		s.unlockRef(w)
		return nil, fmt.Errorf("ref %q: %w", wo.Ref, err)
	}
	return w, nil
}

func (s *Store) lockRef(w *writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if other, ok := s.writers[w.ref]; ok {
		return lockedError(other)
	}
	s.holdRef(w)
	return nil
}

// holdRef makes w the holder of its ref; s.mu must be held.
func (s *Store) holdRef(w *writer) {
	w.lockedAt = time.Now()
	w.released = make(chan struct{})
	s.writers[w.ref] = w
}

// abortWait bounds how long Abort waits for the writer of its ref to close.
const abortWait = 2 * time.Second

// lockRefForAbort takes the ref like lockRef, but waits up to abortWait for
// a writer that holds it. A remote client's Close only half-closes its Write
// stream, and the server closes the writer a moment later, when the client
// may already have sent its Abort; containerd's local store ignores writers
// in Abort, so a client may well abort right after closing. A writer still
// in use after the wait is not pulled from under its client.
func (s *Store) lockRefForAbort(ctx context.Context, w *writer) error {
	timer := time.NewTimer(abortWait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		other, ok := s.writers[w.ref]
		if !ok {
			s.holdRef(w)
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-other.released:
		case <-timer.C:
			return lockedError(other)
		case <-ctx.Done():
			return lockedError(other)
		}
	}
}

func lockedError(holder *writer) error {
	// How long tells a stuck writer from plain contention.
	return fmt.Errorf("ref %q locked for %s (since %s): %w", holder.ref,
		time.Since(holder.lockedAt).Round(time.Millisecond), holder.lockedAt.Format(time.RFC3339), errdefs.ErrUnavailable)
}

func (s *Store) unlockRef(w *writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writers[w.ref] == w {
		delete(s.writers, w.ref)
		close(w.released)
	}
}

func (s *Store) activeWriter(ref string) *writer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writers[ref]
}

// Status reports an ingest, live if a writer has it open.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	if err := ValidateRef(ref); err != nil {
		return content.Status{}, err
	}
	if w := s.activeWriter(ref); w != nil {
		return w.snapshot(), nil
	}
	st, err := readStatus(s.ingestDir(ref))
	if err != nil {
		return content.Status{}, notFound(err, "ingest %q", ref)
	}
	if st.Ref != ref {
		return content.Status{}, fmt.Errorf("ingest %q: status names ref %q: %w", ref, st.Ref, errdefs.ErrNotFound)
	}
	return st, nil
}

// ListStatuses reports every ingest whose ref (or expected digest) matches
// any of the filters.
func (s *Store) ListStatuses(ctx context.Context, exprs ...string) ([]content.Status, error) {
	filter, err := parseFilters(exprs)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "ingest"))
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	var out []content.Status
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		st, err := readStatus(filepath.Join(s.root, "ingest", e.Name()))
		if err != nil {
			// Committed or aborted since the listing, or a directory a
			// crash left without its status: not an ingest anyone can use.
			continue
		}
		if w := s.activeWriter(st.Ref); w != nil {
			st = w.snapshot()
		}
		if filter.Match(adaptStatus(st)) {
			out = append(out, st)
		}
	}
	return out, nil
}

// Abort removes an ingest. An ingest whose writer stays open (see
// lockRefForAbort) is not aborted under it: that gives
// errdefs.ErrUnavailable.
func (s *Store) Abort(ctx context.Context, ref string) error {
	if err := ValidateRef(ref); err != nil {
		return err
	}
	w := &writer{s: s, ref: ref}
	if err := s.lockRefForAbort(ctx, w); err != nil {
		return err
	}
	defer s.unlockRef(w)
	dir := s.ingestDir(ref)
	if _, err := os.Lstat(dir); err != nil {
		return notFound(err, "ingest %q", ref)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("abort ingest %q: %w", ref, err)
	}
	return nil
}

func readStatus(dir string) (content.Status, error) {
	b, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return content.Status{}, err
	}
	var st ingestStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return content.Status{}, fmt.Errorf("%s: %w", filepath.Join(dir, "status"), err)
	}
	fi, err := os.Stat(filepath.Join(dir, "data"))
	if err != nil {
		return content.Status{}, err
	}
	updated := st.UpdatedAt
	// The status file is rewritten when a writer closes, not on every
	// write; after a crash the data's mtime is the better guess.
	if fi.ModTime().After(updated) {
		updated = fi.ModTime()
	}
	return content.Status{
		Ref:       st.Ref,
		Offset:    fi.Size(),
		Total:     st.Total,
		Expected:  st.Expected,
		StartedAt: st.StartedAt,
		UpdatedAt: updated,
	}, nil
}

// writeStatus replaces the status file, durably when sync is set: a torn
// status would lose the whole ingest. A status written before any data is
// synced need not be durable: a crash that loses it loses nothing that was
// promised to survive, since the writer's Close syncs data and status
// together.
func writeStatus(dir string, st ingestStatus, sync bool) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "status.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "status"))
}

// writer is one open ingest. It is used by one goroutine at a time, as
// content.Writer requires; mu only guards the status fields that
// Store.Status reads from other goroutines.
type writer struct {
	s        *Store
	ref      string
	dir      string
	lockedAt time.Time
	released chan struct{} // closed when the writer gives up the ref

	f        *os.File // nil once closed or committed
	digester digest.Digester

	mu     sync.Mutex
	st     ingestStatus
	offset int64
}

// open resumes the ingest on disk when it is compatible with the expected
// total and digest, and starts it afresh otherwise.
func (w *writer) open(ctx context.Context, total int64, expected digest.Digest) error {
	err := os.Mkdir(w.dir, 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err == nil {
		return w.start(total, expected)
	}
	old, err := readStatus(w.dir)
	switch {
	case err != nil:
		logging.G(ctx).Info("ingest unreadable, starting over", "ref", w.ref, "error", err)
		return w.start(total, expected)
	case old.Ref != w.ref:
		logging.G(ctx).Warn("ingest belongs to another ref, starting over", "ref", w.ref, "found", old.Ref)
		return w.start(total, expected)
	case total > 0 && old.Total > 0 && total != old.Total,
		expected != "" && old.Expected != "" && expected != old.Expected:
		logging.G(ctx).Info("ingest expected other content, starting over", "ref", w.ref,
			"total", total, "was_total", old.Total, "expected", expected, "was_expected", old.Expected)
		return w.start(total, expected)
	}
	if total == 0 {
		total = old.Total
	}
	if expected == "" {
		expected = old.Expected
	}
	data := filepath.Join(w.dir, "data")
	// Commit makes the data read-only just before moving it into blobs/; a
	// crash in between leaves it so, and without root it could not be
	// reopened for writing.
	if err := os.Chmod(data, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(data, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	w.f = f
	w.digester = digesterFor(expected)
	n, err := io.Copy(w.digester.Hash(), io.NewSectionReader(f, 0, old.Offset))
	if err != nil {
		w.closeFile()
		return fmt.Errorf("rehash ingest data: %w", err)
	}
	if _, err := f.Seek(n, io.SeekStart); err != nil {
		w.closeFile()
		return err
	}
	w.offset = n
	w.st = ingestStatus{Ref: w.ref, Total: total, Expected: expected, StartedAt: old.StartedAt, UpdatedAt: old.UpdatedAt}
	if total != old.Total || expected != old.Expected {
		if err := writeStatus(w.dir, w.st, true); err != nil {
			w.closeFile()
			return err
		}
	}
	return nil
}

func (w *writer) start(total int64, expected digest.Digest) error {
	now := time.Now()
	w.st = ingestStatus{Ref: w.ref, Total: total, Expected: expected, StartedAt: now, UpdatedAt: now}
	f, err := os.OpenFile(filepath.Join(w.dir, "data"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	// Each fsync costs a commit of the filesystem's journal, which on a
	// busy disk is milliseconds per blob written (a pull writes several).
	if err := writeStatus(w.dir, w.st, false); err != nil {
		f.Close()
		return err
	}
	w.f = f
	w.digester = digesterFor(expected)
	w.offset = 0
	return nil
}

// digesterFor hashes with the algorithm of the expected digest, so that a
// sha512 blob is verified without a second pass.
func digesterFor(expected digest.Digest) digest.Digester {
	if expected != "" && expected.Algorithm().Available() {
		return expected.Algorithm().Digester()
	}
	return digest.Canonical.Digester()
}

func (w *writer) snapshot() content.Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return content.Status{
		Ref:       w.ref,
		Offset:    w.offset,
		Total:     w.st.Total,
		Expected:  w.st.Expected,
		StartedAt: w.st.StartedAt,
		UpdatedAt: w.st.UpdatedAt,
	}
}

func (w *writer) Status() (content.Status, error) {
	if w.f == nil {
		return content.Status{}, fmt.Errorf("ref %q: writer closed: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	return w.snapshot(), nil
}

// Digest is the digest of what was written so far.
func (w *writer) Digest() digest.Digest { return w.digester.Digest() }

// Write appends p to the ingest. The bytes go straight to the file; large
// writes are hashed while the kernel copies them.
func (w *writer) Write(p []byte) (int, error) {
	if w.f == nil {
		return 0, fmt.Errorf("ref %q: writer closed: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	var (
		n   int
		err error
	)
	if len(p) >= parallelHashMin {
		done := make(chan struct{})
		go func() {
			n, err = w.f.Write(p)
			close(done)
		}()
		w.digester.Hash().Write(p)
		<-done
	} else {
		n, err = w.f.Write(p)
		w.digester.Hash().Write(p[:n])
	}
	if err != nil && n < len(p) && len(p) >= parallelHashMin {
		// The hash took in bytes the file did not: recompute it from disk.
		if rerr := w.rehash(w.offset + int64(n)); rerr != nil {
			w.closeFile()
			return n, fmt.Errorf("ref %q: %w (and rehash failed: %v)", w.ref, err, rerr)
		}
	}
	w.mu.Lock()
	w.offset += int64(n)
	w.st.UpdatedAt = time.Now()
	w.mu.Unlock()
	if err != nil {
		return n, fmt.Errorf("ref %q: write: %w", w.ref, err)
	}
	return n, nil
}

// parallelHashMin is the write size from which hashing alongside the file
// write pays for the goroutine hand-off.
const parallelHashMin = 256 << 10

// rehash recomputes the digester over the first n bytes of the data.
func (w *writer) rehash(n int64) error {
	w.digester = digesterFor(w.st.Expected)
	got, err := io.Copy(w.digester.Hash(), io.NewSectionReader(w.f, 0, n))
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("ingest data has %d bytes, expected %d", got, n)
	}
	_, err = w.f.Seek(n, io.SeekStart)
	return err
}

// Truncate cuts the ingest back to size bytes (0 restarts it).
func (w *writer) Truncate(size int64) error {
	if w.f == nil {
		return fmt.Errorf("ref %q: writer closed: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	w.mu.Lock()
	offset := w.offset
	w.mu.Unlock()
	if size < 0 || size > offset {
		return fmt.Errorf("ref %q: truncate to %d outside [0, %d]: %w", w.ref, size, offset, errdefs.ErrInvalidArgument)
	}
	if err := w.f.Truncate(size); err != nil {
		return fmt.Errorf("ref %q: truncate: %w", w.ref, err)
	}
	if err := w.rehash(size); err != nil {
		return fmt.Errorf("ref %q: truncate: %w", w.ref, err)
	}
	w.mu.Lock()
	w.offset = size
	w.st.UpdatedAt = time.Now()
	w.mu.Unlock()
	return nil
}

// Close keeps the ingest on disk, durably, for a later writer to resume.
func (w *writer) Close() error {
	if w.f == nil {
		return nil
	}
	defer w.s.unlockRef(w)
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if serr := writeStatus(w.dir, w.statusForDisk(), true); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("ref %q: close: %w", w.ref, err)
	}
	return nil
}

func (w *writer) statusForDisk() ingestStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

func (w *writer) closeFile() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// Commit verifies the ingest against size and expected (either may be zero
// for "unknown") and moves it into the store under its digest, durably: the
// data is synced, renamed into place and the directory synced before Commit
// returns. A mismatch gives errdefs.ErrFailedPrecondition and keeps the
// ingest for another try; a digest already in the store gives
// errdefs.ErrAlreadyExists and discards the ingest. The writer is closed
// either way.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) (err error) {
	if w.f == nil {
		return fmt.Errorf("ref %q: commit on closed writer: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	committed := false
	defer func() {
		if !committed {
			if cerr := w.Close(); cerr != nil {
				logging.G(ctx).Warn("close writer after failed commit", "ref", w.ref, "error", cerr)
			}
		}
	}()

	var base content.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	if err := ValidateLabels(base.Labels); err != nil {
		return err
	}
	if expected != "" {
		if err := validateDigest(expected); err != nil {
			return err
		}
		if w.s.exists(expected) {
			// containerd's answer, without reading the data: a client that
			// knows the digest needs nothing more.
			w.discard(ctx)
			committed = true
			return fmt.Errorf("content %s: %w", expected, errdefs.ErrAlreadyExists)
		}
	}
	if size < 0 {
		return fmt.Errorf("ref %q: negative commit size %d: %w", w.ref, size, errdefs.ErrInvalidArgument)
	}
	w.mu.Lock()
	offset := w.offset
	w.mu.Unlock()
	if size > 0 && size != offset {
		return fmt.Errorf("ref %q: commit size %d, but %d bytes were written: %w", w.ref, size, offset, errdefs.ErrFailedPrecondition)
	}
	fi, err := w.f.Stat()
	if err != nil {
		return fmt.Errorf("ref %q: %w", w.ref, err)
	}
	if fi.Size() != offset {
		return fmt.Errorf("ref %q: ingest data has %d bytes, writer wrote %d: %w", w.ref, fi.Size(), offset, errdefs.ErrFailedPrecondition)
	}
	dgst := w.digester.Digest()
	if expected != "" && expected.Algorithm() != dgst.Algorithm() {
		d := expected.Algorithm().Digester()
		if _, err := io.Copy(d.Hash(), io.NewSectionReader(w.f, 0, offset)); err != nil {
			return fmt.Errorf("ref %q: rehash as %s: %w", w.ref, expected.Algorithm(), err)
		}
		// Digest reports what was verified, in the algorithm asked for.
		w.digester = d
		dgst = d.Digest()
	}
	if expected != "" && dgst != expected {
		return fmt.Errorf("ref %q: content has digest %s, expected %s: %w", w.ref, dgst, expected, errdefs.ErrFailedPrecondition)
	}

	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("ref %q: sync: %w", w.ref, err)
	}
	// A blob is never writable once visible under its digest.
	if err := w.f.Chmod(0o444); err != nil {
		return fmt.Errorf("ref %q: %w", w.ref, err)
	}
	if err := w.f.Close(); err != nil {
		w.f = nil
		return fmt.Errorf("ref %q: %w", w.ref, err)
	}
	w.f = nil
	committed = true
	defer w.s.unlockRef(w)

	if err := w.s.publish(ctx, filepath.Join(w.dir, "data"), dgst, base.Labels); err != nil {
		if errdefs.IsAlreadyExists(err) {
			w.discard(ctx)
			return err
		}
		// The data is intact: leave the ingest to be committed again.
		if cerr := os.Chmod(filepath.Join(w.dir, "data"), 0o600); cerr != nil {
			logging.G(ctx).Warn("restore ingest mode", "ref", w.ref, "error", cerr)
		}
		return fmt.Errorf("ref %q: %w", w.ref, err)
	}
	w.discard(ctx)
	return nil
}

// discard removes the ingest directory; the writer must hold the ref.
func (w *writer) discard(ctx context.Context) {
	w.closeFile()
	if err := os.RemoveAll(w.dir); err != nil {
		logging.G(ctx).Warn("remove ingest", "ref", w.ref, "error", err)
	}
	w.s.unlockRef(w)
}

// publish moves a verified, synced file into place as blob d.
func (s *Store) publish(ctx context.Context, src string, d digest.Digest, labels map[string]string) error {
	unlock := s.digests.lock(d)
	defer unlock()
	target := s.blobPath(d)
	if _, err := os.Lstat(target); err == nil {
		return fmt.Errorf("content %s: %w", d, errdefs.ErrAlreadyExists)
	}
	dir := filepath.Dir(target)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	}
	now := time.Now()
	// A blob without labels needs no record: its file's times, set to the
	// commit's, say all a record would. That spares meta.db a transaction
	// (and its fsync) per blob, and most blobs have no labels here: the
	// metadata service keeps namespaced labels in its own database.
	record := len(labels) > 0
	if !record {
		if err := os.Chtimes(src, now, now); err != nil {
			record = true
		}
	}
	if err := os.Rename(src, target); err != nil {
		return fmt.Errorf("move into place: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	var err error
	if record {
		err = s.meta.put(d, metaRecord{createdAt: now, updatedAt: now, labels: labels})
	} else {
		// A record left by a crash between a removal and its record's
		// would lend this blob stale labels.
		err = s.meta.deleteIfPresent(d)
	}
	if err != nil {
		// The blob is committed and cannot be taken back cleanly; it is
		// served without labels, as a crash at this point would leave it.
		logging.G(ctx).Error("record blob metadata", "digest", d, "error", err)
	}
	return nil
}
