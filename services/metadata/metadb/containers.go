package metadb

import (
	"context"
	"fmt"
	"strings"
	"time"

	api "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A container is kept as its API message (spec, runtime options and
// extensions are Anys meaning nothing here), beside the fields the
// collector follows, so that GC never decodes a message.

// GetContainer returns a container of the call's namespace.
func (db *DB) GetContainer(ctx context.Context, id string) (*api.Container, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	var c *api.Container
	err = db.bolt.View(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketContainers, []byte(id))
		if b == nil {
			return fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
		}
		c, err = readContainer(b)
		return err
	})
	return c, err
}

// ListContainers lists the containers matching any filter (fields id,
// image, runtime.name, labels.<k>).
func (db *DB) ListContainers(ctx context.Context, fs ...string) ([]*api.Container, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("container filters %q: %w", fs, errdefs.ErrInvalidArgument)
	}
	var out []*api.Container
	err = db.bolt.View(func(tx *bolt.Tx) error {
		cb := bucketPath(nsBucket(tx, ns), bucketContainers)
		if cb == nil {
			return nil
		}
		return cb.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			c, err := readContainer(cb.Bucket(k))
			if err != nil {
				return err
			}
			if filter.Match(adaptContainer(c)) {
				out = append(out, c)
			}
			return nil
		})
	})
	return out, err
}

// CreateContainer records a new container.
func (db *DB) CreateContainer(ctx context.Context, c *api.Container) (*api.Container, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("request carries no container: %w", errdefs.ErrInvalidArgument)
	}
	c = proto.Clone(c).(*api.Container)
	if err := validateContainer(c); err != nil {
		return nil, err
	}
	now := timestamppb.New(time.Now().UTC())
	c.CreatedAt, c.UpdatedAt = now, now
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		nb, err := createNSBucket(tx, ns)
		if err != nil {
			return err
		}
		cb, err := nb.CreateBucketIfNotExists(bucketContainers)
		if err != nil {
			return err
		}
		if cb.Bucket([]byte(c.ID)) != nil {
			return fmt.Errorf("container %q: %w", c.ID, errdefs.ErrAlreadyExists)
		}
		b, err := cb.CreateBucket([]byte(c.ID))
		if err != nil {
			return err
		}
		return writeContainer(b, c)
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// UpdateContainer changes a container by containerd's field paths: labels,
// labels.<k>, extensions, extensions.<k>, image, spec, snapshotkey; none
// means all of them. The runtime and snapshotter cannot change.
func (db *DB) UpdateContainer(ctx context.Context, in *api.Container, paths ...string) (*api.Container, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if in == nil || in.ID == "" {
		return nil, fmt.Errorf("container id must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	var out *api.Container
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketContainers, []byte(in.ID))
		if b == nil {
			return fmt.Errorf("container %q in namespace %q: %w", in.ID, ns, errdefs.ErrNotFound)
		}
		cur, err := readContainer(b)
		if err != nil {
			return err
		}
		if len(paths) == 0 {
			paths = []string{"labels", "extensions", "image", "spec", "snapshotkey"}
		}
		var labelPaths []string
		for _, p := range paths {
			switch {
			case p == "labels" || strings.HasPrefix(p, "labels."):
				labelPaths = append(labelPaths, p)
			case p == "extensions":
				cur.Extensions = in.Extensions
			case strings.HasPrefix(p, "extensions."):
				name := strings.TrimPrefix(p, "extensions.")
				if ext, ok := in.Extensions[name]; ok {
					if cur.Extensions == nil {
						cur.Extensions = map[string]*anypb.Any{}
					}
					cur.Extensions[name] = ext
				} else {
					delete(cur.Extensions, name)
				}
			case p == "image":
				cur.Image = in.Image
			case p == "spec":
				cur.Spec = in.Spec
			case p == "snapshotkey":
				cur.SnapshotKey = in.SnapshotKey
			default:
				return fmt.Errorf("cannot update %q field on container %q: %w", p, in.ID, errdefs.ErrInvalidArgument)
			}
		}
		if len(labelPaths) > 0 {
			cur.Labels, _ = applyLabelPaths(cur.Labels, in.Labels, labelPaths)
		}
		if err := validateContainer(cur); err != nil {
			return err
		}
		cur.UpdatedAt = timestamppb.New(time.Now().UTC())
		if err := writeContainer(b, cur); err != nil {
			return err
		}
		out = cur
		return nil
	})
	return out, err
}

// DeleteContainer forgets a container; what only it held (its snapshot)
// goes with the next collection.
func (db *DB) DeleteContainer(ctx context.Context, id string) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		cb := bucketPath(nsBucket(tx, ns), bucketContainers)
		if cb == nil || cb.Bucket([]byte(id)) == nil {
			return fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
		}
		return cb.DeleteBucket([]byte(id))
	})
	if err != nil {
		return err
	}
	db.dirty(false)
	return nil
}

func validateContainer(c *api.Container) error {
	if err := identifiers.Validate(c.ID); err != nil {
		return fmt.Errorf("container id %q: %w", c.ID, err)
	}
	if err := validateLabels(c.Labels); err != nil {
		return err
	}
	for name := range c.Extensions {
		if name == "" {
			return fmt.Errorf("container %q: extension with an empty name: %w", c.ID, errdefs.ErrInvalidArgument)
		}
	}
	if c.Runtime == nil || c.Runtime.Name == "" {
		return fmt.Errorf("container %q: runtime name must be set: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	if c.Spec == nil {
		return fmt.Errorf("container %q: spec must be set: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	if c.SnapshotKey != "" && c.Snapshotter == "" {
		return fmt.Errorf("container %q: snapshotter must be set with a snapshot key: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	return nil
}

func readContainer(b *bolt.Bucket) (*api.Container, error) {
	var c api.Container
	if err := proto.Unmarshal(b.Get(keyRecord), &c); err != nil {
		return nil, fmt.Errorf("container record: %w", err)
	}
	return &c, nil
}

// writeContainer stores the message and, beside it, the labels and the
// snapshot the collector follows.
func writeContainer(b *bolt.Bucket, c *api.Container) error {
	v, err := proto.Marshal(c)
	if err != nil {
		return err
	}
	if err := b.Put(keyRecord, v); err != nil {
		return err
	}
	if err := writeMap(b, bucketLabels, c.Labels); err != nil {
		return err
	}
	if c.SnapshotKey == "" {
		_ = b.Delete(keySnapshotKey)
		return b.Delete(keySnapshotter)
	}
	if err := b.Put(keySnapshotter, []byte(c.Snapshotter)); err != nil {
		return err
	}
	return b.Put(keySnapshotKey, []byte(c.SnapshotKey))
}

func adaptContainer(c *api.Container) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 0 {
			return "", false
		}
		switch fp[0] {
		case "id":
			return c.ID, c.ID != ""
		case "image":
			return c.Image, c.Image != ""
		case "runtime":
			if len(fp) == 2 && fp[1] == "name" && c.Runtime != nil {
				return c.Runtime.Name, c.Runtime.Name != ""
			}
		case "snapshotter":
			return c.Snapshotter, c.Snapshotter != ""
		case "labels":
			return mapField(fp[1:], c.Labels)
		}
		return "", false
	})
}
