package metadb

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// ListNamespaces lists every namespace, sorted by name.
func (db *DB) ListNamespaces(ctx context.Context) ([]Namespace, error) {
	var out []Namespace
	err := db.bolt.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket(bucketV1)
		if v1 == nil {
			return nil
		}
		return v1.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			out = append(out, Namespace{Name: string(k), Labels: readMap(v1.Bucket(k), bucketLabels)})
			return nil
		})
	})
	return out, err
}

// GetNamespace returns one namespace.
func (db *DB) GetNamespace(ctx context.Context, name string) (Namespace, error) {
	if err := validateNamespace(name); err != nil {
		return Namespace{}, err
	}
	var out Namespace
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := nsBucket(tx, name)
		if b == nil {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrNotFound)
		}
		out = Namespace{Name: name, Labels: readMap(b, bucketLabels)}
		return nil
	})
	return out, err
}

// CreateNamespace creates a namespace; it fails if it exists.
func (db *DB) CreateNamespace(ctx context.Context, ns Namespace) (Namespace, error) {
	if err := validateNamespace(ns.Name); err != nil {
		return Namespace{}, err
	}
	if err := validateLabels(ns.Labels); err != nil {
		return Namespace{}, err
	}
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		if nsBucket(tx, ns.Name) != nil {
			return fmt.Errorf("namespace %q: %w", ns.Name, errdefs.ErrAlreadyExists)
		}
		b, err := createNSBucket(tx, ns.Name)
		if err != nil {
			return err
		}
		return writeMap(b, bucketLabels, ns.Labels)
	})
	if err != nil {
		return Namespace{}, err
	}
	return Namespace{Name: ns.Name, Labels: copyMap(ns.Labels)}, nil
}

// UpdateNamespace changes a namespace's labels by containerd's field paths
// ("labels", "labels.<key>"; none means all labels).
func (db *DB) UpdateNamespace(ctx context.Context, ns Namespace, paths ...string) (Namespace, error) {
	if err := validateNamespace(ns.Name); err != nil {
		return Namespace{}, err
	}
	var out Namespace
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		b := nsBucket(tx, ns.Name)
		if b == nil {
			return fmt.Errorf("namespace %q: %w", ns.Name, errdefs.ErrNotFound)
		}
		labels, rest := applyLabelPaths(readMap(b, bucketLabels), ns.Labels, paths)
		if len(rest) > 0 {
			return fmt.Errorf("cannot update %q of namespace %q: %w", rest, ns.Name, errdefs.ErrInvalidArgument)
		}
		if err := validateLabels(labels); err != nil {
			return err
		}
		if err := writeMap(b, bucketLabels, labels); err != nil {
			return err
		}
		out = Namespace{Name: ns.Name, Labels: labels}
		return nil
	})
	return out, err
}

// DeleteNamespace removes an empty namespace. One that still holds
// anything fails with FailedPrecondition naming what it holds.
func (db *DB) DeleteNamespace(ctx context.Context, name string) error {
	if err := validateNamespace(name); err != nil {
		return err
	}
	return db.bolt.Update(func(tx *bolt.Tx) error {
		b := nsBucket(tx, name)
		if b == nil {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrNotFound)
		}
		var held []string
		for _, c := range []struct {
			what string
			path [][]byte
		}{
			{"images", [][]byte{bucketImages}},
			{"blobs", [][]byte{bucketContent, bucketBlob}},
			{"ingests", [][]byte{bucketContent, bucketIngests}},
			{"leases", [][]byte{bucketLeases}},
			{"containers", [][]byte{bucketContainers}},
		} {
			if !emptyBucket(bucketPath(b, c.path...)) {
				held = append(held, c.what)
			}
		}
		if sb := b.Bucket(bucketSnaps); sb != nil {
			_ = sb.ForEach(func(k, v []byte) error {
				if v == nil && !emptyBucket(sb.Bucket(k)) {
					held = append(held, "snapshots on "+string(k))
				}
				return nil
			})
		}
		if len(held) > 0 {
			return fmt.Errorf("namespace %q must be empty, but it still has %s: %w",
				name, strings.Join(held, ", "), errdefs.ErrFailedPrecondition)
		}
		return tx.Bucket(bucketV1).DeleteBucket([]byte(name))
	})
}

func emptyBucket(b *bolt.Bucket) bool {
	if b == nil {
		return true
	}
	k, _ := b.Cursor().First()
	return k == nil
}
