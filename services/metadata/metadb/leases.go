package metadb

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Resource types a lease can hold, as containerd names them.
const (
	ResourceContent   = "content"
	ResourceIngests   = "ingests"
	ResourceImages    = "images"
	resourceSnapshots = "snapshots/"
)

// CreateLease records a new lease.
func (db *DB) CreateLease(ctx context.Context, l leases.Lease) (leases.Lease, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return leases.Lease{}, err
	}
	if err := validateLeaseID(l.ID); err != nil {
		return leases.Lease{}, err
	}
	if err := validateLabels(l.Labels); err != nil {
		return leases.Lease{}, err
	}
	l.CreatedAt = time.Now().UTC()
	l.Labels = copyMap(l.Labels)
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		nb, err := createNSBucket(tx, ns)
		if err != nil {
			return err
		}
		lb, err := nb.CreateBucketIfNotExists(bucketLeases)
		if err != nil {
			return err
		}
		if lb.Bucket([]byte(l.ID)) != nil {
			return fmt.Errorf("lease %q: %w", l.ID, errdefs.ErrAlreadyExists)
		}
		b, err := lb.CreateBucket([]byte(l.ID))
		if err != nil {
			return err
		}
		if err := putTime(b, keyCreatedAt, l.CreatedAt); err != nil {
			return err
		}
		return writeMap(b, bucketLabels, l.Labels)
	})
	if err != nil {
		return leases.Lease{}, err
	}
	return l, nil
}

// DeleteLease removes a lease; what only it held is collected later, or
// before the call returns when sync is set.
func (db *DB) DeleteLease(ctx context.Context, id string, sync bool) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		lb := bucketPath(nsBucket(tx, ns), bucketLeases)
		if lb == nil || lb.Bucket([]byte(id)) == nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
		}
		return lb.DeleteBucket([]byte(id))
	})
	if err != nil {
		return err
	}
	db.dirty(sync)
	return nil
}

// ListLeases lists the leases of the call's namespace matching any filter
// (fields id and labels.<k>).
func (db *DB) ListLeases(ctx context.Context, fs ...string) ([]leases.Lease, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("lease filters %q: %w", fs, errdefs.ErrInvalidArgument)
	}
	var out []leases.Lease
	err = db.bolt.View(func(tx *bolt.Tx) error {
		lb := bucketPath(nsBucket(tx, ns), bucketLeases)
		if lb == nil {
			return nil
		}
		return lb.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			b := lb.Bucket(k)
			l := leases.Lease{ID: string(k), CreatedAt: getTime(b, keyCreatedAt), Labels: readMap(b, bucketLabels)}
			if filter.Match(adaptLease(l)) {
				out = append(out, l)
			}
			return nil
		})
	})
	return out, err
}

// AddLeaseResource makes a lease hold a resource.
func (db *DB) AddLeaseResource(ctx context.Context, id string, r leases.Resource) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	keys, err := resourceKeys(r)
	if err != nil {
		return err
	}
	return db.bolt.Update(func(tx *bolt.Tx) error { return hold(tx, ns, id, keys) })
}

// DeleteLeaseResource releases a resource from a lease.
func (db *DB) DeleteLeaseResource(ctx context.Context, id string, r leases.Resource) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	keys, err := resourceKeys(r)
	if err != nil {
		return err
	}
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketLeases, []byte(id))
		if b == nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
		}
		if rb := bucketPath(b, keys[:len(keys)-1]...); rb != nil {
			return rb.Delete(keys[len(keys)-1])
		}
		return nil
	})
	if err == nil {
		db.dirty(false)
	}
	return err
}

// ListLeaseResources lists what a lease holds.
func (db *DB) ListLeaseResources(ctx context.Context, id string) ([]leases.Resource, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	var out []leases.Resource
	err = db.bolt.View(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketLeases, []byte(id))
		if b == nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
		}
		each := func(bb *bolt.Bucket, typ string) {
			if bb == nil {
				return
			}
			_ = bb.ForEach(func(k, _ []byte) error {
				out = append(out, leases.Resource{ID: string(k), Type: typ})
				return nil
			})
		}
		each(b.Bucket(bucketContent), ResourceContent)
		each(b.Bucket(bucketIngests), ResourceIngests)
		each(b.Bucket(bucketImages), ResourceImages)
		if sb := b.Bucket(bucketSnaps); sb != nil {
			_ = sb.ForEach(func(k, v []byte) error {
				if v == nil {
					each(sb.Bucket(k), resourceSnapshots+string(k))
				}
				return nil
			})
		}
		return nil
	})
	return out, err
}

// maxLeaseID bounds a lease id. containerd asks only that it be non-empty
// (its own random ids are not identifiers: they may end in "-"), but an id
// is a bbolt key and is echoed in every listing.
const maxLeaseID = 256

func validateLeaseID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("lease id must not be empty: %w", errdefs.ErrInvalidArgument)
	case len(id) > maxLeaseID:
		return fmt.Errorf("lease id of %d bytes is longer than %d: %w", len(id), maxLeaseID, errdefs.ErrInvalidArgument)
	case !utf8.ValidString(id) || strings.ContainsFunc(id, unicode.IsControl):
		return fmt.Errorf("lease id %q: must be printable UTF-8: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// resourceKeys is where a lease keeps a resource, validated.
func resourceKeys(r leases.Resource) ([][]byte, error) {
	if r.ID == "" {
		return nil, fmt.Errorf("resource id must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	switch {
	case r.Type == ResourceContent:
		if _, err := digest.Parse(r.ID); err != nil {
			return nil, fmt.Errorf("content resource %q: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
		}
		return [][]byte{bucketContent, []byte(r.ID)}, nil
	case r.Type == ResourceIngests:
		return [][]byte{bucketIngests, []byte(r.ID)}, nil
	case r.Type == ResourceImages:
		return [][]byte{bucketImages, []byte(r.ID)}, nil
	case strings.HasPrefix(r.Type, resourceSnapshots):
		sn := strings.TrimPrefix(r.Type, resourceSnapshots)
		if err := identifiers.Validate(sn); err != nil {
			return nil, fmt.Errorf("snapshotter of resource %q: %w", r.Type, err)
		}
		return [][]byte{bucketSnaps, []byte(sn), []byte(r.ID)}, nil
	}
	return nil, fmt.Errorf("unsupported lease resource type %q: %w", r.Type, errdefs.ErrNotImplemented)
}

// leaseHold records, inside tx, that the lease of ctx (if any) holds a
// resource. A lease named by the call but missing is an error, as in
// containerd: the caller believes its work is protected when it is not.
func leaseHold(ctx context.Context, tx *bolt.Tx, ns string, keys ...[]byte) error {
	id, ok := leases.FromContext(ctx)
	if !ok || id == "" {
		return nil
	}
	return hold(tx, ns, id, keys)
}

// hold makes lease id hold the resource at keys.
func hold(tx *bolt.Tx, ns, id string, keys [][]byte) error {
	b := bucketPath(nsBucket(tx, ns), bucketLeases, []byte(id))
	if b == nil {
		return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
	}
	rb, err := createBucketPath(b, keys[:len(keys)-1]...)
	if err != nil {
		return err
	}
	return rb.Put(keys[len(keys)-1], nil)
}

func adaptLease(l leases.Lease) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 0 {
			return "", false
		}
		switch fp[0] {
		case "id":
			return l.ID, l.ID != ""
		case "labels":
			return mapField(fp[1:], l.Labels)
		}
		return "", false
	})
}
