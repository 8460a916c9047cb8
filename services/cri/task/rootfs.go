package task

import (
	"bytes"
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/image"
)

// Creating a sandbox or container with the client's stock options
// (WithNewSnapshot, WithImageConfig, WithUser) costs a dozen calls
// between processes: the manifest and config are each read twice (Info
// and Read, the read crossing three processes), the snapshotter's
// capabilities asked, and the new snapshot's mounts asked again by every
// option that looks at /etc/passwd or /etc/group. Everything those calls
// return is known here already: the config is content-addressed and
// cached in image.Info, and the mounts are what Prepare returned. The
// options below feed the same containerd code from that knowledge, so
// the spec comes out the same.

// cachedImage is an oci.Image whose config is served from the cache.
type cachedImage struct {
	content.Store
	info *image.Info
}

// CachedImage is the image for oci.WithImageConfig, its config served
// from info.
func (s *Service) CachedImage(info *image.Info) oci.Image {
	return cachedImage{Store: s.client.ContentStore(), info: info}
}

func (c cachedImage) Config(context.Context) (ocispec.Descriptor, error) {
	return c.info.Config, nil
}

func (c cachedImage) ContentStore() content.Store { return c }

func (c cachedImage) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if desc.Digest == c.info.Config.Digest && c.info.ConfigBlob != nil {
		return blobReader{bytes.NewReader(c.info.ConfigBlob)}, nil
	}
	return c.Store.ReaderAt(ctx, desc)
}

type blobReader struct{ *bytes.Reader }

func (blobReader) Close() error { return nil }

// WithCreateLease gives ctx the lease NewContainer would make itself (the
// client's, expiring in a day) and returns its release, which deletes it
// in the background: once the record exists it holds the snapshot, and a
// delete lost to a crash is made up for by the expiry, so the create
// need not wait for it.
func (s *Service) WithCreateLease(ctx context.Context) (context.Context, func(), error) {
	lctx, done, err := s.client.WithLease(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("create lease: %w", err)
	}
	return lctx, func() {
		go func() {
			if err := done(context.WithoutCancel(ctx)); err != nil && !errdefs.IsNotFound(err) {
				logging.G(ctx).Warn("delete create lease", "error", err)
			}
		}()
	}, nil
}

// Rootfs is a container's new snapshot: its key and the mounts Prepare
// returned for it, filled in by WithRootfs.
type Rootfs struct {
	key    string
	mounts []mount.Mount
}

// WithRootfs prepares the container's snapshot over the image's layers, as
// containerd.WithNewSnapshot does, with the chain ID from the cache, and
// names the image on the record.
func (s *Service) WithRootfs(id string, img *image.Image, r *Rootfs) containerd.NewContainerOpts {
	return func(ctx context.Context, client *containerd.Client, c *containers.Container) error {
		mounts, err := client.SnapshotService(s.snapshotter).Prepare(ctx, id, img.Info.ChainID)
		if err != nil {
			return fmt.Errorf("prepare rootfs of %s from image %s: %w", id, img.Info.ID, err)
		}
		c.Snapshotter, c.SnapshotKey, c.Image = s.snapshotter, id, img.Name()
		r.key, r.mounts = id, mounts
		return nil
	}
}

// WithSpec is containerd.WithNewSpec with the prepared snapshot's mounts
// given to the options that read the rootfs, instead of asked for again.
func WithSpec(r *Rootfs, opts ...oci.SpecOpts) containerd.NewContainerOpts {
	return func(ctx context.Context, client *containerd.Client, c *containers.Container) error {
		spec, err := oci.GenerateSpec(ctx, preparedClient{Client: client, r: r}, c, opts...)
		if err != nil {
			return err
		}
		c.Spec, err = typeurl.MarshalAny(spec)
		return err
	}
}

// preparedClient answers Mounts of the prepared snapshot itself; it embeds
// the client so that the options see everything else (its mount manager
// among them) unchanged.
type preparedClient struct {
	*containerd.Client
	r *Rootfs
}

func (p preparedClient) SnapshotService(name string) snapshots.Snapshotter {
	return preparedSnapshotter{Snapshotter: p.Client.SnapshotService(name), r: p.r}
}

type preparedSnapshotter struct {
	snapshots.Snapshotter
	r *Rootfs
}

func (p preparedSnapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	if p.r.mounts != nil && key == p.r.key {
		// A copy each time: a read-only temporary mount rewrites
		// the options of the mounts it is given.
		out := make([]mount.Mount, len(p.r.mounts))
		for i, m := range p.r.mounts {
			m.Options = append([]string(nil), m.Options...)
			out[i] = m
		}
		return out, nil
	}
	return p.Snapshotter.Mounts(ctx, key)
}

// Mounts are the mounts Prepare returned, nil before WithRootfs ran.
func (r *Rootfs) Mounts() []mount.Mount { return r.mounts }
