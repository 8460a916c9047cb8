package manager

// The mounts service's records live in <state>/mounts.db (bbolt), on the
// state directory (a tmpfs, usually) because mounts do not outlive a reboot
// either. Only this service opens it.
//
//	v1
//	└── <namespace>
//	    ├── mounts
//	    │   └── <activation name>
//	    │       ├── id        uvarint: the activation's number, which names
//	    │       │             its directory <state>/t/<id>
//	    │       ├── created   time (MarshalBinary)
//	    │       ├── updated   time
//	    │       ├── lease     the lease it was activated under, if any
//	    │       ├── labels
//	    │       │   └── <key> value
//	    │       ├── active    (absent until the activation completed: a
//	    │       │   │          record without it is one a crash interrupted)
//	    │       │   └── <index, 2 bytes big endian>
//	    │       │       ├── type, source, target
//	    │       │       ├── options     NUL-separated
//	    │       │       ├── mountpoint  where it is mounted, under <state>/t/<id>
//	    │       │       └── mountedat   time
//	    │       └── system
//	    │           └── <index, 2 bytes big endian>
//	    │               └── type, source, target, options
//	    └── leases
//	        └── <lease id>
//	            └── <activation name>   (empty value)

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketV1     = []byte("v1")
	bucketMounts = []byte("mounts")
	bucketLeases = []byte("leases")
	bucketLabels = []byte("labels")
	bucketActive = []byte("active")
	bucketSystem = []byte("system")

	keyID         = []byte("id")
	keyCreated    = []byte("created")
	keyUpdated    = []byte("updated")
	keyLease      = []byte("lease")
	keyType       = []byte("type")
	keySource     = []byte("source")
	keyTarget     = []byte("target")
	keyOptions    = []byte("options")
	keyMountPoint = []byte("mountpoint")
	keyMountedAt  = []byte("mountedat")
)

// bucket walks down a path of buckets, nil if any is missing.
func bucket(tx *bolt.Tx, path ...[]byte) *bolt.Bucket {
	b := tx.Bucket(path[0])
	for _, p := range path[1:] {
		if b == nil {
			return nil
		}
		b = b.Bucket(p)
	}
	return b
}

func mountsBucket(tx *bolt.Tx, ns string) *bolt.Bucket {
	return bucket(tx, bucketV1, []byte(ns), bucketMounts)
}

// record is one activation as stored.
type record struct {
	id      uint64
	lease   string
	created time.Time
	updated time.Time
	info    mount.ActivationInfo
	// complete is false for an activation a crash interrupted.
	complete bool
}

func readRecord(name string, b *bolt.Bucket) (record, error) {
	r := record{info: mount.ActivationInfo{Name: name}}
	r.id, _ = binary.Uvarint(b.Get(keyID))
	r.lease = string(b.Get(keyLease))
	_ = r.created.UnmarshalBinary(b.Get(keyCreated))
	_ = r.updated.UnmarshalBinary(b.Get(keyUpdated))
	if lb := b.Bucket(bucketLabels); lb != nil {
		r.info.Labels = map[string]string{}
		_ = lb.ForEach(func(k, v []byte) error {
			r.info.Labels[string(k)] = string(v)
			return nil
		})
	}
	if ab := b.Bucket(bucketActive); ab != nil {
		r.complete = true
		if err := ab.ForEachBucket(func(k []byte) error {
			mb := ab.Bucket(k)
			a := mount.ActiveMount{Mount: readMount(mb), MountPoint: string(mb.Get(keyMountPoint))}
			if v := mb.Get(keyMountedAt); v != nil {
				var t time.Time
				if err := t.UnmarshalBinary(v); err != nil {
					return fmt.Errorf("activation %s: mounted at: %w", name, err)
				}
				a.MountedAt = &t
			}
			r.info.Active = append(r.info.Active, a)
			return nil
		}); err != nil {
			return r, err
		}
	}
	if sb := b.Bucket(bucketSystem); sb != nil {
		_ = sb.ForEachBucket(func(k []byte) error {
			r.info.System = append(r.info.System, readMount(sb.Bucket(k)))
			return nil
		})
	}
	return r, nil
}

func readMount(b *bolt.Bucket) mount.Mount {
	m := mount.Mount{
		Type:   string(b.Get(keyType)),
		Source: string(b.Get(keySource)),
		Target: string(b.Get(keyTarget)),
	}
	if v := b.Get(keyOptions); len(v) > 0 {
		m.Options = strings.Split(string(v), "\x00")
	}
	return m
}

func putMount(b *bolt.Bucket, m mount.Mount) error {
	for k, v := range map[string]string{string(keyType): m.Type, string(keySource): m.Source, string(keyTarget): m.Target} {
		if v == "" {
			continue
		}
		if err := b.Put([]byte(k), []byte(v)); err != nil {
			return err
		}
	}
	if len(m.Options) > 0 {
		return b.Put(keyOptions, []byte(strings.Join(m.Options, "\x00")))
	}
	return nil
}

func index(i int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(i)) }

func putTime(b *bolt.Bucket, k []byte, t time.Time) error {
	v, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	return b.Put(k, v)
}

func putLabels(b *bolt.Bucket, labels map[string]string) error {
	if b.Bucket(bucketLabels) != nil {
		if err := b.DeleteBucket(bucketLabels); err != nil {
			return err
		}
	}
	if len(labels) == 0 {
		return nil
	}
	lb, err := b.CreateBucket(bucketLabels)
	if err != nil {
		return err
	}
	for k, v := range labels {
		if err := lb.Put([]byte(k), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// putActivation writes what an activation mounted and what it leaves to the
// caller: the record is complete from then on.
func putActivation(b *bolt.Bucket, active []mount.ActiveMount, system []mount.Mount, now time.Time) error {
	if len(active) > 1<<16 || len(system) > 1<<16 {
		return fmt.Errorf("%d mounts: too many: %w", len(active)+len(system), errdefs.ErrInvalidArgument)
	}
	ab, err := b.CreateBucket(bucketActive)
	if err != nil {
		return err
	}
	for i, a := range active {
		mb, err := ab.CreateBucket(index(i))
		if err != nil {
			return err
		}
		if err := putMount(mb, a.Mount); err != nil {
			return err
		}
		if err := mb.Put(keyMountPoint, []byte(a.MountPoint)); err != nil {
			return err
		}
		if a.MountedAt != nil {
			if err := putTime(mb, keyMountedAt, *a.MountedAt); err != nil {
				return err
			}
		}
	}
	if len(system) > 0 {
		sb, err := b.CreateBucket(bucketSystem)
		if err != nil {
			return err
		}
		for i, m := range system {
			mb, err := sb.CreateBucket(index(i))
			if err != nil {
				return err
			}
			if err := putMount(mb, m); err != nil {
				return err
			}
		}
	}
	return putTime(b, keyUpdated, now)
}

// deleteRecord removes an activation's record and its lease's reference.
func deleteRecord(tx *bolt.Tx, ns, name string) error {
	mb := mountsBucket(tx, ns)
	if mb == nil || mb.Bucket([]byte(name)) == nil {
		return nil
	}
	if lease := mb.Bucket([]byte(name)).Get(keyLease); len(lease) > 0 {
		if lb := bucket(tx, bucketV1, []byte(ns), bucketLeases, lease); lb != nil {
			if err := lb.Delete([]byte(name)); err != nil {
				return err
			}
			if k, _ := lb.Cursor().First(); k == nil {
				if err := bucket(tx, bucketV1, []byte(ns), bucketLeases).DeleteBucket(lease); err != nil {
					return err
				}
			}
		}
	}
	return mb.DeleteBucket([]byte(name))
}
