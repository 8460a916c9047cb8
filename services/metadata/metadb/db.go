package metadb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// DB is meta.db and the content backend whose blobs it accounts for.
type DB struct {
	bolt    *bolt.DB
	backend content.Store

	// gcLock keeps the collector's sweep of the backend from deleting a
	// blob between its commit there and its record here: writers that
	// publish content hold it shared, the collector exclusively.
	gcLock sync.RWMutex

	snapMu      sync.RWMutex
	backends    map[string]*backend
	callTimeout time.Duration

	// onDirty is told when a removal left something to collect.
	dirtyMu sync.Mutex
	onDirty func(sync bool)
}

// Open opens (creating if needed) meta.db under root. The file lock is held
// for as long as the DB is open: a second metadata service on the same root
// fails here instead of corrupting it.
func Open(root string, backend content.Store) (*DB, error) {
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, fmt.Errorf("create metadata root: %w", err)
	}
	path := filepath.Join(root, "meta.db")
	b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another process is using this metadata root", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db := &DB{bolt: b, backend: backend, callTimeout: defaultCallTimeout}
	if err := b.Update(func(tx *bolt.Tx) error {
		v1, err := tx.CreateBucketIfNotExists(bucketV1)
		if err != nil {
			return err
		}
		if v := v1.Get(keyVersion); v != nil {
			if got, _ := binary.Uvarint(v); got != SchemaVersion {
				return fmt.Errorf("meta.db schema version %d, this build knows %d", got, SchemaVersion)
			}
			return nil
		}
		return v1.Put(keyVersion, binary.AppendUvarint(nil, SchemaVersion))
	}); err != nil {
		b.Close()
		return nil, fmt.Errorf("initialise %s: %w", path, err)
	}
	return db, nil
}

// Close closes meta.db.
func (db *DB) Close() error { return db.bolt.Close() }

// Bolt exposes the bbolt handle to tests and tools in this service.
func (db *DB) Bolt() *bolt.DB { return db.bolt }

// OnDirty sets the function told when a removal leaves garbage behind;
// sync asks for a collection before the removing call returns.
func (db *DB) OnDirty(fn func(sync bool)) {
	db.dirtyMu.Lock()
	db.onDirty = fn
	db.dirtyMu.Unlock()
}

func (db *DB) dirty(sync bool) {
	db.dirtyMu.Lock()
	fn := db.onDirty
	db.dirtyMu.Unlock()
	if fn != nil {
		fn(sync)
	}
}

// defaultCallTimeout bounds a call to another process made on the DB's own
// account (a collector's sweep) or while holding a snapshotter's lock.
const defaultCallTimeout = 30 * time.Second

// SetCallTimeout sets the longest a call to another process may take.
func (db *DB) SetCallTimeout(d time.Duration) {
	if d > 0 {
		db.callTimeout = d
	}
}

func leasesFromContext(ctx context.Context) (string, bool) {
	id, ok := leases.FromContext(ctx)
	return id, ok && id != ""
}

// namespace reads and validates the namespace of a call.
func namespace(ctx context.Context) (string, error) {
	ns, ok := namespaces.Namespace(ctx)
	if !ok || ns == "" {
		return "", fmt.Errorf("namespace is required: %w", errdefs.ErrFailedPrecondition)
	}
	if err := validateNamespace(ns); err != nil {
		return "", err
	}
	return ns, nil
}

// validateNamespace applies containerd's identifier rules, and refuses the
// one name that is a key of meta.db's top bucket rather than a namespace.
func validateNamespace(ns string) error {
	if err := identifiers.Validate(ns); err != nil {
		return fmt.Errorf("namespace %q: %w", ns, err)
	}
	if ns == string(keyVersion) {
		return fmt.Errorf("namespace %q is reserved: %w", ns, errdefs.ErrInvalidArgument)
	}
	return nil
}

// nsBucket returns the bucket of ns, or nil when it has none.
func nsBucket(tx *bolt.Tx, ns string) *bolt.Bucket {
	v1 := tx.Bucket(bucketV1)
	if v1 == nil {
		return nil
	}
	return v1.Bucket([]byte(ns))
}

// createNSBucket returns the bucket of ns, creating the namespace if this is
// its first write — as in containerd, writing in a namespace creates it.
func createNSBucket(tx *bolt.Tx, ns string) (*bolt.Bucket, error) {
	v1, err := tx.CreateBucketIfNotExists(bucketV1)
	if err != nil {
		return nil, err
	}
	return v1.CreateBucketIfNotExists([]byte(ns))
}

// bucketPath walks nested buckets from b; nil when any is missing.
func bucketPath(b *bolt.Bucket, keys ...[]byte) *bolt.Bucket {
	for _, k := range keys {
		if b == nil {
			return nil
		}
		b = b.Bucket(k)
	}
	return b
}

func createBucketPath(b *bolt.Bucket, keys ...[]byte) (*bolt.Bucket, error) {
	var err error
	for _, k := range keys {
		if b, err = b.CreateBucketIfNotExists(k); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func putTime(b *bolt.Bucket, k []byte, t time.Time) error {
	v, err := t.UTC().MarshalBinary()
	if err != nil {
		return err
	}
	return b.Put(k, v)
}

func getTime(b *bolt.Bucket, k []byte) time.Time {
	var t time.Time
	if v := b.Get(k); v != nil {
		_ = t.UnmarshalBinary(v)
	}
	return t
}

func putInt(b *bolt.Bucket, k []byte, n int64) error {
	return b.Put(k, binary.AppendVarint(nil, n))
}

func getInt(b *bolt.Bucket, k []byte) int64 {
	n, _ := binary.Varint(b.Get(k))
	return n
}

// readMap reads a bucket of string pairs; nil when the bucket is missing or
// empty.
func readMap(b *bolt.Bucket, k []byte) map[string]string {
	mb := b.Bucket(k)
	if mb == nil {
		return nil
	}
	var m map[string]string
	_ = mb.ForEach(func(k, v []byte) error {
		if v == nil {
			return nil
		}
		if m == nil {
			m = map[string]string{}
		}
		m[string(k)] = string(v)
		return nil
	})
	return m
}

// writeMap replaces a bucket of string pairs with m.
func writeMap(b *bolt.Bucket, k []byte, m map[string]string) error {
	if b.Bucket(k) != nil {
		if err := b.DeleteBucket(k); err != nil {
			return err
		}
	}
	if len(m) == 0 {
		return nil
	}
	mb, err := b.CreateBucket(k)
	if err != nil {
		return err
	}
	for key, v := range m {
		if v == "" {
			continue
		}
		if err := mb.Put([]byte(key), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// validateLabels applies containerd's label limits.
func validateLabels(m map[string]string) error {
	for k, v := range m {
		if k == "" {
			return fmt.Errorf("label with an empty key: %w", errdefs.ErrInvalidArgument)
		}
		if err := labels.Validate(k, v); err != nil {
			return err
		}
	}
	return nil
}

// applyFieldpaths merges update into current as containerd's Update does:
// no paths replaces labels wholesale; "labels" replaces them; "labels.<k>"
// sets or (empty value) removes one. Other paths are for the caller, which
// gets them back.
func applyLabelPaths(current, update map[string]string, paths []string) (map[string]string, []string) {
	if len(paths) == 0 {
		return copyMap(update), nil
	}
	out := copyMap(current)
	var rest []string
	for _, p := range paths {
		switch {
		case p == "labels":
			out = copyMap(update)
		case len(p) > len("labels.") && p[:len("labels.")] == "labels.":
			k := p[len("labels."):]
			if v, ok := update[k]; ok && v != "" {
				if out == nil {
					out = map[string]string{}
				}
				out[k] = v
			} else {
				delete(out, k)
			}
		default:
			rest = append(rest, p)
		}
	}
	return out, rest
}

func copyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		if v != "" {
			out[k] = v
		}
	}
	return out
}
