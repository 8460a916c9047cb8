// Package containerdroot reads what a stopped containerd left under its root
// directory: every namespace's images and content records from its meta.db,
// and the blobs from its content store, so that `flotilla adopt-containerd`
// can bring them into Flotilla. It reads meta.db with bbolt and the layout
// containerd documents (core/metadata/buckets.go), not with containerd's
// metadata package: only the parts below are read, and nothing is written.
//
//	<root>/io.containerd.metadata.v1.bolt/meta.db
//	└──v1                                   schema version bucket
//	   ├──version : <varint>                minor schema version (a key)
//	   ╘══<namespace>
//	      ├──labels
//	      │  ╘══<key> : <string>
//	      ├──images
//	      │  ╘══<image name>
//	      │     ├──createdat : <binary time>
//	      │     ├──updatedat : <binary time>
//	      │     ├──target
//	      │     │  ├──digest : <digest>
//	      │     │  ├──mediatype : <string>
//	      │     │  └──size : <varint>
//	      │     └──labels
//	      │        ╘══<key> : <string>
//	      └──content
//	         └──blob
//	            ╘══<blob digest>
//	               ├──createdat : <binary time>
//	               ├──updatedat : <binary time>
//	               ├──size : <varint>
//	               └──labels
//	                  ╘══<key> : <string>    gc.ref.* labels tie a blob to
//	                                         its children
//
//	<root>/io.containerd.content.v1.content/blobs/<algorithm>/<hex>
//
// Times are time.Time's MarshalBinary; sizes are binary.PutVarint (signed).
package containerdroot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// Paths of containerd's stores under its root.
const (
	MetadataDB  = "io.containerd.metadata.v1.bolt/meta.db"
	ContentRoot = "io.containerd.content.v1.content"
)

// Image is an image record of one namespace.
type Image struct {
	Name      string
	Target    ocispec.Descriptor
	Labels    map[string]string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Blob is a content record of one namespace: the blob's bytes are shared by
// every namespace that records it, in the content store.
type Blob struct {
	Digest    digest.Digest
	Size      int64
	Labels    map[string]string
	CreatedAt time.Time
}

// Namespace is one namespace's labels, images and content records.
type Namespace struct {
	Name   string
	Labels map[string]string
	Images []Image
	Blobs  []Blob
}

// ErrLocked says meta.db is locked: containerd is running.
var ErrLocked = errors.New("meta.db is locked: containerd is still running on this root (stop it: systemctl stop containerd)")

// lockTimeout is how long Read waits for containerd's lock on meta.db.
const lockTimeout = 2 * time.Second

// Read reads every namespace of the containerd root at root.
func Read(root string) ([]Namespace, error) {
	path := filepath.Join(root, MetadataDB)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no containerd metadata at %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	var out []Namespace
	err = db.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket([]byte("v1"))
		if v1 == nil {
			return fmt.Errorf("%s has no v1 bucket: not containerd's metadata, or a schema this does not know", path)
		}
		return v1.ForEachBucket(func(name []byte) error {
			ns, err := readNamespace(string(name), v1.Bucket(name))
			if err != nil {
				return fmt.Errorf("namespace %s: %w", name, err)
			}
			out = append(out, ns)
			return nil
		})
	})
	return out, err
}

func readNamespace(name string, b *bolt.Bucket) (Namespace, error) {
	ns := Namespace{Name: name, Labels: readLabels(b.Bucket([]byte("labels")))}
	if ib := b.Bucket([]byte("images")); ib != nil {
		err := ib.ForEachBucket(func(k []byte) error {
			img, err := readImage(string(k), ib.Bucket(k))
			if err != nil {
				return fmt.Errorf("image %s: %w", k, err)
			}
			ns.Images = append(ns.Images, img)
			return nil
		})
		if err != nil {
			return ns, err
		}
	}
	if cb := b.Bucket([]byte("content")); cb != nil {
		if bb := cb.Bucket([]byte("blob")); bb != nil {
			err := bb.ForEachBucket(func(k []byte) error {
				d, err := digest.Parse(string(k))
				if err != nil {
					return fmt.Errorf("blob %q: %w", k, err)
				}
				blob := bb.Bucket(k)
				ns.Blobs = append(ns.Blobs, Blob{
					Digest: d, Size: varint(blob.Get([]byte("size"))), Labels: readLabels(blob.Bucket([]byte("labels"))),
					CreatedAt: readTime(blob.Get([]byte("createdat"))),
				})
				return nil
			})
			if err != nil {
				return ns, err
			}
		}
	}
	sort.Slice(ns.Images, func(i, j int) bool { return ns.Images[i].Name < ns.Images[j].Name })
	return ns, nil
}

func readImage(name string, b *bolt.Bucket) (Image, error) {
	img := Image{
		Name: name, Labels: readLabels(b.Bucket([]byte("labels"))),
		CreatedAt: readTime(b.Get([]byte("createdat"))), UpdatedAt: readTime(b.Get([]byte("updatedat"))),
	}
	t := b.Bucket([]byte("target"))
	if t == nil {
		return img, errors.New("no target")
	}
	d, err := digest.Parse(string(t.Get([]byte("digest"))))
	if err != nil {
		return img, fmt.Errorf("target digest: %w", err)
	}
	img.Target = ocispec.Descriptor{Digest: d, MediaType: string(t.Get([]byte("mediatype"))), Size: varint(t.Get([]byte("size")))}
	return img, nil
}

func readLabels(b *bolt.Bucket) map[string]string {
	if b == nil {
		return nil
	}
	out := map[string]string{}
	_ = b.ForEach(func(k, v []byte) error {
		if v != nil {
			out[string(k)] = string(v)
		}
		return nil
	})
	return out
}

func varint(b []byte) int64 {
	v, n := binary.Varint(b)
	if n <= 0 {
		return 0
	}
	return v
}

func readTime(b []byte) time.Time {
	var t time.Time
	if len(b) > 0 {
		_ = t.UnmarshalBinary(b)
	}
	return t
}

// BlobPath is where containerd's content store keeps a blob's bytes.
func BlobPath(root string, d digest.Digest) string {
	return filepath.Join(root, ContentRoot, "blobs", d.Algorithm().String(), d.Encoded())
}
