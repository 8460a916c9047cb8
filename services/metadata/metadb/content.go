package metadb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Content is the namespaced content store: records here, bytes in the
// content service. It implements containerd's content.Store.
type Content struct{ db *DB }

// Content returns the namespaced content store.
func (db *DB) Content() *Content { return &Content{db: db} }

var _ content.Store = (*Content)(nil)

// backendRef is the content service's ref for an ingest of a namespace.
// Namespaces are identifiers, which never contain "/", so refs of different
// namespaces cannot collide.
func backendRef(ns, ref string) string { return ns + "/" + ref }

func blobBucket(tx *bolt.Tx, ns string, d digest.Digest) *bolt.Bucket {
	return bucketPath(nsBucket(tx, ns), bucketContent, bucketBlob, []byte(d))
}

func readInfo(d digest.Digest, b *bolt.Bucket) content.Info {
	return content.Info{
		Digest:    d,
		Size:      getInt(b, keySize),
		CreatedAt: getTime(b, keyCreatedAt),
		UpdatedAt: getTime(b, keyUpdatedAt),
		Labels:    readMap(b, bucketLabels),
	}
}

func (c *Content) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return content.Info{}, err
	}
	var info content.Info
	err = c.db.bolt.View(func(tx *bolt.Tx) error {
		b := blobBucket(tx, ns, d)
		if b == nil {
			return fmt.Errorf("content %s: %w", d, errdefs.ErrNotFound)
		}
		info = readInfo(d, b)
		return nil
	})
	return info, err
}

func (c *Content) Update(ctx context.Context, info content.Info, paths ...string) (content.Info, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return content.Info{}, err
	}
	var out content.Info
	err = c.db.bolt.Update(func(tx *bolt.Tx) error {
		b := blobBucket(tx, ns, info.Digest)
		if b == nil {
			return fmt.Errorf("content %s: %w", info.Digest, errdefs.ErrNotFound)
		}
		cur := readInfo(info.Digest, b)
		labels, rest := applyLabelPaths(cur.Labels, info.Labels, paths)
		if len(rest) > 0 {
			return fmt.Errorf("cannot update %q field on content %s: %w", rest, info.Digest, errdefs.ErrInvalidArgument)
		}
		if err := validateLabels(labels); err != nil {
			return err
		}
		cur.Labels = labels
		cur.UpdatedAt = time.Now().UTC()
		if err := writeMap(b, bucketLabels, labels); err != nil {
			return err
		}
		if err := putTime(b, keyUpdatedAt, cur.UpdatedAt); err != nil {
			return err
		}
		out = cur
		return nil
	})
	return out, err
}

func (c *Content) Walk(ctx context.Context, fn content.WalkFunc, fs ...string) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return fmt.Errorf("content filters %q: %w", fs, errdefs.ErrInvalidArgument)
	}
	// Collected first so fn, which may be slow or call back into the
	// store, runs outside the read transaction.
	var infos []content.Info
	err = c.db.bolt.View(func(tx *bolt.Tx) error {
		bb := bucketPath(nsBucket(tx, ns), bucketContent, bucketBlob)
		if bb == nil {
			return nil
		}
		return bb.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			info := readInfo(digest.Digest(k), bb.Bucket(k))
			if filter.Match(content.AdaptInfo(info)) {
				infos = append(infos, info)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the namespace's record; the bytes go with the next
// collection if no other namespace holds them.
func (c *Content) Delete(ctx context.Context, d digest.Digest) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	err = c.db.bolt.Update(func(tx *bolt.Tx) error {
		bb := bucketPath(nsBucket(tx, ns), bucketContent, bucketBlob)
		if bb == nil || bb.Bucket([]byte(d)) == nil {
			return fmt.Errorf("content %s: %w", d, errdefs.ErrNotFound)
		}
		return bb.DeleteBucket([]byte(d))
	})
	if err != nil {
		return err
	}
	c.db.dirty(false)
	return nil
}

func (c *Content) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if _, err := c.Info(ctx, desc.Digest); err != nil {
		return nil, err
	}
	return c.db.backend.ReaderAt(ctx, desc)
}

// Visible reports whether the namespace of ctx holds d; the gRPC façade
// checks it before streaming bytes straight from the content service.
func (c *Content) Visible(ctx context.Context, d digest.Digest) error {
	_, err := c.Info(ctx, d)
	return err
}

func (c *Content) ingest(ctx context.Context, ref string) (ns, bref string, err error) {
	ns, err = namespace(ctx)
	if err != nil {
		return "", "", err
	}
	err = c.db.bolt.View(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketContent, bucketIngests, []byte(ref))
		if b == nil {
			return fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
		}
		bref = string(b.Get(keyRef))
		return nil
	})
	return ns, bref, err
}

func (c *Content) Status(ctx context.Context, ref string) (content.Status, error) {
	_, bref, err := c.ingest(ctx, ref)
	if err != nil {
		return content.Status{}, err
	}
	st, err := c.db.backend.Status(ctx, bref)
	if err != nil {
		return content.Status{}, err
	}
	st.Ref = ref
	return st, nil
}

func (c *Content) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("status filters %q: %w", fs, errdefs.ErrInvalidArgument)
	}
	refs := map[string]string{}
	err = c.db.bolt.View(func(tx *bolt.Tx) error {
		ib := bucketPath(nsBucket(tx, ns), bucketContent, bucketIngests)
		if ib == nil {
			return nil
		}
		return ib.ForEach(func(k, v []byte) error {
			if v == nil {
				refs[string(ib.Bucket(k).Get(keyRef))] = string(k)
			}
			return nil
		})
	})
	if err != nil || len(refs) == 0 {
		return nil, err
	}
	all, err := c.db.backend.ListStatuses(ctx)
	if err != nil {
		return nil, err
	}
	var out []content.Status
	for _, st := range all {
		ref, ok := refs[st.Ref]
		if !ok {
			continue
		}
		st.Ref = ref
		if filter.Match(adaptStatus(st)) {
			out = append(out, st)
		}
	}
	return out, nil
}

func (c *Content) Abort(ctx context.Context, ref string) error {
	ns, bref, err := c.ingest(ctx, ref)
	if err != nil {
		return err
	}
	if err := c.abortBackend(ctx, bref); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return c.db.bolt.Update(func(tx *bolt.Tx) error { return forgetIngest(tx, ns, ref) })
}

// forgetIngest removes an ingest's record and its hold by the lease it was
// opened in.
func forgetIngest(tx *bolt.Tx, ns, ref string) error {
	ib := bucketPath(nsBucket(tx, ns), bucketContent, bucketIngests)
	if ib == nil {
		return nil
	}
	b := ib.Bucket([]byte(ref))
	if b == nil {
		return nil
	}
	if lease := b.Get(keyLease); lease != nil {
		if lb := bucketPath(nsBucket(tx, ns), bucketLeases, lease, bucketIngests); lb != nil {
			if err := lb.Delete([]byte(ref)); err != nil {
				return err
			}
		}
	}
	return ib.DeleteBucket([]byte(ref))
}

// abortBackend aborts an ingest in the content service. A writer closed just
// before (containerd's remote writer closes without waiting) may still hold
// the ref there for a moment, so a locked ref is retried briefly.
func (c *Content) abortBackend(ctx context.Context, bref string) error {
	delay := 2 * time.Millisecond
	deadline := time.Now().Add(time.Second)
	for {
		err := c.db.backend.Abort(ctx, bref)
		if err == nil || !errdefs.IsUnavailable(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// Writer opens an ingest of the call's namespace. Content already in the
// namespace is AlreadyExists; content another namespace holds is shared
// (containerd's default policy): it becomes visible here, and the writer
// still answers AlreadyExists, so no byte is sent twice.
func (c *Content) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	stored := func() (content.Info, bool) {
		info, err := c.db.backend.Info(ctx, wo.Desc.Digest)
		return info, err == nil
	}
	ns, bref, shared, err := c.openIngest(ctx, wo.Ref, wo.Desc, stored)
	if err != nil {
		return nil, err
	}
	if bref == "" {
		// Another namespace wrote these bytes: this namespace's writer
		// has nothing to send, only a record to commit.
		return &contentserver.StoredWriter{Ref: wo.Ref, Info: shared, Started: time.Now().UTC(),
			Record: func(ctx context.Context, labels map[string]string) error {
				c.db.gcLock.RLock()
				defer c.db.gcLock.RUnlock()
				// The bytes may have been collected since the writer
				// opened.
				info, err := c.db.backend.Info(ctx, shared.Digest)
				if err != nil {
					return fmt.Errorf("shared content %s: %w", shared.Digest, err)
				}
				return c.record(ctx, ns, wo.Ref, info, labels)
			}}, nil
	}
	lease, leased := leases.FromContext(ctx)
	leased = leased && lease != ""
	w, err := c.db.backend.Writer(ctx, content.WithRef(bref), content.WithDescriptor(wo.Desc))
	if err != nil {
		if errdefs.IsAlreadyExists(err) && wo.Desc.Digest != "" {
			// Another namespace committed the same bytes since the check
			// above: they are this namespace's now too.
			if info, ierr := c.db.backend.Info(ctx, wo.Desc.Digest); ierr == nil {
				if uerr := c.db.bolt.Update(func(tx *bolt.Tx) error {
					if err := forgetIngest(tx, ns, wo.Ref); err != nil {
						return err
					}
					return recordBlob(ctx, tx, ns, info.Digest, info.Size, nil)
				}); uerr != nil {
					return nil, uerr
				}
			}
		}
		return nil, err
	}
	return &writer{Writer: w, c: c, ns: ns, ref: wo.Ref, leased: leased}, nil
}

// OpenIngest is the control half of Writer for a content store that moves
// the bytes itself (the content process): it records the ingest of ref in
// the call's namespace and returns the content store's ref for it, or ""
// when the store holds the expected blob already (stored says so) and only
// a record is to be committed.
func (c *Content) OpenIngest(ctx context.Context, ref string, desc ocispec.Descriptor, stored *content.Info) (string, error) {
	_, bref, _, err := c.openIngest(ctx, ref, desc, func() (content.Info, bool) {
		if stored == nil {
			return content.Info{}, false
		}
		return *stored, true
	})
	return bref, err
}

// openIngest checks an ingest of ref against the namespace and records it.
// stored says whether the content store holds the expected blob already;
// when it does (with the expected size), nothing is recorded and bref is "".
func (c *Content) openIngest(ctx context.Context, ref string, desc ocispec.Descriptor, stored func() (content.Info, bool)) (ns, bref string, shared content.Info, err error) {
	if ref == "" {
		return "", "", shared, fmt.Errorf("ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	ns, err = namespace(ctx)
	if err != nil {
		return "", "", shared, err
	}
	if desc.Digest != "" {
		if err := desc.Digest.Validate(); err != nil {
			return "", "", shared, fmt.Errorf("expected digest %q: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
	}

	c.db.gcLock.RLock()
	defer c.db.gcLock.RUnlock()
	if desc.Digest != "" {
		// Looked up in a read transaction first: a write transaction
		// costs an fsync even when it changes nothing, and new content,
		// the usual case, changes nothing here.
		var held bool
		if err := c.db.bolt.View(func(tx *bolt.Tx) error {
			held = blobBucket(tx, ns, desc.Digest) != nil
			return nil
		}); err != nil {
			return "", "", shared, err
		}
		if held {
			if err := c.db.bolt.Update(func(tx *bolt.Tx) error {
				if blobBucket(tx, ns, desc.Digest) == nil {
					// Deleted since the look-up: it is new
					// content again.
					held = false
					return nil
				}
				// Already here: the call's lease still gets to hold
				// it, so that work in progress keeps it even if what
				// referenced it goes away.
				return leaseHold(ctx, tx, ns, bucketContent, []byte(desc.Digest))
			}); err != nil {
				return "", "", shared, err
			}
		}
		if held {
			return "", "", shared, fmt.Errorf("content %s: %w", desc.Digest, errdefs.ErrAlreadyExists)
		}
		if info, ok := stored(); ok && (desc.Size == 0 || desc.Size == info.Size) {
			return ns, "", info, nil
		}
	}

	bref = backendRef(ns, ref)
	lease, leased := leases.FromContext(ctx)
	leased = leased && lease != ""
	if err := c.db.bolt.Update(func(tx *bolt.Tx) error {
		nb, err := createNSBucket(tx, ns)
		if err != nil {
			return err
		}
		b, err := createBucketPath(nb, bucketContent, bucketIngests, []byte(ref))
		if err != nil {
			return err
		}
		if err := b.Put(keyRef, []byte(bref)); err != nil {
			return err
		}
		if !leased {
			// As containerd: an ingest no lease holds is kept a day,
			// then collected.
			if b.Get(keyExpireAt) == nil {
				return putTime(b, keyExpireAt, time.Now().Add(unleasedIngestTTL))
			}
			return nil
		}
		if err := b.Put(keyLease, []byte(lease)); err != nil {
			return err
		}
		return leaseHold(ctx, tx, ns, bucketIngests, []byte(ref))
	}); err != nil {
		return "", "", shared, err
	}
	return ns, bref, shared, nil
}

// CommitIngest is the control half of a commit for a content store that
// moved the bytes itself: the store has committed info's blob, which
// becomes the namespace's (AlreadyExists if it was already), ending the
// ingest of ref. The caller keeps the blob from collection until this
// returns (the content process refuses to delete a blob it is recording).
func (c *Content) CommitIngest(ctx context.Context, ref string, info content.Info, labels map[string]string) error {
	if err := validateLabels(labels); err != nil {
		return err
	}
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	if err := info.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v: %w", info.Digest, err, errdefs.ErrInvalidArgument)
	}
	c.db.gcLock.RLock()
	defer c.db.gcLock.RUnlock()
	return c.record(ctx, ns, ref, info, labels)
}

// ForgetIngest ends the record of an ingest of the call's namespace that
// the content store dropped.
func (c *Content) ForgetIngest(ctx context.Context, ref string) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	return c.db.bolt.Update(func(tx *bolt.Tx) error { return forgetIngest(tx, ns, ref) })
}

// unleasedIngestTTL is how long an ingest no lease holds survives
// collection.
const unleasedIngestTTL = 24 * time.Hour

// recordBlob makes d visible in ns (keeping labels of an existing record
// when labels is nil) and lets the call's lease hold it.
func recordBlob(ctx context.Context, tx *bolt.Tx, ns string, d digest.Digest, size int64, labels map[string]string) error {
	nb, err := createNSBucket(tx, ns)
	if err != nil {
		return err
	}
	bb, err := createBucketPath(nb, bucketContent, bucketBlob)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	b := bb.Bucket([]byte(d))
	if b == nil {
		if b, err = bb.CreateBucket([]byte(d)); err != nil {
			return err
		}
		if err := putTime(b, keyCreatedAt, now); err != nil {
			return err
		}
	}
	if err := putTime(b, keyUpdatedAt, now); err != nil {
		return err
	}
	if err := putInt(b, keySize, size); err != nil {
		return err
	}
	if labels != nil {
		if err := writeMap(b, bucketLabels, labels); err != nil {
			return err
		}
	}
	return leaseHold(ctx, tx, ns, bucketContent, []byte(d))
}

type writer struct {
	content.Writer
	c       *Content
	ns, ref string
	leased  bool
	// status is the content service's last answer to Status, until the
	// ingest changes: containerd's clients ask twice before writing (on
	// opening, then content.Copy), and each asking is a round trip.
	status *content.Status
}

// drop aborts the ingest and forgets it.
func (w *writer) drop(ctx context.Context) {
	w.Writer.Close()
	if err := w.c.abortBackend(ctx, backendRef(w.ns, w.ref)); err != nil && !errdefs.IsNotFound(err) {
		logging.G(ctx).Warn("abort of a failed ingest", "ref", w.ref, "error", err)
	}
	if err := w.c.db.bolt.Update(func(tx *bolt.Tx) error { return forgetIngest(tx, w.ns, w.ref) }); err != nil {
		logging.G(ctx).Warn("forget a failed ingest", "ref", w.ref, "error", err)
	}
}

func (w *writer) Status() (content.Status, error) {
	if w.status != nil {
		return *w.status, nil
	}
	st, err := w.Writer.Status()
	st.Ref = w.ref
	if err != nil {
		return st, backendErr(err)
	}
	w.status = &st
	return st, nil
}

func (w *writer) Write(p []byte) (int, error) {
	w.status = nil
	n, err := w.Writer.Write(p)
	return n, backendErr(err)
}

func (w *writer) Truncate(size int64) error {
	w.status = nil
	return w.Writer.Truncate(size)
}

// backendErr says what a broken stream to the content service means: the
// service went away (a restart). containerd's proxy writer reports it as the
// io.EOF its Send returned, passed through errgrpc.ToNative, which makes it
// an Unknown error whose message ends in "EOF"; it would reach clients as
// Unknown, a code that says nothing about whether to try again.
func backendErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || (errdefs.IsUnknown(err) && strings.HasSuffix(err.Error(), io.EOF.Error())) {
		return fmt.Errorf("content service: %v: %w", err, errdefs.ErrUnavailable)
	}
	return err
}

// Commit commits in the content service, then records the blob in the
// namespace, both under the collector's shared lock so a collection cannot
// see the blob unrecorded and remove it.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	var base content.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	if err := validateLabels(base.Labels); err != nil {
		return err
	}
	w.status = nil
	w.c.db.gcLock.RLock()
	defer w.c.db.gcLock.RUnlock()

	err := backendErr(w.Writer.Commit(ctx, size, expected))
	d := w.Writer.Digest()
	if err != nil {
		if errdefs.IsFailedPrecondition(err) {
			// The bytes are not what the client declared. In a lease the
			// ingest stays for the client to fix and commit again, as in
			// containerd; without one nothing promised to keep it, so bad
			// input leaves nothing behind (containerd keeps it a day).
			if !w.leased {
				w.drop(ctx)
			}
			return err
		}
		if !errdefs.IsAlreadyExists(err) {
			return err
		}
		// The content service has these bytes already (written by another
		// namespace): they become this namespace's too, under the digest
		// asked for or, with none asked for, of what was written.
		if expected != "" {
			d = expected
		}
	}
	if err == nil && size > 0 && d != "" {
		// The content service verified the size (and digest, when one
		// was expected) before committing: asking it again would cost
		// a round trip per blob.
		return w.c.record(ctx, w.ns, w.ref, content.Info{Digest: d, Size: size}, base.Labels)
	}
	info, err := w.c.db.backend.Info(ctx, d)
	if err != nil {
		return fmt.Errorf("content %s committed but not found after: %w", d, err)
	}
	return w.c.record(ctx, w.ns, w.ref, info, base.Labels)
}

// record ends an ingest by making its blob the namespace's. A blob the
// namespace had already is AlreadyExists, once the ingest is forgotten and
// the call's lease holds the blob.
func (c *Content) record(ctx context.Context, ns, ref string, info content.Info, labels map[string]string) error {
	var exists bool
	err := c.db.bolt.Update(func(tx *bolt.Tx) error {
		if err := forgetIngest(tx, ns, ref); err != nil {
			return err
		}
		if blobBucket(tx, ns, info.Digest) != nil {
			exists = true
			return leaseHold(ctx, tx, ns, bucketContent, []byte(info.Digest))
		}
		if labels == nil {
			labels = map[string]string{}
		}
		return recordBlob(ctx, tx, ns, info.Digest, info.Size, labels)
	})
	if err == nil && exists {
		err = fmt.Errorf("content %s: %w", info.Digest, errdefs.ErrAlreadyExists)
	}
	return err
}

func adaptStatus(st content.Status) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 1 && fp[0] == "ref" {
			return st.Ref, true
		}
		return "", false
	})
}
