package imagetransfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// labelRefSource marks, as containerd's importer does, the manifests of an
// imported index whose names come from their annotations.
const labelRefSource = "io.containerd.import.ref-source"

// importArchive reads an image archive (an OCI layout or a docker save tar)
// into the content store, unpacks it when dst asks, and stores its images
// under the names dst makes of the archive's.
func (e *Engine) importArchive(ctx context.Context, src transfer.ImageImporter, dst transfer.ImageStorer, p *progress) error {
	ctx, lease, err := e.withLease(ctx)
	if err != nil {
		return err
	}
	defer lease.end(ctx)
	p.status("Importing")
	index, err := src.Import(ctx, e.stores.Content)
	if err != nil {
		return archiveError(err)
	}
	store := e.stores.Content
	descs := []ocispec.Descriptor{index}
	var handler images.HandlerFunc = func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if desc.Digest != index.Digest {
			return images.Children(ctx, store, desc)
		}
		b, err := content.ReadBlob(ctx, store, desc)
		if err != nil {
			return nil, err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("archive index: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		for i := range idx.Manifests {
			a := maps.Clone(idx.Manifests[i].Annotations)
			if a == nil {
				a = map[string]string{}
			}
			a[labelRefSource] = "annotation"
			idx.Manifests[i].Annotations = a
			descs = append(descs, idx.Manifests[i])
		}
		return idx.Manifests, nil
	}
	if f, ok := dst.(transfer.ImageFilterer); ok {
		handler = f.ImageFilter(handler, store)
	}
	var h images.Handler = handler
	u, err := e.newUnpacker(ctx, dst, nil)
	if err != nil {
		return err
	}
	if u != nil {
		h = u.wrap(h)
	}
	if err := images.WalkNotEmpty(ctx, h, index); err != nil {
		if u != nil {
			_ = u.wait()
		}
		return archiveError(err)
	}
	if u != nil {
		if err := u.wait(); err != nil {
			return err
		}
	}
	lease.hold(index)
	for _, desc := range descs {
		imgs, err := dst.Store(ctx, desc, e.stores.Images)
		if err != nil {
			if errdefs.IsNotFound(err) {
				logging.G(ctx).Debug("no image name for an imported manifest", "digest", desc.Digest)
				continue
			}
			return err
		}
		for _, img := range imgs {
			p.saved(img.Name, desc)
		}
	}
	p.status("Completed import")
	return nil
}

// archiveError classifies what reading an archive failed at: an archive
// that is not one (a truncated tar, a blob that is not what the index says,
// JSON that does not parse) is the caller's bad input, InvalidArgument,
// unless the failure was classified already (the content store's answers).
func archiveError(err error) error {
	if err == nil || !errdefs.IsUnknown(errdefs.Resolve(err)) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("import archive: %v: %w", err, errdefs.ErrInvalidArgument)
}

// export writes the images src names to the archive dst.
func (e *Engine) export(ctx context.Context, src transfer.ImageGetter, dst transfer.ImageExporter, p *progress) error {
	p.status("Exporting")
	var (
		imgs []images.Image
		err  error
	)
	if l, ok := src.(transfer.ImageLookup); ok {
		if imgs, err = l.Lookup(ctx, e.stores.Images); err != nil {
			return err
		}
	} else {
		img, err := src.Get(ctx, e.stores.Images)
		if err != nil {
			return err
		}
		imgs = append(imgs, img)
	}
	err = dst.Export(ctx, e.stores.Content, imgs)
	if s, ok := dst.(transfer.ImageExportStreamer); ok {
		// The end of the stream tells the client the archive is whole,
		// before it hears the transfer is done.
		if w, _, serr := s.ExportStream(ctx); serr == nil && w != nil {
			if cerr := w.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		return err
	}
	p.status("Completed export")
	return nil
}
