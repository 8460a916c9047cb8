package blobs

import (
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// meta.db holds what a blob's file cannot: its labels, and creation and
// update times that do not depend on the filesystem's atime handling.
//
//	v1                       schema version
//	  blobs
//	    <digest>             one bucket per committed blob, "sha256:<hex>"
//	      createdat          time.Time.MarshalBinary
//	      updatedat          time.Time.MarshalBinary
//	      labels             bucket
//	        <key>            <value>
//
// A blob committed without labels has no record (its file's times are set to
// the commit's); one is made when its labels are first updated.
//
// The blob file is the truth: a record without a file is stale (a crash
// between removing a blob and its record) and is replaced at the next commit
// of that digest; a file without a record (a crash between the rename into
// blobs/ and the record's write) has no labels and takes its times from the
// file.
var (
	bucketV1        = []byte("v1")
	bucketBlobs     = []byte("blobs")
	bucketLabels    = []byte("labels")
	keyCreatedAt    = []byte("createdat")
	keyUpdatedAt    = []byte("updatedat")
	errNoMetaRecord = errors.New("no metadata record")
)

type metaRecord struct {
	createdAt time.Time
	updatedAt time.Time
	labels    map[string]string
}

type metaDB struct {
	db *bolt.DB
}

func openMeta(path string) (*metaDB, error) {
	// A second process on the same root would corrupt ingests and blobs
	// under the first one's feet; bbolt's file lock is what notices it.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another process is using this content root", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		v1, err := tx.CreateBucketIfNotExists(bucketV1)
		if err != nil {
			return err
		}
		_, err = v1.CreateBucketIfNotExists(bucketBlobs)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise %s: %w", path, err)
	}
	return &metaDB{db: db}, nil
}

func (m *metaDB) close() error { return m.db.Close() }

func blobsBucket(tx *bolt.Tx) *bolt.Bucket {
	return tx.Bucket(bucketV1).Bucket(bucketBlobs)
}

// get returns the record of d, or errNoMetaRecord.
func (m *metaDB) get(d digest.Digest) (metaRecord, error) {
	var rec metaRecord
	err := m.db.View(func(tx *bolt.Tx) error {
		b := blobsBucket(tx).Bucket([]byte(d))
		if b == nil {
			return errNoMetaRecord
		}
		var err error
		rec, err = readRecord(b)
		return err
	})
	return rec, err
}

func readRecord(b *bolt.Bucket) (metaRecord, error) {
	var rec metaRecord
	if err := rec.createdAt.UnmarshalBinary(b.Get(keyCreatedAt)); err != nil {
		return rec, fmt.Errorf("createdat: %w", err)
	}
	if err := rec.updatedAt.UnmarshalBinary(b.Get(keyUpdatedAt)); err != nil {
		return rec, fmt.Errorf("updatedat: %w", err)
	}
	if lb := b.Bucket(bucketLabels); lb != nil {
		rec.labels = map[string]string{}
		if err := lb.ForEach(func(k, v []byte) error {
			rec.labels[string(k)] = string(v)
			return nil
		}); err != nil {
			return rec, err
		}
		if len(rec.labels) == 0 {
			rec.labels = nil
		}
	}
	return rec, nil
}

// put replaces the record of d.
func (m *metaDB) put(d digest.Digest, rec metaRecord) error {
	return m.db.Update(func(tx *bolt.Tx) error {
		return writeRecord(blobsBucket(tx), d, rec)
	})
}

func writeRecord(blobs *bolt.Bucket, d digest.Digest, rec metaRecord) error {
	key := []byte(d)
	if blobs.Bucket(key) != nil {
		if err := blobs.DeleteBucket(key); err != nil {
			return err
		}
	}
	b, err := blobs.CreateBucket(key)
	if err != nil {
		return err
	}
	created, err := rec.createdAt.MarshalBinary()
	if err != nil {
		return err
	}
	updated, err := rec.updatedAt.MarshalBinary()
	if err != nil {
		return err
	}
	if err := b.Put(keyCreatedAt, created); err != nil {
		return err
	}
	if err := b.Put(keyUpdatedAt, updated); err != nil {
		return err
	}
	if len(rec.labels) == 0 {
		return nil
	}
	lb, err := b.CreateBucket(bucketLabels)
	if err != nil {
		return err
	}
	for k, v := range rec.labels {
		if err := lb.Put([]byte(k), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// update applies fn to the record of d in one transaction; fallback is the
// record to start from when d has none.
func (m *metaDB) update(d digest.Digest, fallback metaRecord, fn func(*metaRecord)) (metaRecord, error) {
	var rec metaRecord
	err := m.db.Update(func(tx *bolt.Tx) error {
		blobs := blobsBucket(tx)
		rec = fallback
		if b := blobs.Bucket([]byte(d)); b != nil {
			r, err := readRecord(b)
			if err != nil {
				return err
			}
			rec = r
		}
		fn(&rec)
		return writeRecord(blobs, d, rec)
	})
	return rec, err
}

func (m *metaDB) delete(d digest.Digest) error {
	return m.db.Update(func(tx *bolt.Tx) error {
		err := blobsBucket(tx).DeleteBucket([]byte(d))
		if errors.Is(err, berrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}

// deleteIfPresent removes the record of d, if there is one, with a write
// transaction only then.
func (m *metaDB) deleteIfPresent(d digest.Digest) error {
	var present bool
	if err := m.db.View(func(tx *bolt.Tx) error {
		present = blobsBucket(tx).Bucket([]byte(d)) != nil
		return nil
	}); err != nil || !present {
		return err
	}
	return m.delete(d)
}
