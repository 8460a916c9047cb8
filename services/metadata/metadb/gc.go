package metadb

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/metadata/gc"
)

// Labels that drive collection, as containerd defines them.
const (
	labelGCRoot       = "containerd.io/gc.root"
	labelGCRefContent = "containerd.io/gc.ref.content"
	labelGCRefSnap    = "containerd.io/gc.ref.snapshot."
	labelGCExpire     = "containerd.io/gc.expire"
	labelGCFlat       = "containerd.io/gc.flat"
)

// GCStats says what one collection removed.
type GCStats struct {
	Blobs, Ingests, Leases int
	Snapshots              int
	BackendBlobs           int
	BackendIngests         int
	// BytesReclaimed is the size of the blobs removed from the content
	// service.
	BytesReclaimed int64
	// BackendSnapshots counts the snapshots removed from snapshotters
	// before the collection returned (sweeps of slow ones go on after).
	BackendSnapshots int
	Duration         time.Duration
}

// GarbageCollect removes what no root reaches. Roots are images, leases
// that have not expired (with what they hold), content labelled
// containerd.io/gc.root, ingests that have not expired and what sandboxes'
// labels reference; references follow
// the containerd.io/gc.ref.* labels. Then blobs and ingests of the content
// service that no namespace records any more are removed there.
func (db *DB) GarbageCollect(ctx context.Context) (GCStats, error) {
	start := time.Now()
	st, err := db.collect(ctx)
	if err != nil {
		return st, err
	}
	// Snapshotters are swept outside the collector's lock, which writes
	// wait for: each sweep takes its snapshotter's own lock and reads what
	// to keep afresh, and a hung snapshotter must not hold up a write.
	st.BackendSnapshots = db.sweepSnapshotters(ctx)
	st.Duration = time.Since(start)
	logging.G(ctx).Debug("garbage collection", "blobs", st.Blobs, "ingests", st.Ingests, "leases", st.Leases, "snapshots", st.Snapshots, "backend_snapshots", st.BackendSnapshots,
		"backend_blobs", st.BackendBlobs, "backend_ingests", st.BackendIngests, "duration", st.Duration)
	return st, nil
}

// collect is the collection's part under the collector's lock: meta.db's
// records, then the content service's blobs and ingests no record keeps.
func (db *DB) collect(ctx context.Context) (GCStats, error) {
	db.gcLock.Lock()
	defer db.gcLock.Unlock()

	var (
		st      GCStats
		keep    = map[digest.Digest]struct{}{}
		ingests = map[string]struct{}{}
	)
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		v1 := tx.Bucket(bucketV1)
		if v1 == nil {
			return nil
		}
		now := time.Now()
		roots, err := scanRoots(v1, now)
		if err != nil {
			return err
		}
		reached, err := gc.Mark(roots, func(n gc.Node, visit func(gc.Node)) error {
			return references(v1, n, visit)
		})
		if err != nil {
			return err
		}
		return v1.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			ns := string(k)
			nb := v1.Bucket(k)
			if err := sweepNamespace(nb, ns, reached, now, &st); err != nil {
				return err
			}
			if bb := bucketPath(nb, bucketContent, bucketBlob); bb != nil {
				_ = bb.ForEach(func(k, _ []byte) error { keep[digest.Digest(k)] = struct{}{}; return nil })
			}
			if ib := bucketPath(nb, bucketContent, bucketIngests); ib != nil {
				_ = ib.ForEach(func(k, v []byte) error {
					if v == nil {
						ingests[string(ib.Bucket(k).Get(keyRef))] = struct{}{}
					}
					return nil
				})
			}
			return nil
		})
	})
	if err != nil {
		return st, fmt.Errorf("garbage collection of meta.db: %w", err)
	}

	// The content service's side, after the records are gone: a failure
	// here leaves bytes for the next run, never a record without bytes.
	var remove []content.Info
	if err := db.backend.Walk(ctx, func(info content.Info) error {
		if _, ok := keep[info.Digest]; !ok {
			remove = append(remove, info)
		}
		return nil
	}); err != nil {
		return st, fmt.Errorf("garbage collection: list content: %w", err)
	}
	for _, info := range remove {
		if err := db.backend.Delete(ctx, info.Digest); err != nil && !errdefs.IsNotFound(err) {
			if errdefs.IsFailedPrecondition(err) {
				// The content process is committing it to a namespace,
				// whose record waits for this collection to end: it is
				// referenced then, or collected next time.
				continue
			}
			return st, fmt.Errorf("garbage collection: delete %s: %w", info.Digest, err)
		}
		st.BackendBlobs++
		st.BytesReclaimed += info.Size
	}
	statuses, err := db.backend.ListStatuses(ctx)
	if err != nil {
		return st, fmt.Errorf("garbage collection: list ingests: %w", err)
	}
	for _, s := range statuses {
		if _, ok := ingests[s.Ref]; ok {
			continue
		}
		if err := db.backend.Abort(ctx, s.Ref); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsUnavailable(err) {
			return st, fmt.Errorf("garbage collection: abort ingest %q: %w", s.Ref, err)
		}
		st.BackendIngests++
	}
	return st, nil
}

func expired(labels *bolt.Bucket, now time.Time) bool {
	if labels == nil {
		return false
	}
	v := labels.Get([]byte(labelGCExpire))
	if v == nil {
		return false
	}
	t, err := time.Parse(time.RFC3339, string(v))
	return err == nil && now.After(t)
}

func scanRoots(v1 *bolt.Bucket, now time.Time) ([]gc.Node, error) {
	var roots []gc.Node
	err := v1.ForEach(func(k, v []byte) error {
		if v != nil {
			return nil
		}
		ns := string(k)
		nb := v1.Bucket(k)
		if ib := nb.Bucket(bucketImages); ib != nil {
			_ = ib.ForEach(func(k, v []byte) error {
				if v == nil && !expired(ib.Bucket(k).Bucket(bucketLabels), now) {
					roots = append(roots, gc.Node{Type: gc.Image, Namespace: ns, Key: string(k)})
				}
				return nil
			})
		}
		if lb := nb.Bucket(bucketLeases); lb != nil {
			_ = lb.ForEach(func(k, v []byte) error {
				if v != nil {
					return nil
				}
				l := lb.Bucket(k)
				labels := l.Bucket(bucketLabels)
				if expired(labels, now) {
					return nil
				}
				flat := labels != nil && labels.Get([]byte(labelGCFlat)) != nil
				roots = append(roots, gc.Node{Type: gc.Lease, Namespace: ns, Key: string(k)})
				ct, st := gc.Content, gc.Snapshot
				if flat {
					ct, st = gc.ContentFlat, gc.SnapshotFlat
				}
				if cb := l.Bucket(bucketContent); cb != nil {
					_ = cb.ForEach(func(k, _ []byte) error {
						roots = append(roots, gc.Node{Type: ct, Namespace: ns, Key: string(k)})
						return nil
					})
				}
				if ib := l.Bucket(bucketImages); ib != nil {
					_ = ib.ForEach(func(k, _ []byte) error {
						roots = append(roots, gc.Node{Type: gc.Image, Namespace: ns, Key: string(k)})
						return nil
					})
				}
				if ib := l.Bucket(bucketIngests); ib != nil {
					_ = ib.ForEach(func(k, _ []byte) error {
						roots = append(roots, gc.Node{Type: gc.Ingest, Namespace: ns, Key: string(k)})
						return nil
					})
				}
				if sb := l.Bucket(bucketSnaps); sb != nil {
					_ = sb.ForEach(func(sn, v []byte) error {
						if v == nil {
							_ = sb.Bucket(sn).ForEach(func(key, _ []byte) error {
								roots = append(roots, gc.Node{Type: st, Namespace: ns, Key: string(sn) + "/" + string(key)})
								return nil
							})
						}
						return nil
					})
				}
				return nil
			})
		}
		if bb := bucketPath(nb, bucketContent, bucketBlob); bb != nil {
			_ = bb.ForEach(func(k, v []byte) error {
				if v != nil {
					return nil
				}
				if lb := bb.Bucket(k).Bucket(bucketLabels); lb != nil && lb.Get([]byte(labelGCRoot)) != nil && !expired(lb, now) {
					roots = append(roots, gc.Node{Type: gc.Content, Namespace: ns, Key: string(k)})
				}
				return nil
			})
		}
		if cb := nb.Bucket(bucketContainers); cb != nil {
			_ = cb.ForEach(func(k, v []byte) error {
				if v == nil {
					roots = append(roots, gc.Node{Type: gc.Container, Namespace: ns, Key: string(k)})
				}
				return nil
			})
		}
		// What a sandbox's labels reference is a root, as in containerd:
		// a sandbox is not a resource of its own that others reference.
		if sb := nb.Bucket(bucketSandboxes); sb != nil {
			_ = sb.ForEach(func(k, v []byte) error {
				if v == nil {
					labelRefs(sb.Bucket(k).Bucket(bucketLabels), ns, func(n gc.Node) { roots = append(roots, n) })
				}
				return nil
			})
		}
		if sb := nb.Bucket(bucketSnaps); sb != nil {
			_ = sb.ForEach(func(sn, v []byte) error {
				if v != nil {
					return nil
				}
				snb := sb.Bucket(sn)
				return snb.ForEach(func(k, v []byte) error {
					if v != nil {
						return nil
					}
					if lb := snb.Bucket(k).Bucket(bucketLabels); lb != nil && lb.Get([]byte(labelGCRoot)) != nil && !expired(lb, now) {
						roots = append(roots, gc.Node{Type: gc.Snapshot, Namespace: ns, Key: snapshotNodeKey(string(sn), string(k))})
					}
					return nil
				})
			})
		}
		if ib := bucketPath(nb, bucketContent, bucketIngests); ib != nil {
			_ = ib.ForEach(func(k, v []byte) error {
				if v == nil {
					b := ib.Bucket(k)
					if ea := b.Get(keyExpireAt); ea != nil && getTime(b, keyExpireAt).After(now) {
						roots = append(roots, gc.Node{Type: gc.Ingest, Namespace: ns, Key: string(k)})
					}
				}
				return nil
			})
		}
		return nil
	})
	return roots, err
}

// references calls visit for every resource n keeps alive.
func references(v1 *bolt.Bucket, n gc.Node, visit func(gc.Node)) error {
	nb := v1.Bucket([]byte(n.Namespace))
	if nb == nil {
		return nil
	}
	switch n.Type {
	case gc.Image:
		b := bucketPath(nb, bucketImages, []byte(n.Key))
		if b == nil {
			return nil
		}
		if tb := b.Bucket(bucketTarget); tb != nil {
			if d := tb.Get(keyDigest); d != nil {
				visit(gc.Node{Type: gc.Content, Namespace: n.Namespace, Key: string(d)})
			}
		}
		labelRefs(b.Bucket(bucketLabels), n.Namespace, visit)
	case gc.Content:
		if b := bucketPath(nb, bucketContent, bucketBlob, []byte(n.Key)); b != nil {
			labelRefs(b.Bucket(bucketLabels), n.Namespace, visit)
		}
	case gc.Container:
		b := bucketPath(nb, bucketContainers, []byte(n.Key))
		if b == nil {
			return nil
		}
		if sn, key := b.Get(keySnapshotter), b.Get(keySnapshotKey); sn != nil && key != nil {
			visit(gc.Node{Type: gc.Snapshot, Namespace: n.Namespace, Key: snapshotNodeKey(string(sn), string(key))})
		}
		labelRefs(b.Bucket(bucketLabels), n.Namespace, visit)
	case gc.Snapshot, gc.SnapshotFlat:
		sn, key := splitSnapshotNodeKey(n.Key)
		b := bucketPath(nb, bucketSnaps, []byte(sn), []byte(key))
		if b == nil {
			return nil
		}
		// A snapshot needs its parent whatever holds it; what its labels
		// name is kept only on account of a snapshot held in full.
		if parent := b.Get(keyParent); parent != nil {
			visit(gc.Node{Type: n.Type, Namespace: n.Namespace, Key: snapshotNodeKey(sn, string(parent))})
		}
		if n.Type == gc.Snapshot {
			labelRefs(b.Bucket(bucketLabels), n.Namespace, visit)
		}
	}
	return nil
}

// labelRefs follows containerd.io/gc.ref.content[.|/]* and
// containerd.io/gc.ref.snapshot.<snapshotter>[/*] labels.
func labelRefs(labels *bolt.Bucket, ns string, visit func(gc.Node)) {
	if labels == nil {
		return
	}
	c := labels.Cursor()
	prefix := []byte("containerd.io/gc.ref.")
	for k, v := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, v = c.Next() {
		key := string(k)
		switch {
		case key == labelGCRefContent || strings.HasPrefix(key, labelGCRefContent+".") || strings.HasPrefix(key, labelGCRefContent+"/"):
			visit(gc.Node{Type: gc.Content, Namespace: ns, Key: string(v)})
		case strings.HasPrefix(key, labelGCRefSnap):
			sn, _, _ := strings.Cut(strings.TrimPrefix(key, labelGCRefSnap), "/")
			if sn != "" {
				visit(gc.Node{Type: gc.Snapshot, Namespace: ns, Key: sn + "/" + string(v)})
			}
		}
	}
}

func reachedContent(reached map[gc.Node]struct{}, ns, d string) bool {
	if _, ok := reached[gc.Node{Type: gc.Content, Namespace: ns, Key: d}]; ok {
		return true
	}
	_, ok := reached[gc.Node{Type: gc.ContentFlat, Namespace: ns, Key: d}]
	return ok
}

// sweepNamespace deletes the namespace's unreached blobs and ingests and its
// expired leases.
func sweepNamespace(nb *bolt.Bucket, ns string, reached map[gc.Node]struct{}, now time.Time, st *GCStats) error {
	var del [][]byte
	if bb := bucketPath(nb, bucketContent, bucketBlob); bb != nil {
		_ = bb.ForEach(func(k, v []byte) error {
			if v == nil && !reachedContent(reached, ns, string(k)) {
				del = append(del, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range del {
			if err := bb.DeleteBucket(k); err != nil {
				return err
			}
			st.Blobs++
		}
	}
	del = del[:0]
	if ib := bucketPath(nb, bucketContent, bucketIngests); ib != nil {
		_ = ib.ForEach(func(k, v []byte) error {
			if _, ok := reached[gc.Node{Type: gc.Ingest, Namespace: ns, Key: string(k)}]; v == nil && !ok {
				del = append(del, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range del {
			if err := ib.DeleteBucket(k); err != nil {
				return err
			}
			st.Ingests++
		}
	}
	if sb := nb.Bucket(bucketSnaps); sb != nil {
		var sns [][]byte
		_ = sb.ForEach(func(sn, v []byte) error {
			if v == nil {
				sns = append(sns, append([]byte(nil), sn...))
			}
			return nil
		})
		for _, sn := range sns {
			snb := sb.Bucket(sn)
			del = del[:0]
			_ = snb.ForEach(func(k, v []byte) error {
				if v != nil {
					return nil
				}
				key := snapshotNodeKey(string(sn), string(k))
				_, full := reached[gc.Node{Type: gc.Snapshot, Namespace: ns, Key: key}]
				_, flat := reached[gc.Node{Type: gc.SnapshotFlat, Namespace: ns, Key: key}]
				if !full && !flat {
					del = append(del, append([]byte(nil), k...))
				}
				return nil
			})
			for _, k := range del {
				if err := deleteSnap(snb, string(k)); err != nil {
					return err
				}
				st.Snapshots++
			}
		}
	}
	del = del[:0]
	if lb := nb.Bucket(bucketLeases); lb != nil {
		_ = lb.ForEach(func(k, v []byte) error {
			if v == nil && expired(lb.Bucket(k).Bucket(bucketLabels), now) {
				del = append(del, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range del {
			if err := lb.DeleteBucket(k); err != nil {
				return err
			}
			st.Leases++
		}
	}
	return nil
}

// sweepWait is how long a background collection waits for the
// snapshotters' sweeps before returning; a slower (or hung) snapshotter's
// sweep goes on alone. A synchronous collection (a removal whose caller
// waits for the space, gc.Synchronous) waits for the sweeps to end, as
// containerd's does for its snapshotters' cleanup, for at most the call
// timeout: the snapshots are gone from the disk when the removal returns,
// rather than being removed (and holding the snapshotter's lock, which
// creations wait for) while the caller goes on to its next pull.
var sweepWait = 2 * time.Second

// sweepSnapshotters removes from each snapshotter the snapshots no record
// names, each snapshotter on its own: a hung one delays nobody else, and
// since what remains to remove is read from the snapshotter each time,
// nothing is forgotten when a sweep gives up. A sweep logs through ctx, which
// it may outlive.
func (db *DB) sweepSnapshotters(ctx context.Context) int {
	db.snapMu.RLock()
	backends := make([]*backend, 0, len(db.backends))
	for _, b := range db.backends {
		backends = append(backends, b)
	}
	db.snapMu.RUnlock()

	wait := sweepWait
	synchronous := gc.Synchronous(ctx)
	if synchronous {
		wait = db.callTimeout
	}
	var removed atomic.Int64
	var wg sync.WaitGroup
	for _, b := range backends {
		if !synchronous && !b.sweeping.TryLock() {
			continue // the previous sweep of this one is still going
		}
		wg.Add(1)
		ctx := logging.With(ctx, "snapshotter", b.name)
		go func() {
			defer wg.Done()
			if synchronous {
				// What a sweep still running removes counts
				// too: wait for it, then sweep what it left.
				b.sweeping.Lock()
			}
			defer b.sweeping.Unlock()
			n, err := db.sweepSnapshotter(b)
			removed.Add(int64(n))
			if err != nil {
				logging.G(ctx).Warn("snapshotter sweep stopped; the next collection resumes it", "removed", n, "error", err)
				return
			}
			db.cleanupSnapshotter(b, n)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
	}
	return int(removed.Load())
}

func (db *DB) sweepSnapshotter(b *backend) (int, error) {
	lctx, lcancel := context.WithTimeout(context.Background(), db.callTimeout)
	err := b.lock.Acquire(lctx, lockReaders)
	lcancel()
	if err != nil {
		return 0, fmt.Errorf("wait for creators: %w", err)
	}
	defer b.lock.Release(lockReaders)
	// What to keep is read under the lock: a snapshot made or committed
	// since the collection's transaction is recorded by now, and none can
	// be made until the sweep ends.
	keep, err := db.snapshotKeys(b.name)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), db.callTimeout)
	defer cancel()
	parents := map[string]string{}
	if err := b.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		parents[info.Name] = info.Parent
		return nil
	}); err != nil {
		return 0, fmt.Errorf("list snapshots: %w", err)
	}
	// Anything a kept snapshot stands on is kept too.
	drop := map[string]bool{}
	for k := range parents {
		drop[k] = true
	}
	for k := range keep {
		for p := k; p != ""; p = parents[p] {
			if !drop[p] {
				break
			}
			drop[p] = false
		}
	}
	children := map[string]int{}
	for _, p := range parents {
		if p != "" {
			children[p]++
		}
	}
	removed := 0
	// Children first: remove leaves until none of the dropped is left.
	for progress := true; progress; {
		progress = false
		for k, d := range drop {
			if !d || children[k] > 0 {
				continue
			}
			rctx, rcancel := context.WithTimeout(context.Background(), db.callTimeout)
			err := b.sn.Remove(rctx, k)
			rcancel()
			if err != nil && !errdefs.IsNotFound(err) {
				return removed, fmt.Errorf("remove %s: %w", k, err)
			}
			drop[k] = false
			if p := parents[k]; p != "" {
				children[p]--
			}
			removed++
			progress = true
		}
	}
	return removed, nil
}

// cleanupSnapshotter asks a snapshotter to release what its removed
// snapshots left behind (a remote snapshotter's directories and FUSE
// mounts), as containerd's collector does after each sweep when the
// snapshotter is a snapshots.Cleaner (the proxy client is; a snapshotter
// without Cleanup answers NotImplemented, which is no failure). It is asked
// after a sweep that removed something, and after the first sweep of this
// process, which finds what a crash left; it runs after the sweep released
// the snapshotter's lock, as containerd's does.
func (db *DB) cleanupSnapshotter(b *backend, removed int) {
	c, ok := b.sn.(snapshots.Cleaner)
	if !ok || (removed == 0 && b.cleaned.Load()) {
		return
	}
	b.cleaned.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), db.callTimeout)
	defer cancel()
	start := time.Now()
	err := c.Cleanup(ctx)
	switch {
	case err == nil:
		logging.G(ctx).Debug("snapshotter cleaned up", "snapshotter", b.name, "removed", removed, "duration", time.Since(start))
	case errdefs.IsNotImplemented(err):
	default:
		logging.G(ctx).Warn("snapshotter cleanup failed; the next collection asks again", "snapshotter", b.name, "error", err)
		b.cleaned.Store(false)
	}
}

// snapshotKeys is the set of the snapshotter's keys any namespace records.
func (db *DB) snapshotKeys(sn string) (map[string]struct{}, error) {
	keep := map[string]struct{}{}
	err := db.bolt.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket(bucketV1)
		if v1 == nil {
			return nil
		}
		return v1.ForEach(func(ns, v []byte) error {
			if v != nil {
				return nil
			}
			snb := bucketPath(v1.Bucket(ns), bucketSnaps, []byte(sn))
			if snb == nil {
				return nil
			}
			return snb.ForEach(func(k, v []byte) error {
				if v == nil {
					keep[string(snb.Bucket(k).Get(keyName))] = struct{}{}
				}
				return nil
			})
		})
	})
	return keep, err
}
