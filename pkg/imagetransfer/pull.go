package imagetransfer

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// pull fetches the image src resolves into the content store, unpacks it
// when dst asks, and stores it under the names dst gives.
func (e *Engine) pull(ctx context.Context, src transfer.ImageFetcher, dst transfer.ImageStorer, p *progress) error {
	ctx, lease, err := e.withLease(ctx)
	if err != nil {
		return err
	}
	defer lease.end(ctx)
	return registryError(e.pullImage(ctx, src, dst, p, lease))
}

func (e *Engine) pullImage(ctx context.Context, src transfer.ImageFetcher, dst transfer.ImageStorer, p *progress, lease *transferLease) error {
	p.status(fmt.Sprintf("Resolving from %s", src))
	if s, ok := src.(transfer.ImageResolverOptionSetter); ok {
		s.SetResolverOptions(transfer.WithMaxConcurrentDownloads(e.config.MaxConcurrentDownloads))
	}
	name, desc, err := src.Resolve(ctx)
	if err != nil {
		return fmt.Errorf("failed to resolve image: %w", err)
	}
	if desc.MediaType == images.MediaTypeDockerSchema1Manifest {
		return fmt.Errorf("schema 1 image manifests are no longer supported: %w", errdefs.ErrInvalidArgument)
	}
	p.status(fmt.Sprintf("Pulling from %s", src))
	p.send(transfer.Progress{Event: "fetching image content", Name: name, Desc: &desc})
	fetcher, err := src.Fetcher(ctx, name)
	if err != nil {
		return fmt.Errorf("failed to get fetcher for %q: %w", name, err)
	}
	source, err := distributionSource(name)
	if err != nil {
		return err
	}
	t := p.track(name, "downloading")
	defer t.Close()
	pl := &puller{e: e, fetcher: fetcher, t: t, source: source}

	store := e.stores.Content
	children := images.ChildrenHandler(store)
	if f, ok := dst.(transfer.ImageFilterer); ok {
		children = f.ImageFilter(children, store)
	}
	var legacyConfig atomic.Bool
	var handler images.Handler = images.Handlers(
		images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			t.add(ctx, d)
			return nil, nil
		}),
		images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			if d.MediaType == images.MediaTypeDockerSchema1Manifest {
				return nil, fmt.Errorf("%v not supported: %w", d.MediaType, errdefs.ErrInvalidArgument)
			}
			if d.MediaType == docker.LegacyConfigMediaType {
				// distribution#1622: converted once the image is in.
				legacyConfig.Store(true)
			}
			return nil, pl.fetch(ctx, d)
		}),
		images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			cs, err := children(ctx, d)
			t.children(ctx, d, cs)
			return cs, err
		}),
	)
	u, err := e.newUnpacker(ctx, dst, pl)
	if err != nil {
		return err
	}
	if u != nil {
		if e.annotates(ctx, dst, u.snapshotter) {
			handler = snapshotters.AppendInfoHandlerWrapper(name)(handler)
		}
		handler = u.wrap(handler)
	}
	if err := images.Dispatch(ctx, handler, nil, desc); err != nil {
		if u != nil {
			_ = u.wait()
		}
		return err
	}
	if u != nil {
		if err := u.wait(); err != nil {
			return err
		}
	}
	if legacyConfig.Load() {
		if desc, err = docker.ConvertManifest(ctx, store, desc); err != nil {
			return err
		}
	}
	imgs, err := dst.Store(ctx, desc, e.stores.Images)
	if err != nil {
		return err
	}
	lease.hold(desc)
	for _, img := range imgs {
		p.saved(img.Name, img.Target)
	}
	p.status(fmt.Sprintf("Completed pull from %s", src))
	return nil
}

// puller is one pull's access to its registry.
type puller struct {
	e       *Engine
	fetcher transfer.Fetcher
	t       *tracker
	source  *source
}

// fetch puts a blob in the content store.
func (pl *puller) fetch(ctx context.Context, desc ocispec.Descriptor) error {
	return pl.fetchLive(ctx, desc, nil, nil, nil)
}

// fetchLive puts a blob in the content store, sending its bytes to the
// writer live opens as they arrive when this pull downloads it (see
// blobFetch); slot is told when the download is under way.
func (pl *puller) fetchLive(ctx context.Context, desc ocispec.Descriptor, live func() (LayerWriter, error), commit func(ocispec.Descriptor) (map[string]string, error), slot func()) error {
	res, err := pl.e.fetchBlob(ctx, blobFetch{
		fetcher: pl.fetcher,
		desc:    desc,
		labels:  pl.source.labels(),
		live:    live,
		commit:  commit,
		moved:   pl.t.moved(ctx, desc),
		slot:    slot,
	})
	if err != nil {
		return err
	}
	if res.existed {
		pl.t.exists(ctx, desc)
		return pl.source.appendTo(ctx, pl.e.stores.Content, desc)
	}
	pl.t.complete(ctx, desc)
	return nil
}

// source is where a pull's blobs come from, recorded on each in
// containerd's distribution source label so that a push to the same
// registry can mount them instead of uploading them.
type source struct {
	key, repo string
}

func distributionSource(ref string) (*source, error) {
	spec, err := reference.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	u, err := url.Parse("dummy://" + spec.Locator)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	return &source{key: labels.LabelDistributionSource + "." + u.Hostname(), repo: strings.TrimPrefix(u.Path, "/")}, nil
}

// labels are the labels of a blob this pull downloads.
func (s *source) labels() map[string]string {
	if labels.Validate(s.key, s.repo) != nil {
		return nil
	}
	return map[string]string{s.key: s.repo}
}

// appendTo adds this pull's repository to the source label of a blob the
// content store had already.
func (s *source) appendTo(ctx context.Context, cs content.Manager, desc ocispec.Descriptor) error {
	info, err := cs.Info(ctx, desc.Digest)
	if err != nil {
		return err
	}
	repos := []string{}
	if v := info.Labels[s.key]; v != "" {
		repos = strings.Split(v, ",")
	}
	for _, r := range repos {
		if r == s.repo {
			return nil
		}
	}
	repos = append(repos, s.repo)
	slices.Sort(repos)
	value := strings.Join(repos, ",")
	if labels.Validate(s.key, value) != nil {
		// The label has a size limit a very common blob can reach.
		return nil
	}
	_, err = cs.Update(ctx, content.Info{Digest: desc.Digest, Labels: map[string]string{s.key: value}}, "labels."+s.key)
	return err
}

// annotates says whether a pull into dst labels its layers' snapshots for
// lazy snapshotters: when dst asks, or the snapshotter does.
func (e *Engine) annotates(ctx context.Context, dst transfer.ImageStorer, snapshotter string) bool {
	if a, ok := dst.(SnapshotAnnotator); ok && a.AnnotateSnapshots() {
		return true
	}
	return e.stores.RemoteSnapshotAnnotations != nil && e.stores.RemoteSnapshotAnnotations(ctx, snapshotter)
}
