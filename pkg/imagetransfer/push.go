package imagetransfer

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// push uploads the image src names, with every blob it refers to (those
// of the platforms src names, all when it names none), to dst.
func (e *Engine) push(ctx context.Context, src transfer.ImageGetter, dst transfer.ImagePusher, p *progress) error {
	matcher := platforms.All
	if g, ok := src.(transfer.ImagePlatformsGetter); ok {
		if ps := g.Platforms(); len(ps) > 0 {
			matcher = platforms.Any(ps...)
		}
	}
	img, err := src.Get(ctx, e.stores.Images)
	if err != nil {
		return err
	}
	p.status(fmt.Sprintf("Pushing to %s", dst))
	p.send(transfer.Progress{Event: "pushing content", Name: img.Name, Desc: &img.Target})
	pusher, err := dst.Pusher(ctx, img.Target)
	if err != nil {
		return registryError(err)
	}
	var wrapper func(images.Handler) images.Handler
	if t := p.track(img.Name, "uploading"); t != nil {
		defer t.Close()
		pusher = &progressPusher{Pusher: pusher, t: t}
		wrapper = func(h images.Handler) images.Handler {
			return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
				t.add(ctx, desc)
				children, err := h.Handle(ctx, desc)
				t.children(ctx, desc, children)
				return children, err
			})
		}
	}
	if err := remotes.PushContent(ctx, pusher, img.Target, e.stores.Content, e.uploads, matcher, wrapper); err != nil {
		return registryError(err)
	}
	p.send(transfer.Progress{Event: "pushed content", Name: img.Name, Desc: &img.Target})
	p.send(transfer.Progress{Event: fmt.Sprintf("Completed push to %s", dst), Desc: &img.Target})
	return nil
}

// progressPusher counts the bytes of each blob it uploads.
type progressPusher struct {
	remotes.Pusher
	t *tracker
}

func (p *progressPusher) Push(ctx context.Context, d ocispec.Descriptor) (content.Writer, error) {
	w, err := p.Pusher.Push(ctx, d)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			p.t.exists(ctx, d)
		}
		return nil, err
	}
	return &progressWriter{Writer: w, ctx: ctx, desc: d, t: p.t, moved: p.t.moved(ctx, d)}, nil
}

type progressWriter struct {
	content.Writer
	ctx   context.Context
	desc  ocispec.Descriptor
	t     *tracker
	moved func(int64)
}

func (w *progressWriter) Write(b []byte) (int, error) {
	n, err := w.Writer.Write(b)
	w.moved(int64(n))
	return n, err
}

func (w *progressWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	err := w.Writer.Commit(ctx, size, expected, opts...)
	switch {
	case err == nil:
		w.t.complete(w.ctx, w.desc)
	case errdefs.IsAlreadyExists(err):
		w.t.exists(w.ctx, w.desc)
	}
	return err
}
