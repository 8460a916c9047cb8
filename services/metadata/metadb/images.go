package metadb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// GetImage returns an image of the call's namespace.
func (db *DB) GetImage(ctx context.Context, name string) (images.Image, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return images.Image{}, err
	}
	var img images.Image
	err = db.bolt.View(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketImages, []byte(name))
		if b == nil {
			return fmt.Errorf("image %q: %w", name, errdefs.ErrNotFound)
		}
		img = readImage(name, b)
		return nil
	})
	return img, err
}

// ListImages lists the images of the call's namespace that match any of
// the filters (all when none is given).
func (db *DB) ListImages(ctx context.Context, fs ...string) ([]images.Image, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("image filters %q: %w", fs, errdefs.ErrInvalidArgument)
	}
	var out []images.Image
	err = db.bolt.View(func(tx *bolt.Tx) error {
		ib := bucketPath(nsBucket(tx, ns), bucketImages)
		if ib == nil {
			return nil
		}
		return ib.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			img := readImage(string(k), ib.Bucket(k))
			if filter.Match(adaptImage(img)) {
				out = append(out, img)
			}
			return nil
		})
	})
	return out, err
}

// CreateImage records a new image; it fails if the name is taken.
func (db *DB) CreateImage(ctx context.Context, img images.Image) (images.Image, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return images.Image{}, err
	}
	if err := validateImage(&img); err != nil {
		return images.Image{}, err
	}
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		nb, err := createNSBucket(tx, ns)
		if err != nil {
			return err
		}
		ib, err := nb.CreateBucketIfNotExists(bucketImages)
		if err != nil {
			return err
		}
		if ib.Bucket([]byte(img.Name)) != nil {
			return fmt.Errorf("image %q: %w", img.Name, errdefs.ErrAlreadyExists)
		}
		b, err := ib.CreateBucket([]byte(img.Name))
		if err != nil {
			return err
		}
		img.CreatedAt = time.Now().UTC()
		img.UpdatedAt = img.CreatedAt
		if err := writeImage(b, img); err != nil {
			return err
		}
		// As containerd: an image meant to expire is also held by the
		// call's lease, so it outlives its expiry while the work that
		// created it is in progress.
		if _, ok := img.Labels[labelGCExpire]; ok {
			return leaseHold(ctx, tx, ns, bucketImages, []byte(img.Name))
		}
		return nil
	})
	if err != nil {
		return images.Image{}, err
	}
	return img, nil
}

// UpdateImage changes an image by containerd's field paths: labels,
// labels.<k>, annotations, annotations.<k>, target; none means all of them.
func (db *DB) UpdateImage(ctx context.Context, img images.Image, paths ...string) (images.Image, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return images.Image{}, err
	}
	if img.Name == "" {
		return images.Image{}, fmt.Errorf("image name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	var out images.Image
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketImages, []byte(img.Name))
		if b == nil {
			return fmt.Errorf("image %q: %w", img.Name, errdefs.ErrNotFound)
		}
		cur := readImage(img.Name, b)
		if len(paths) == 0 {
			cur.Labels = copyMap(img.Labels)
			cur.Target = img.Target
		} else {
			var rest []string
			cur.Labels, rest = applyLabelPaths(cur.Labels, img.Labels, paths)
			for _, p := range rest {
				switch {
				case p == "target":
					cur.Target = img.Target
				case p == "annotations":
					cur.Target.Annotations = copyMap(img.Target.Annotations)
				case strings.HasPrefix(p, "annotations."):
					k := strings.TrimPrefix(p, "annotations.")
					if v, ok := img.Target.Annotations[k]; ok && v != "" {
						if cur.Target.Annotations == nil {
							cur.Target.Annotations = map[string]string{}
						}
						cur.Target.Annotations[k] = v
					} else {
						delete(cur.Target.Annotations, k)
					}
				default:
					return fmt.Errorf("cannot update %q field on image %q: %w", p, img.Name, errdefs.ErrInvalidArgument)
				}
			}
		}
		if err := validateImage(&cur); err != nil {
			return err
		}
		cur.UpdatedAt = time.Now().UTC()
		if err := writeImage(b, cur); err != nil {
			return err
		}
		out = cur
		return nil
	})
	return out, err
}

// DeleteImage removes an image; what it alone held is collected later, or
// before the call returns when sync is set.
// A target, when given, must be the image's current one: the caller deletes
// the image it looked at, not a newer one under the same name.
func (db *DB) DeleteImage(ctx context.Context, name string, target digest.Digest, sync bool) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		ib := bucketPath(nsBucket(tx, ns), bucketImages)
		if ib == nil || ib.Bucket([]byte(name)) == nil {
			return fmt.Errorf("image %q: %w", name, errdefs.ErrNotFound)
		}
		if target != "" {
			if cur := readImage(name, ib.Bucket([]byte(name))); cur.Target.Digest != target {
				return fmt.Errorf("image %q has target %s, not %s: %w", name, cur.Target.Digest, target, errdefs.ErrFailedPrecondition)
			}
		}
		return ib.DeleteBucket([]byte(name))
	})
	if err != nil {
		return err
	}
	db.dirty(sync)
	return nil
}

func validateImage(img *images.Image) error {
	if img.Name == "" {
		return fmt.Errorf("image name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := validateLabels(img.Labels); err != nil {
		return err
	}
	if err := img.Target.Digest.Validate(); err != nil {
		return fmt.Errorf("image %q: target digest %q: %v: %w", img.Name, img.Target.Digest, err, errdefs.ErrInvalidArgument)
	}
	if img.Target.Size <= 0 {
		return fmt.Errorf("image %q: target size must be greater than zero: %w", img.Name, errdefs.ErrInvalidArgument)
	}
	if img.Target.MediaType == "" {
		return fmt.Errorf("image %q: target mediatype must not be empty: %w", img.Name, errdefs.ErrInvalidArgument)
	}
	return nil
}

func readImage(name string, b *bolt.Bucket) images.Image {
	img := images.Image{
		Name:      name,
		CreatedAt: getTime(b, keyCreatedAt),
		UpdatedAt: getTime(b, keyUpdatedAt),
		Labels:    readMap(b, bucketLabels),
	}
	if tb := b.Bucket(bucketTarget); tb != nil {
		img.Target = ocispec.Descriptor{
			Digest:      digest.Digest(tb.Get(keyDigest)),
			MediaType:   string(tb.Get(keyMediaType)),
			Size:        getInt(tb, keySize),
			Annotations: readMap(tb, bucketAnnots),
		}
	}
	return img
}

func writeImage(b *bolt.Bucket, img images.Image) error {
	if err := putTime(b, keyCreatedAt, img.CreatedAt); err != nil {
		return err
	}
	if err := putTime(b, keyUpdatedAt, img.UpdatedAt); err != nil {
		return err
	}
	if err := writeMap(b, bucketLabels, img.Labels); err != nil {
		return err
	}
	tb, err := b.CreateBucketIfNotExists(bucketTarget)
	if err != nil {
		return err
	}
	if err := tb.Put(keyDigest, []byte(img.Target.Digest)); err != nil {
		return err
	}
	if err := tb.Put(keyMediaType, []byte(img.Target.MediaType)); err != nil {
		return err
	}
	if err := putInt(tb, keySize, img.Target.Size); err != nil {
		return err
	}
	return writeMap(tb, bucketAnnots, img.Target.Annotations)
}

// adaptImage exposes an image to filters as containerd does: name,
// target.digest, target.mediatype, labels.<k>, annotations.<k>.
func adaptImage(img images.Image) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 0 {
			return "", false
		}
		switch fp[0] {
		case "name":
			return img.Name, img.Name != ""
		case "target":
			if len(fp) < 2 {
				return "", false
			}
			switch fp[1] {
			case "digest":
				return img.Target.Digest.String(), img.Target.Digest != ""
			case "mediatype":
				return img.Target.MediaType, img.Target.MediaType != ""
			}
		case "labels":
			return mapField(fp[1:], img.Labels)
		case "annotations":
			return mapField(fp[1:], img.Target.Annotations)
		}
		return "", false
	})
}

func mapField(fp []string, m map[string]string) (string, bool) {
	if len(fp) == 0 || m == nil {
		return "", false
	}
	v, ok := m[strings.Join(fp, ".")]
	return v, ok
}
