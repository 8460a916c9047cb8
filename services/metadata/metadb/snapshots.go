package metadb

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/semaphore"
)

// labelSnapshotRef names the committed snapshot an unpacker is about to
// create; a remote snapshotter that has it already (a lazily pulled layer)
// answers the Prepare with AlreadyExists.
const labelSnapshotRef = "containerd.io/snapshot.ref"

// backend is one snapshotter process, raw and unnamespaced.
type backend struct {
	name string
	sn   snapshots.Snapshotter
	// lock keeps the collector's sweep of this snapshotter from removing a
	// snapshot between its creation there and its record here: creators
	// hold it shared, the sweep exclusively. One lock per snapshotter, so
	// a hung snapshotter holds up nobody else; waiting for it honours the
	// caller's deadline, so it holds up its own callers no longer than
	// the call timeout either.
	lock *semaphore.Weighted
	// sweeping is held while a sweep of this snapshotter runs: a
	// background collection skips a snapshotter still being swept, a
	// synchronous one waits for that sweep and sweeps again.
	sweeping sync.Mutex
	// cleaned is set once a sweep has asked the snapshotter to clean up
	// (see cleanupSnapshotter).
	cleaned atomic.Bool
}

// lockReaders is how many creators may hold a snapshotter's lock at once;
// the sweep takes all of it.
const lockReaders = 1 << 20

func (b *backend) rlock(ctx context.Context) error {
	if err := b.lock.Acquire(ctx, 1); err != nil {
		return fmt.Errorf("snapshotter %s is busy: %w", b.name, err)
	}
	return nil
}

func (b *backend) runlock() { b.lock.Release(1) }

// SetSnapshotters gives the DB the snapshotters it accounts for, by name.
func (db *DB) SetSnapshotters(m map[string]snapshots.Snapshotter) {
	db.snapMu.Lock()
	defer db.snapMu.Unlock()
	db.backends = map[string]*backend{}
	for name, sn := range m {
		db.backends[name] = &backend{name: name, sn: sn, lock: semaphore.NewWeighted(lockReaders)}
	}
}

func (db *DB) snapshotBackend(name string) (*backend, error) {
	db.snapMu.RLock()
	defer db.snapMu.RUnlock()
	b, ok := db.backends[name]
	if !ok {
		return nil, fmt.Errorf("snapshotter not loaded: %q: %w", name, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// SnapshotterNames lists the configured snapshotters.
func (db *DB) SnapshotterNames() []string {
	db.snapMu.RLock()
	defer db.snapMu.RUnlock()
	out := make([]string, 0, len(db.backends))
	for name := range db.backends {
		out = append(out, name)
	}
	return out
}

// Snapshotter is the namespaced view of the snapshotter of that name: keys,
// parents and labels are per namespace here, mapped onto keys of the
// snapshotter process.
func (db *DB) Snapshotter(name string) (snapshots.Snapshotter, error) {
	b, err := db.snapshotBackend(name)
	if err != nil {
		return nil, err
	}
	return &nsSnapshotter{db: db, b: b}, nil
}

type nsSnapshotter struct {
	db *DB
	b  *backend
}

var _ snapshots.Snapshotter = (*nsSnapshotter)(nil)

// keySeq makes backend keys unique across restarts of this process.
var keySeq atomic.Uint64

func init() { keySeq.Store(uint64(time.Now().UnixNano())) }

// backendKey is the snapshotter's key for a namespace's key. Namespaces never
// contain "/", and the sequence number keeps a key reused after a removal
// from meeting its predecessor before the collector removed it.
func backendKey(ns, key string) string {
	return ns + "/" + strconv.FormatUint(keySeq.Add(1), 36) + "/" + key
}

func snapBucket(tx *bolt.Tx, ns, sn, key string) *bolt.Bucket {
	return bucketPath(nsBucket(tx, ns), bucketSnaps, []byte(sn), []byte(key))
}

type snapRecord struct {
	bkey   string
	parent string
	kind   snapshots.Kind
	info   snapshots.Info
}

func readSnap(key string, b *bolt.Bucket) snapRecord {
	kind := snapshots.KindUnknown
	if v := b.Get(keyKind); len(v) == 1 {
		kind = snapshots.Kind(v[0])
	}
	parent := string(b.Get(keyParent))
	return snapRecord{
		bkey:   string(b.Get(keyName)),
		parent: parent,
		kind:   kind,
		info: snapshots.Info{
			Kind:    kind,
			Name:    key,
			Parent:  parent,
			Labels:  readMap(b, bucketLabels),
			Created: getTime(b, keyCreatedAt),
			Updated: getTime(b, keyUpdatedAt),
		},
	}
}

func (s *nsSnapshotter) record(ctx context.Context, key string) (string, snapRecord, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return "", snapRecord{}, err
	}
	var rec snapRecord
	err = s.db.bolt.View(func(tx *bolt.Tx) error {
		b := snapBucket(tx, ns, s.b.name, key)
		if b == nil {
			return fmt.Errorf("snapshot %q on %s: %w", key, s.b.name, errdefs.ErrNotFound)
		}
		rec = readSnap(key, b)
		return nil
	})
	return ns, rec, err
}

func (s *nsSnapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	_, rec, err := s.record(ctx, key)
	return rec.info, err
}

func (s *nsSnapshotter) Update(ctx context.Context, info snapshots.Info, paths ...string) (snapshots.Info, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return snapshots.Info{}, err
	}
	var out snapshots.Info
	err = s.db.bolt.Update(func(tx *bolt.Tx) error {
		b := snapBucket(tx, ns, s.b.name, info.Name)
		if b == nil {
			return fmt.Errorf("snapshot %q on %s: %w", info.Name, s.b.name, errdefs.ErrNotFound)
		}
		cur := readSnap(info.Name, b).info
		labels, rest := applyLabelPaths(cur.Labels, info.Labels, paths)
		if len(rest) > 0 {
			return fmt.Errorf("cannot update %q of snapshot %q: %w", rest, info.Name, errdefs.ErrInvalidArgument)
		}
		if err := validateLabels(labels); err != nil {
			return err
		}
		cur.Labels = labels
		cur.Updated = time.Now().UTC()
		if err := writeMap(b, bucketLabels, labels); err != nil {
			return err
		}
		if err := putTime(b, keyUpdatedAt, cur.Updated); err != nil {
			return err
		}
		out = cur
		return nil
	})
	return out, err
}

func (s *nsSnapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	_, rec, err := s.record(ctx, key)
	if err != nil {
		return snapshots.Usage{}, err
	}
	return s.b.sn.Usage(ctx, rec.bkey)
}

func (s *nsSnapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	_, rec, err := s.record(ctx, key)
	if err != nil {
		return nil, err
	}
	return s.b.sn.Mounts(ctx, rec.bkey)
}

func (s *nsSnapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

func (s *nsSnapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

func infoOf(opts []snapshots.Opt) (snapshots.Info, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return base, err
		}
	}
	return base, validateLabels(base.Labels)
}

// create makes an active snapshot or a view: in the snapshotter first, then
// here, so no bbolt transaction waits on another process; what a crash in
// between leaves in the snapshotter, the collector removes.
func (s *nsSnapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if key == "" {
		return nil, fmt.Errorf("snapshot key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	base, err := infoOf(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.db.callTimeout)
	defer cancel()
	if err := s.b.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.b.runlock()

	// As containerd: a snapshot whose key, or the target it is labelled to
	// become (containerd.io/snapshot.ref, an unpack's layer), the namespace
	// already has is AlreadyExists, and the call's lease holds it, so that
	// an unpack skips the layer instead of downloading and applying it again.
	target := base.Labels[labelSnapshotRef]
	var bparent, existing string
	if err := s.db.bolt.View(func(tx *bolt.Tx) error {
		switch {
		case target != "" && snapBucket(tx, ns, s.b.name, target) != nil:
			existing = target
			return fmt.Errorf("target snapshot %q on %s: %w", target, s.b.name, errdefs.ErrAlreadyExists)
		case snapBucket(tx, ns, s.b.name, key) != nil:
			existing = key
			return fmt.Errorf("snapshot %q on %s: %w", key, s.b.name, errdefs.ErrAlreadyExists)
		}
		if parent == "" {
			return nil
		}
		pb := snapBucket(tx, ns, s.b.name, parent)
		if pb == nil {
			return fmt.Errorf("parent snapshot %q on %s: %w", parent, s.b.name, errdefs.ErrNotFound)
		}
		prec := readSnap(parent, pb)
		if prec.kind != snapshots.KindCommitted {
			return fmt.Errorf("parent %q is not a committed snapshot: %w", parent, errdefs.ErrInvalidArgument)
		}
		bparent = prec.bkey
		return nil
	}); err != nil {
		if existing != "" {
			if herr := s.db.bolt.Update(func(tx *bolt.Tx) error {
				if snapBucket(tx, ns, s.b.name, existing) == nil {
					return nil // removed meanwhile: nothing to hold
				}
				return leaseHold(ctx, tx, ns, bucketSnaps, []byte(s.b.name), []byte(existing))
			}); herr != nil {
				return nil, herr
			}
		}
		return nil, err
	}

	bkey := backendKey(ns, key)
	// Labels pass to the snapshotter untouched: remote snapshotters read
	// theirs (containerd.io/snapshot/...) from there.
	bopts := []snapshots.Opt{snapshots.WithLabels(base.Labels)}
	var mounts []mount.Mount
	if kind == snapshots.KindView {
		mounts, err = s.b.sn.View(ctx, bkey, bparent, bopts...)
	} else {
		mounts, err = s.b.sn.Prepare(ctx, bkey, bparent, bopts...)
	}
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			if target := base.Labels[labelSnapshotRef]; target != "" {
				return nil, s.adoptTarget(ctx, ns, target, parent, bparent, base)
			}
		}
		return nil, err
	}

	now := time.Now().UTC()
	var raced bool
	err = s.db.bolt.Update(func(tx *bolt.Tx) error {
		if snapBucket(tx, ns, s.b.name, key) != nil {
			raced = true
			return fmt.Errorf("snapshot %q on %s: %w", key, s.b.name, errdefs.ErrAlreadyExists)
		}
		return putSnap(ctx, tx, ns, s.b.name, key, snapRecord{bkey: bkey, parent: parent, kind: kind,
			info: snapshots.Info{Labels: base.Labels, Created: now, Updated: now}})
	})
	if err != nil {
		if raced || !errdefs.IsNotFound(err) {
			// The snapshot made for this call is nobody's: the collector
			// removes it.
			s.db.dirty(false)
		}
		return nil, err
	}
	return mounts, nil
}

// adoptTarget records the committed snapshot a remote snapshotter already
// has for target (it answered AlreadyExists to a Prepare labelled with it):
// the layer is there, and the caller learns so from AlreadyExists.
func (s *nsSnapshotter) adoptTarget(ctx context.Context, ns, target, parent, bparent string, base snapshots.Info) error {
	exists := fmt.Errorf("target snapshot %q on %s: %w", target, s.b.name, errdefs.ErrAlreadyExists)
	var found *snapshots.Info
	filter := fmt.Sprintf("labels.%q==%q,parent==%q", labelSnapshotRef, target, bparent)
	wctx, cancel := context.WithTimeout(ctx, s.db.callTimeout)
	defer cancel()
	if err := s.b.sn.Walk(wctx, func(_ context.Context, i snapshots.Info) error {
		if found == nil && i.Kind == snapshots.KindCommitted {
			found = &i
		}
		return nil
	}, filter); err != nil {
		return err
	}
	if found == nil {
		return fmt.Errorf("snapshotter %s has no committed snapshot for target %q: %w", s.b.name, target, errdefs.ErrNotFound)
	}
	now := time.Now().UTC()
	err := s.db.bolt.Update(func(tx *bolt.Tx) error {
		if snapBucket(tx, ns, s.b.name, target) != nil {
			return nil
		}
		return putSnap(ctx, tx, ns, s.b.name, target, snapRecord{bkey: found.Name, parent: parent, kind: snapshots.KindCommitted,
			info: snapshots.Info{Labels: base.Labels, Created: now, Updated: now}})
	})
	if err != nil {
		return err
	}
	return exists
}

// putSnap writes a snapshot record, links it to its parent and lets the
// call's lease hold it.
func putSnap(ctx context.Context, tx *bolt.Tx, ns, sn, key string, rec snapRecord) error {
	nb, err := createNSBucket(tx, ns)
	if err != nil {
		return err
	}
	sb, err := createBucketPath(nb, bucketSnaps, []byte(sn))
	if err != nil {
		return err
	}
	if rec.parent != "" {
		pb := sb.Bucket([]byte(rec.parent))
		if pb == nil {
			return fmt.Errorf("parent snapshot %q on %s: %w", rec.parent, sn, errdefs.ErrNotFound)
		}
		cb, err := pb.CreateBucketIfNotExists(bucketChildren)
		if err != nil {
			return err
		}
		if err := cb.Put([]byte(key), nil); err != nil {
			return err
		}
	}
	b, err := sb.CreateBucket([]byte(key))
	if err != nil {
		return err
	}
	for k, v := range map[string]string{string(keyName): rec.bkey, string(keyParent): rec.parent} {
		if v != "" {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
	}
	if err := b.Put(keyKind, []byte{byte(rec.kind)}); err != nil {
		return err
	}
	if err := putTime(b, keyCreatedAt, rec.info.Created); err != nil {
		return err
	}
	if err := putTime(b, keyUpdatedAt, rec.info.Updated); err != nil {
		return err
	}
	if err := writeMap(b, bucketLabels, rec.info.Labels); err != nil {
		return err
	}
	return leaseHold(ctx, tx, ns, bucketSnaps, []byte(sn), []byte(key))
}

// deleteSnap removes a record and its link from its parent.
func deleteSnap(sb *bolt.Bucket, key string) error {
	b := sb.Bucket([]byte(key))
	if b == nil {
		return nil
	}
	if parent := b.Get(keyParent); parent != nil {
		if cb := bucketPath(sb, parent, bucketChildren); cb != nil {
			if err := cb.Delete([]byte(key)); err != nil {
				return err
			}
		}
	}
	return sb.DeleteBucket([]byte(key))
}

func (s *nsSnapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	ns, rec, err := s.record(ctx, key)
	if err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("snapshot name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if rec.kind != snapshots.KindActive {
		return fmt.Errorf("snapshot %q is not active: %w", key, errdefs.ErrFailedPrecondition)
	}
	base, err := infoOf(opts)
	if err != nil {
		return err
	}
	// A parent given at commit rebases a snapshot prepared without one
	// onto it (containerd's snapshots.RebaseCap: a layer unpacked in
	// parallel with those below it); it cannot change a parent.
	parent := rec.parent
	if base.Parent != "" && base.Parent != rec.parent {
		if rec.parent != "" {
			return fmt.Errorf("snapshot %q has parent %q, cannot commit it onto %q: %w", key, rec.parent, base.Parent, errdefs.ErrInvalidArgument)
		}
		parent = base.Parent
	}
	ctx, cancel := context.WithTimeout(ctx, s.db.callTimeout)
	defer cancel()
	if err := s.b.rlock(ctx); err != nil {
		return err
	}
	defer s.b.runlock()
	bopts := []snapshots.Opt{snapshots.WithLabels(base.Labels)}
	if err := s.db.bolt.View(func(tx *bolt.Tx) error {
		if snapBucket(tx, ns, s.b.name, name) != nil {
			return fmt.Errorf("snapshot %q on %s: %w", name, s.b.name, errdefs.ErrAlreadyExists)
		}
		if parent == rec.parent {
			return nil
		}
		pb := snapBucket(tx, ns, s.b.name, parent)
		if pb == nil {
			return fmt.Errorf("parent snapshot %q on %s: %w", parent, s.b.name, errdefs.ErrNotFound)
		}
		prec := readSnap(parent, pb)
		if prec.kind != snapshots.KindCommitted {
			return fmt.Errorf("parent %q is not a committed snapshot: %w", parent, errdefs.ErrInvalidArgument)
		}
		bopts = append(bopts, snapshots.WithParent(prec.bkey))
		return nil
	}); err != nil {
		return err
	}
	bname := backendKey(ns, name)
	if err := s.b.sn.Commit(ctx, bname, rec.bkey, bopts...); err != nil {
		return err
	}
	now := time.Now().UTC()
	err = s.db.bolt.Update(func(tx *bolt.Tx) error {
		sb := bucketPath(nsBucket(tx, ns), bucketSnaps, []byte(s.b.name))
		if sb == nil || sb.Bucket([]byte(key)) == nil {
			return fmt.Errorf("snapshot %q on %s went away during its commit: %w", key, s.b.name, errdefs.ErrNotFound)
		}
		if sb.Bucket([]byte(name)) != nil {
			return fmt.Errorf("snapshot %q on %s: %w", name, s.b.name, errdefs.ErrAlreadyExists)
		}
		if err := deleteSnap(sb, key); err != nil {
			return err
		}
		if err := forgetLeaseSnapshot(ctx, tx, ns, s.b.name, key); err != nil {
			return err
		}
		return putSnap(ctx, tx, ns, s.b.name, name, snapRecord{bkey: bname, parent: parent, kind: snapshots.KindCommitted,
			info: snapshots.Info{Labels: base.Labels, Created: now, Updated: now}})
	})
	if err != nil {
		s.db.dirty(false)
	}
	return err
}

// forgetLeaseSnapshot drops an active snapshot, gone with its commit, from
// the call's lease.
func forgetLeaseSnapshot(ctx context.Context, tx *bolt.Tx, ns, sn, key string) error {
	id, ok := leasesFromContext(ctx)
	if !ok {
		return nil
	}
	if b := bucketPath(nsBucket(tx, ns), bucketLeases, []byte(id), bucketSnaps, []byte(sn)); b != nil {
		return b.Delete([]byte(key))
	}
	return nil
}

// Remove forgets a snapshot; the collector removes it from the snapshotter.
func (s *nsSnapshotter) Remove(ctx context.Context, key string) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	err = s.db.bolt.Update(func(tx *bolt.Tx) error {
		sb := bucketPath(nsBucket(tx, ns), bucketSnaps, []byte(s.b.name))
		b := bucketPath(sb, []byte(key))
		if b == nil {
			return fmt.Errorf("snapshot %q on %s: %w", key, s.b.name, errdefs.ErrNotFound)
		}
		if !emptyBucket(b.Bucket(bucketChildren)) {
			return fmt.Errorf("cannot remove snapshot %q with children: %w", key, errdefs.ErrFailedPrecondition)
		}
		return deleteSnap(sb, key)
	})
	if err != nil {
		return err
	}
	s.db.dirty(false)
	return nil
}

func (s *nsSnapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return fmt.Errorf("snapshot filters %q: %w", fs, errdefs.ErrInvalidArgument)
	}
	var infos []snapshots.Info
	err = s.db.bolt.View(func(tx *bolt.Tx) error {
		sb := bucketPath(nsBucket(tx, ns), bucketSnaps, []byte(s.b.name))
		if sb == nil {
			return nil
		}
		return sb.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			info := readSnap(string(k), sb.Bucket(k)).info
			if filter.Match(adaptSnapshot(info)) {
				infos = append(infos, info)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, info := range infos {
		if err := fn(ctx, info); err != nil {
			return err
		}
	}
	return nil
}

// Cleanup asks the snapshotter to release what it no longer uses.
func (s *nsSnapshotter) Cleanup(ctx context.Context) error {
	c, ok := s.b.sn.(snapshots.Cleaner)
	if !ok {
		return fmt.Errorf("snapshotter %s has no cleanup: %w", s.b.name, errdefs.ErrNotImplemented)
	}
	return c.Cleanup(ctx)
}

func (s *nsSnapshotter) Close() error { return nil }

func adaptSnapshot(info snapshots.Info) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 0 {
			return "", false
		}
		switch fp[0] {
		case "kind":
			switch info.Kind {
			case snapshots.KindActive:
				return "active", true
			case snapshots.KindView:
				return "view", true
			case snapshots.KindCommitted:
				return "committed", true
			}
		case "name":
			return info.Name, true
		case "parent":
			return info.Parent, true
		case "labels":
			return mapField(fp[1:], info.Labels)
		}
		return "", false
	})
}

// snapshotNodeKey is a snapshot's key in the collector's graph.
func snapshotNodeKey(sn, key string) string { return sn + "/" + key }

func splitSnapshotNodeKey(k string) (sn, key string) {
	sn, key, _ = strings.Cut(k, "/")
	return sn, key
}
