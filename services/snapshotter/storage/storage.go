// Package storage keeps the metadata of one snapshotter driver's snapshots in
// a bbolt file of its own: names, ids, kinds, parents, labels, timestamps and
// the usage of committed snapshots. The snapshot contents live in directories
// the driver names after the ids handed out here.
//
// Schema (every name below is a bucket unless it has a "->"):
//
//	v1/
//	  snapshots/
//	    <name or key>/                one bucket per snapshot; committed
//	                                  snapshots by name, active and view
//	                                  snapshots by key (one namespace)
//	      id       -> uvarint         the snapshot's directory id, from the
//	                                  snapshots bucket's sequence, never reused
//	      kind     -> 1 byte          snapshots.Kind (active, view, committed)
//	      parent   -> name            the committed parent, absent for a base
//	      created  -> time binary     time.Time.MarshalBinary
//	      updated  -> time binary
//	      size     -> varint          committed only: bytes, measured at commit
//	      inodes   -> varint          committed only: inodes, measured at commit
//	      labels/
//	        <label key> -> <value>
//	  children/
//	    <parent id: 8 bytes BE><child id: 8 bytes BE> -> child name or key
//	                                  one entry per child, so that removing a
//	                                  parent with children is refused without a
//	                                  scan, and prefix order groups siblings
//
// Ids are decimal strings outside this package, as containerd's are, because
// they become directory names.
package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	keyVersion   = []byte("v1")
	keySnapshots = []byte("snapshots")
	keyChildren  = []byte("children")

	keyID      = []byte("id")
	keyKind    = []byte("kind")
	keyParent  = []byte("parent")
	keyCreated = []byte("created")
	keyUpdated = []byte("updated")
	keySize    = []byte("size")
	keyInodes  = []byte("inodes")
	keyLabels  = []byte("labels")
)

// Snapshot is what a driver needs to lay out and mount a snapshot.
type Snapshot struct {
	ID   string
	Kind snapshots.Kind
	// ParentIDs are the ids of the parent chain, nearest first.
	ParentIDs []string
}

// Store is one driver's metadata file.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the metadata file at path. A second
// process on the same file fails after a short wait instead of hanging.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another process is using this snapshotter root", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		v, err := tx.CreateBucketIfNotExists(keyVersion)
		if err != nil {
			return err
		}
		if _, err := v.CreateBucketIfNotExists(keySnapshots); err != nil {
			return err
		}
		_, err = v.CreateBucketIfNotExists(keyChildren)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file; closing twice is harmless.
func (s *Store) Close() error {
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	if s.db == nil {
		return fmt.Errorf("snapshotter metadata is closed: %w", errdefs.ErrUnavailable)
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(newTx(tx)) })
}

// Update runs fn in a read-write transaction: everything fn does is
// committed together, or nothing is if it returns an error.
func (s *Store) Update(fn func(*Tx) error) error {
	if s.db == nil {
		return fmt.Errorf("snapshotter metadata is closed: %w", errdefs.ErrUnavailable)
	}
	return s.db.Update(func(tx *bolt.Tx) error { return fn(newTx(tx)) })
}

// Tx is a transaction over the schema.
type Tx struct {
	snaps    *bolt.Bucket
	children *bolt.Bucket
}

func newTx(tx *bolt.Tx) *Tx {
	v := tx.Bucket(keyVersion)
	return &Tx{snaps: v.Bucket(keySnapshots), children: v.Bucket(keyChildren)}
}

func (t *Tx) bucket(key string) (*bolt.Bucket, error) {
	if key == "" {
		return nil, fmt.Errorf("snapshot key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	b := t.snaps.Bucket([]byte(key))
	if b == nil {
		return nil, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	return b, nil
}

// Create records a new active or view snapshot on parent ("" for none),
// which must be committed.
func (t *Tx) Create(kind snapshots.Kind, key, parent string, labels map[string]string) (Snapshot, error) {
	if kind != snapshots.KindActive && kind != snapshots.KindView {
		return Snapshot{}, fmt.Errorf("only active and view snapshots can be created, not %v: %w", kind, errdefs.ErrInvalidArgument)
	}
	if key == "" {
		return Snapshot{}, fmt.Errorf("snapshot key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	var pb *bolt.Bucket
	if parent != "" {
		pb = t.snaps.Bucket([]byte(parent))
		if pb == nil {
			return Snapshot{}, fmt.Errorf("parent %q: %w", parent, errdefs.ErrNotFound)
		}
		if readKind(pb) != snapshots.KindCommitted {
			return Snapshot{}, fmt.Errorf("parent %q is not a committed snapshot: %w", parent, errdefs.ErrInvalidArgument)
		}
	}
	b, err := t.snaps.CreateBucket([]byte(key))
	if err != nil {
		if errors.Is(err, bolterrors.ErrBucketExists) {
			return Snapshot{}, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrAlreadyExists)
		}
		return Snapshot{}, fmt.Errorf("create snapshot %q: %w", key, err)
	}
	id, err := t.snaps.NextSequence()
	if err != nil {
		return Snapshot{}, fmt.Errorf("allocate id for snapshot %q: %w", key, err)
	}
	now := time.Now().UTC()
	info := snapshots.Info{Kind: kind, Parent: parent, Labels: labels, Created: now, Updated: now}
	if err := writeSnapshot(b, id, info); err != nil {
		return Snapshot{}, err
	}
	s := Snapshot{ID: formatID(id), Kind: kind}
	if pb != nil {
		if err := t.children.Put(childKey(readID(pb), id), []byte(key)); err != nil {
			return Snapshot{}, err
		}
		if s.ParentIDs, err = t.chain(pb); err != nil {
			return Snapshot{}, err
		}
	}
	return s, nil
}

// chain lists the ids from b up to its base.
func (t *Tx) chain(b *bolt.Bucket) ([]string, error) {
	var ids []string
	for b != nil {
		ids = append(ids, formatID(readID(b)))
		p := b.Get(keyParent)
		if len(p) == 0 {
			break
		}
		next := t.snaps.Bucket(p)
		if next == nil {
			return nil, fmt.Errorf("parent %q of a snapshot is missing: %w", p, errdefs.ErrNotFound)
		}
		b = next
	}
	return ids, nil
}

// Get returns the layout of an active or view snapshot, the only kinds that
// have mounts.
func (t *Tx) Get(key string) (Snapshot, error) {
	b, err := t.bucket(key)
	if err != nil {
		return Snapshot{}, err
	}
	s := Snapshot{ID: formatID(readID(b)), Kind: readKind(b)}
	if s.Kind != snapshots.KindActive && s.Kind != snapshots.KindView {
		return Snapshot{}, fmt.Errorf("snapshot %q is committed and has no mounts: %w", key, errdefs.ErrFailedPrecondition)
	}
	if p := b.Get(keyParent); len(p) > 0 {
		pb := t.snaps.Bucket(p)
		if pb == nil {
			return Snapshot{}, fmt.Errorf("parent %q of %q: %w", p, key, errdefs.ErrNotFound)
		}
		if s.ParentIDs, err = t.chain(pb); err != nil {
			return Snapshot{}, err
		}
	}
	return s, nil
}

// Info returns the id, info and recorded usage of any snapshot.
func (t *Tx) Info(key string) (string, snapshots.Info, snapshots.Usage, error) {
	b, err := t.bucket(key)
	if err != nil {
		return "", snapshots.Info{}, snapshots.Usage{}, err
	}
	info, err := readInfo(key, b)
	if err != nil {
		return "", snapshots.Info{}, snapshots.Usage{}, err
	}
	var u snapshots.Usage
	u.Size, _ = binary.Varint(b.Get(keySize))
	u.Inodes, _ = binary.Varint(b.Get(keyInodes))
	return formatID(readID(b)), info, u, nil
}

// UpdateInfo changes labels, the only mutable field: all of them when no
// field path is given, or those named "labels" / "labels.<key>".
func (t *Tx) UpdateInfo(info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	b, err := t.bucket(info.Name)
	if err != nil {
		return snapshots.Info{}, err
	}
	cur, err := readInfo(info.Name, b)
	if err != nil {
		return snapshots.Info{}, err
	}
	if len(fieldpaths) == 0 {
		cur.Labels = info.Labels
	}
	for _, p := range fieldpaths {
		if k, ok := strings.CutPrefix(p, "labels."); ok {
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			if v, ok := info.Labels[k]; ok {
				cur.Labels[k] = v
			} else {
				delete(cur.Labels, k)
			}
			continue
		}
		if p != "labels" {
			return snapshots.Info{}, fmt.Errorf("cannot update field %q of snapshot %q: %w", p, info.Name, errdefs.ErrInvalidArgument)
		}
		cur.Labels = info.Labels
	}
	cur.Updated = time.Now().UTC()
	if err := putTime(b, keyUpdated, cur.Updated); err != nil {
		return snapshots.Info{}, err
	}
	if err := writeLabels(b, cur.Labels); err != nil {
		return snapshots.Info{}, err
	}
	return cur, nil
}

// Commit turns the active snapshot key into the committed snapshot name,
// keeping its id (and so its directory). The new snapshot's labels are
// labels; parent, if given, becomes the parent of a base snapshot and must
// match an existing one.
func (t *Tx) Commit(key, name, parent string, labels map[string]string, usage snapshots.Usage) (string, error) {
	if name == "" {
		return "", fmt.Errorf("committed snapshot name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	b, err := t.bucket(key)
	if err != nil {
		return "", err
	}
	info, err := readInfo(key, b)
	if err != nil {
		return "", err
	}
	if info.Kind != snapshots.KindActive {
		return "", fmt.Errorf("snapshot %q is not active: %w", key, errdefs.ErrFailedPrecondition)
	}
	if t.snaps.Bucket([]byte(name)) != nil {
		return "", fmt.Errorf("committed snapshot %q: %w", name, errdefs.ErrAlreadyExists)
	}
	if parent != "" && parent != info.Parent {
		if info.Parent != "" {
			return "", fmt.Errorf("cannot change parent of active snapshot %q on commit: %w", key, errdefs.ErrInvalidArgument)
		}
		info.Parent = parent
	}
	id := readID(b)
	var pb *bolt.Bucket
	if info.Parent != "" {
		if pb = t.snaps.Bucket([]byte(info.Parent)); pb == nil {
			return "", fmt.Errorf("parent %q of %q: %w", info.Parent, key, errdefs.ErrNotFound)
		}
		if readKind(pb) != snapshots.KindCommitted {
			return "", fmt.Errorf("parent %q is not committed: %w", info.Parent, errdefs.ErrFailedPrecondition)
		}
	}
	if err := t.snaps.DeleteBucket([]byte(key)); err != nil {
		return "", fmt.Errorf("delete active snapshot %q: %w", key, err)
	}
	nb, err := t.snaps.CreateBucket([]byte(name))
	if err != nil {
		return "", fmt.Errorf("create committed snapshot %q: %w", name, err)
	}
	now := time.Now().UTC()
	info.Kind, info.Labels, info.Created, info.Updated = snapshots.KindCommitted, labels, now, now
	if err := writeSnapshot(nb, id, info); err != nil {
		return "", err
	}
	if err := putVarint(nb, keySize, usage.Size); err != nil {
		return "", err
	}
	if err := putVarint(nb, keyInodes, usage.Inodes); err != nil {
		return "", err
	}
	if pb != nil {
		if err := t.children.Put(childKey(readID(pb), id), []byte(name)); err != nil {
			return "", err
		}
	}
	return formatID(id), nil
}

// Remove deletes the record of key, refusing while it has children. It
// returns the id whose directory the driver should now delete.
func (t *Tx) Remove(key string) (string, snapshots.Kind, error) {
	b, err := t.bucket(key)
	if err != nil {
		return "", 0, err
	}
	id, kind := readID(b), readKind(b)
	prefix := childKey(id, 0)[:8]
	if k, _ := t.children.Cursor().Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)) {
		return "", 0, fmt.Errorf("cannot remove snapshot %q: it has children: %w", key, errdefs.ErrFailedPrecondition)
	}
	if p := b.Get(keyParent); len(p) > 0 {
		if pb := t.snaps.Bucket(p); pb != nil {
			if err := t.children.Delete(childKey(readID(pb), id)); err != nil {
				return "", 0, err
			}
		}
	}
	if err := t.snaps.DeleteBucket([]byte(key)); err != nil {
		return "", 0, fmt.Errorf("delete snapshot %q: %w", key, err)
	}
	return formatID(id), kind, nil
}

// Walk calls fn for each snapshot matching any of the filters (all when none).
func (t *Tx) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return fmt.Errorf("snapshot filters %q: %w", fs, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	return t.snaps.ForEachBucket(func(k []byte) error {
		info, err := readInfo(string(k), t.snaps.Bucket(k))
		if err != nil {
			return err
		}
		if !filter.Match(adapt(info)) {
			return nil
		}
		return fn(ctx, info)
	})
}

// IDs returns every id in use, mapped to its snapshot's name or key.
func (t *Tx) IDs() map[string]string {
	ids := map[string]string{}
	_ = t.snaps.ForEachBucket(func(k []byte) error {
		ids[formatID(readID(t.snaps.Bucket(k)))] = string(k)
		return nil
	})
	return ids
}

func adapt(info snapshots.Info) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 0 {
			return "", false
		}
		switch fieldpath[0] {
		case "kind":
			// Lower case, as containerd's snapshotters match it.
			return strings.ToLower(info.Kind.String()), true
		case "name":
			return info.Name, true
		case "parent":
			return info.Parent, true
		case "labels":
			v, ok := info.Labels[strings.Join(fieldpath[1:], ".")]
			return v, ok
		}
		return "", false
	})
}

func formatID(id uint64) string { return strconv.FormatUint(id, 10) }

func childKey(parent, child uint64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k, parent)
	binary.BigEndian.PutUint64(k[8:], child)
	return k
}

func readID(b *bolt.Bucket) uint64 {
	id, _ := binary.Uvarint(b.Get(keyID))
	return id
}

func readKind(b *bolt.Bucket) snapshots.Kind {
	if v := b.Get(keyKind); len(v) == 1 {
		return snapshots.Kind(v[0])
	}
	return snapshots.KindUnknown
}

func readInfo(name string, b *bolt.Bucket) (snapshots.Info, error) {
	info := snapshots.Info{Name: name, Kind: readKind(b), Parent: string(b.Get(keyParent))}
	for _, f := range []struct {
		key []byte
		t   *time.Time
	}{{keyCreated, &info.Created}, {keyUpdated, &info.Updated}} {
		if v := b.Get(f.key); v != nil {
			if err := f.t.UnmarshalBinary(v); err != nil {
				return info, fmt.Errorf("snapshot %q: read %s: %w", name, f.key, err)
			}
		}
	}
	if lb := b.Bucket(keyLabels); lb != nil {
		info.Labels = map[string]string{}
		if err := lb.ForEach(func(k, v []byte) error {
			info.Labels[string(k)] = string(v)
			return nil
		}); err != nil {
			return info, err
		}
	}
	return info, nil
}

func writeSnapshot(b *bolt.Bucket, id uint64, info snapshots.Info) error {
	if err := b.Put(keyID, binary.AppendUvarint(nil, id)); err != nil {
		return err
	}
	if err := b.Put(keyKind, []byte{byte(info.Kind)}); err != nil {
		return err
	}
	if info.Parent != "" {
		if err := b.Put(keyParent, []byte(info.Parent)); err != nil {
			return err
		}
	}
	if err := putTime(b, keyCreated, info.Created); err != nil {
		return err
	}
	if err := putTime(b, keyUpdated, info.Updated); err != nil {
		return err
	}
	return writeLabels(b, info.Labels)
}

func writeLabels(b *bolt.Bucket, labels map[string]string) error {
	if b.Bucket(keyLabels) != nil {
		if err := b.DeleteBucket(keyLabels); err != nil {
			return err
		}
	}
	if len(labels) == 0 {
		return nil
	}
	lb, err := b.CreateBucket(keyLabels)
	if err != nil {
		return err
	}
	for k, v := range labels {
		if err := lb.Put([]byte(k), []byte(v)); err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
	}
	return nil
}

func putTime(b *bolt.Bucket, key []byte, t time.Time) error {
	v, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	return b.Put(key, v)
}

func putVarint(b *bolt.Bucket, key []byte, n int64) error {
	return b.Put(key, binary.AppendVarint(nil, n))
}
