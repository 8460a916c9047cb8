package imagetransfer

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// labelParentChainID is the label containerd's unpacker puts on a layer's
// snapshot naming its parent's chain ID.
const labelParentChainID = "containerd.io/snapshot/parent-chain-id"

// unpacker unpacks the images of one pull or import: it takes the layers
// out of the walk of the image (they are fetched by the unpack, as it goes)
// and unpacks them once the config says what they are.
type unpacker struct {
	e           *Engine
	pl          *puller // nil: an import, every blob is in the content store
	t           *tracker
	snapshotter string
	match       platforms.Matcher

	ctx context.Context
	eg  *errgroup.Group

	mu       sync.Mutex
	queued   map[digest.Digest][][]ocispec.Descriptor
	unpacked map[digest.Digest]bool
}

// newUnpacker returns the unpacker dst asks for, or nil: dst names no
// platform to unpack, or none the engine unpacks.
func (e *Engine) newUnpacker(ctx context.Context, dst transfer.ImageStorer, pl *puller) (*unpacker, error) {
	iu, ok := dst.(transfer.ImageUnpacker)
	if !ok {
		return nil, nil
	}
	for _, uc := range iu.UnpackPlatforms() {
		// As containerd's transfer service: an image is unpacked for a
		// platform of the host's operating system.
		var match platforms.Matcher
		for _, p := range e.config.Platforms {
			if m := platforms.OnlyOS(p); m.Match(uc.Platform) {
				match = m
				break
			}
		}
		if match == nil {
			logging.G(ctx).Warn("unpack platform not supported, skipping", "platform", platforms.FormatAll(uc.Platform))
			continue
		}
		sn := uc.Snapshotter
		if sn == "" {
			sn = e.config.Snapshotter
		}
		eg, ectx := errgroup.WithContext(ctx)
		u := &unpacker{
			e: e, pl: pl, snapshotter: sn, match: match,
			ctx: ectx, eg: eg,
			queued:   map[digest.Digest][][]ocispec.Descriptor{},
			unpacked: map[digest.Digest]bool{},
		}
		if pl != nil {
			u.t = pl.t
		}
		return u, nil
	}
	return nil, nil
}

// wrap takes a manifest's layers out of the walk h makes of an image and
// starts their unpack when the walk reaches the manifest's config.
func (u *unpacker) wrap(h images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := h.Handle(ctx, desc)
		if err != nil {
			return children, err
		}
		switch {
		case images.IsManifestType(desc.MediaType):
			var layers, rest []ocispec.Descriptor
			for _, c := range children {
				if images.IsLayerType(c.MediaType) {
					layers = append(layers, c)
				} else {
					rest = append(rest, c)
				}
			}
			if len(layers) == 0 {
				return children, nil
			}
			u.mu.Lock()
			for _, c := range rest {
				if images.IsConfigType(c.MediaType) {
					u.queued[c.Digest] = append(u.queued[c.Digest], layers)
				}
			}
			u.mu.Unlock()
			return rest, nil
		case images.IsConfigType(desc.MediaType):
			u.mu.Lock()
			queued := u.queued[desc.Digest]
			delete(u.queued, desc.Digest)
			// Manifests sharing a config unpack to the same chain: one
			// unpacks, the others' layers are only fetched.
			var first []ocispec.Descriptor
			if !u.unpacked[desc.Digest] && len(queued) > 0 {
				first, queued = queued[0], queued[1:]
				u.unpacked[desc.Digest] = true
			}
			u.mu.Unlock()
			if first != nil {
				u.eg.Go(func() error { return u.unpack(u.ctx, desc, first) })
			}
			for _, layers := range queued {
				u.eg.Go(func() error { return u.fetchLayers(u.ctx, layers) })
			}
		}
		return children, nil
	})
}

// wait waits for the unpacks started and returns the first error.
func (u *unpacker) wait() error { return u.eg.Wait() }

// fetchLayers puts layers in the content store without unpacking them.
func (u *unpacker) fetchLayers(ctx context.Context, layers []ocispec.Descriptor) error {
	if u.pl == nil {
		return nil
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, l := range layers {
		g.Go(func() error { return u.pl.fetch(ctx, l) })
	}
	return g.Wait()
}

// imageConfig is what an unpack reads of an image config.
type imageConfig struct {
	ocispec.Platform
	RootFS ocispec.RootFS `json:"rootfs"`
}

// layerJob is one layer of an unpack.
type layerJob struct {
	i       int
	desc    ocispec.Descriptor
	diffID  digest.Digest
	chainID string
	parent  string // the parent chain ID; "" for the first layer
}

// applied is a layer applied into an active snapshot (key), or found
// unpacked already (exists), waiting to be committed in chain order.
type applied struct {
	key    string
	labels map[string]string
	exists bool
	unlock func()
	err    error
}

// unpack fetches and unpacks the layers of the image whose config is
// config, then labels the config with the chain it unpacked to.
func (u *unpacker) unpack(ctx context.Context, config ocispec.Descriptor, layers []ocispec.Descriptor) error {
	start := time.Now()
	e := u.e
	for _, l := range layers {
		u.t.add(ctx, l)
	}
	p, err := content.ReadBlob(ctx, e.stores.Content, config)
	if err != nil {
		return fmt.Errorf("read image config %s: %w", config.Digest, err)
	}
	var ic imageConfig
	if err := json.Unmarshal(p, &ic); err != nil {
		return fmt.Errorf("image config %s: %v: %w", config.Digest, err, errdefs.ErrInvalidArgument)
	}
	if ic.RootFS.Type != "" && ic.RootFS.Type != "layers" {
		return u.fetchLayers(ctx, layers)
	}
	if !u.match.Match(platforms.Normalize(ic.Platform)) {
		logging.G(ctx).Debug("image platform not unpacked here, fetching only", "config", config.Digest, "platform", platforms.Format(ic.Platform))
		return u.fetchLayers(ctx, layers)
	}
	diffIDs := ic.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return fmt.Errorf("image config %s has %d diff IDs for %d layers: %w", config.Digest, len(diffIDs), len(layers), errdefs.ErrInvalidArgument)
	}
	chainIDs := identity.ChainIDs(slices.Clone(diffIDs))
	jobs := make([]layerJob, len(layers))
	for i, l := range layers {
		jobs[i] = layerJob{i: i, desc: l, diffID: diffIDs[i], chainID: chainIDs[i].String()}
		if i > 0 {
			jobs[i].parent = chainIDs[i-1].String()
		}
	}
	sn := e.stores.Snapshotter(u.snapshotter)
	if sn == nil {
		return fmt.Errorf("snapshotter %q: %w", u.snapshotter, errdefs.ErrNotFound)
	}
	parallel := len(layers) > 1 && e.config.MaxConcurrentUnpacks > 1 && u.canRebase(ctx)
	if parallel {
		err = u.unpackParallel(ctx, sn, jobs)
	} else {
		err = u.unpackInOrder(ctx, sn, jobs)
	}
	if err != nil {
		return err
	}
	top := jobs[len(jobs)-1].chainID
	gcLabel := fmt.Sprintf("containerd.io/gc.ref.snapshot.%s", u.snapshotter)
	if _, err := e.stores.Content.Update(ctx, content.Info{Digest: config.Digest, Labels: map[string]string{gcLabel: top}}, "labels."+gcLabel); err != nil {
		return fmt.Errorf("label image config %s with its snapshot: %w", config.Digest, err)
	}
	logging.G(ctx).Debug("image unpacked", "config", config.Digest, "chain_id", top, "parallel", parallel, "duration", time.Since(start))
	return nil
}

// canRebase says whether the snapshotter can take a layer unpacked without
// its parent and rebase it at commit.
func (u *unpacker) canRebase(ctx context.Context) bool {
	if u.e.stores.Capabilities == nil {
		return false
	}
	caps, err := u.e.stores.Capabilities(ctx, u.snapshotter)
	if err != nil {
		logging.G(ctx).Debug("snapshotter capabilities unknown, unpacking in order", "snapshotter", u.snapshotter, "error", err)
		return false
	}
	return slices.Contains(caps, snapshots.RebaseCap)
}

// unpackInOrder applies each layer onto its parent once the parent is
// committed. The first layer is applied as it downloads; the others are
// fetched into the content store meanwhile and applied from there.
func (u *unpacker) unpackInOrder(ctx context.Context, sn snapshots.Snapshotter, jobs []layerJob) error {
	ctx, cancel := context.WithCancel(ctx)
	var prefetch sync.WaitGroup
	defer func() {
		cancel()
		prefetch.Wait()
	}()
	if u.pl != nil {
		for _, j := range jobs[1:] {
			prefetch.Add(1)
			go func() {
				defer prefetch.Done()
				// A failure here is the layer's own fetch's to report.
				_ = u.pl.fetch(ctx, j.desc)
			}()
		}
	}
	for _, j := range jobs {
		a := u.applyLayer(ctx, sn, j, j.parent, false, nil)
		if a.err != nil {
			return a.err
		}
		if err := u.commit(ctx, sn, j, a, false); err != nil {
			return err
		}
	}
	return nil
}

// unpackParallel applies every layer at once, each into a snapshot of its
// own as it downloads (at most MaxConcurrentUnpacks at a time), and commits
// them in order, each onto the one below it.
func (u *unpacker) unpackParallel(ctx context.Context, sn snapshots.Snapshotter, jobs []layerJob) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	limit := semaphore.NewWeighted(int64(u.e.config.MaxConcurrentUnpacks))
	results := make([]chan applied, len(jobs))
	for i := range jobs {
		results[i] = make(chan applied, 1)
	}
	// The unpack takes as long as its slowest layer: the largest layers
	// are started first, each once the one before holds its download slot
	// (downloads and unpacks are both limited), so that a small layer
	// does not keep a large one waiting for a slot.
	go func() {
		for _, i := range largestFirst(jobs) {
			if err := limit.Acquire(ctx, 1); err != nil {
				results[i] <- applied{err: err}
				continue
			}
			started := make(chan struct{})
			var once sync.Once
			go func() {
				defer limit.Release(1)
				slot := func() { once.Do(func() { close(started) }) }
				defer slot()
				a := u.applyLayer(ctx, sn, jobs[i], "", i > 0, slot)
				if a.err != nil {
					cancel()
				}
				results[i] <- a
			}()
			select {
			case <-started:
			case <-ctx.Done():
			}
		}
	}()
	// The error to report is the first that is not the cancellation of
	// the others it caused.
	var first, cause error
	for i, j := range jobs {
		a := <-results[i]
		err := a.err
		switch {
		case err != nil:
		case first != nil:
			u.abort(ctx, sn, a)
		default:
			if err = u.commit(ctx, sn, j, a, true); err != nil {
				cancel()
			}
		}
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		if cause == nil && !errors.Is(err, context.Canceled) {
			cause = err
		}
	}
	if cause != nil {
		return cause
	}
	return first
}

// applyLayer prepares a snapshot for a layer on parent and applies the
// layer into it, downloading it as it goes when it has to be downloaded.
// upper says the snapshot is an overlay layer prepared without its parent,
// whose whiteouts must be kept as overlay whiteouts. A layer whose chain is
// unpacked already (by another pull, say) is only fetched.
func (u *unpacker) applyLayer(ctx context.Context, sn snapshots.Snapshotter, j layerJob, parent string, upper bool, slot func()) applied {
	ns, _ := namespaces.Namespace(ctx)
	unlock, err := u.e.chains.lock(ctx, ns+"/"+u.snapshotter+"/"+j.chainID)
	if err != nil {
		return applied{err: err}
	}
	exists := func() applied {
		unlock()
		if u.pl != nil {
			if err := u.pl.fetch(ctx, j.desc); err != nil {
				return applied{err: err}
			}
		}
		u.t.extracted(ctx, j.desc)
		return applied{exists: true}
	}
	if _, err := sn.Stat(ctx, j.chainID); err == nil {
		return exists()
	} else if !errdefs.IsNotFound(err) {
		unlock()
		return applied{err: fmt.Errorf("stat snapshot %s: %w", j.chainID, err)}
	}
	lbls := snapshots.FilterInheritedLabels(j.desc.Annotations)
	if lbls == nil {
		lbls = map[string]string{}
	}
	// Images do not choose how their files are owned on the host.
	delete(lbls, snapshots.LabelSnapshotUIDMapping)
	delete(lbls, snapshots.LabelSnapshotGIDMapping)
	lbls[snapshots.LabelSnapshotRef] = j.chainID
	if j.parent != "" {
		lbls[labelParentChainID] = j.parent
	}
	key := fmt.Sprintf(snapshots.UnpackKeyFormat, uniquePart(), j.chainID)
	mounts, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(lbls))
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			// A remote snapshotter that has the layer already says so.
			if _, serr := sn.Stat(ctx, j.chainID); serr == nil {
				return exists()
			}
		}
		unlock()
		return applied{err: fmt.Errorf("prepare snapshot for layer %s: %w", j.desc.Digest, err)}
	}
	a := applied{key: key, labels: lbls, unlock: unlock}
	if upper {
		mounts = bindToOverlay(mounts)
	}
	if err := u.apply(ctx, j, mounts, slot); err != nil {
		a.err = err
		u.abort(ctx, sn, a)
		return applied{err: err}
	}
	return a
}

// apply unpacks layer j onto mounts: as it downloads when it must be
// downloaded and the snapshotter takes a stream, from the content store
// otherwise.
func (u *unpacker) apply(ctx context.Context, j layerJob, mounts []mount.Mount, slot func()) error {
	e := u.e
	var done *ocispec.Descriptor
	if u.pl != nil {
		var live func() (LayerWriter, error)
		var check func(ocispec.Descriptor) (map[string]string, error)
		if st := e.stores.Streamer(ctx, u.snapshotter); st != nil {
			live = func() (LayerWriter, error) { return st.Open(ctx, j.desc, mounts) }
			check = func(a ocispec.Descriptor) (map[string]string, error) {
				if a.Digest != j.diffID {
					return nil, wrongDiffID(j, a.Digest)
				}
				done = &a
				return map[string]string{labels.LabelUncompressed: j.diffID.String()}, nil
			}
		}
		if err := u.pl.fetchLive(ctx, j.desc, live, check, slot); err != nil {
			return err
		}
	}
	if done == nil {
		u.t.extracting(ctx, j.desc)
		a, err := e.stores.Applier.Apply(ctx, j.desc, mounts)
		if err != nil {
			return fmt.Errorf("failed to extract layer %s: %w", j.desc.Digest, err)
		}
		if a.Digest != j.diffID {
			return wrongDiffID(j, a.Digest)
		}
		info := content.Info{Digest: j.desc.Digest, Labels: map[string]string{labels.LabelUncompressed: j.diffID.String()}}
		if _, err := e.stores.Content.Update(ctx, info, "labels."+labels.LabelUncompressed); err != nil {
			return err
		}
	}
	u.t.extracted(ctx, j.desc)
	return nil
}

// largestFirst orders the jobs' indexes by their layers' size, largest
// first.
func largestFirst(jobs []layerJob) []int {
	order := make([]int, len(jobs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(jobs[b].desc.Size, jobs[a].desc.Size) })
	return order
}

func wrongDiffID(j layerJob, got digest.Digest) error {
	return fmt.Errorf("layer %s unpacks to %s, the image config says its diff ID is %s: %w", j.desc.Digest, got, j.diffID, errdefs.ErrFailedPrecondition)
}

// commit commits an applied layer under its chain ID; rebase gives it its
// parent now.
func (u *unpacker) commit(ctx context.Context, sn snapshots.Snapshotter, j layerJob, a applied, rebase bool) error {
	if a.exists {
		return nil
	}
	defer a.unlock()
	opts := []snapshots.Opt{snapshots.WithLabels(a.labels)}
	if rebase && j.parent != "" {
		opts = append(opts, snapshots.WithParent(j.parent))
	}
	if err := sn.Commit(ctx, j.chainID, a.key, opts...); err != nil {
		u.remove(ctx, sn, a.key)
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("commit snapshot of layer %s: %w", j.desc.Digest, err)
	}
	return nil
}

// abort removes a layer's active snapshot that will not be committed.
func (u *unpacker) abort(ctx context.Context, sn snapshots.Snapshotter, a applied) {
	if a.exists || a.key == "" {
		return
	}
	u.remove(ctx, sn, a.key)
	if a.unlock != nil {
		a.unlock()
	}
}

func (u *unpacker) remove(ctx context.Context, sn snapshots.Snapshotter, key string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := sn.Remove(rctx, key); err != nil && !errdefs.IsNotFound(err) {
		logging.G(ctx).Warn("remove unpack snapshot; the lease's end collects it", "key", key, "error", err)
	}
}

// bindToOverlay turns the bind mount of a snapshot prepared without its
// parent into the overlay mount of the same directory as an upper layer,
// so that the layer's whiteouts are written as overlay whiteouts rather
// than applied to files that are not there.
func bindToOverlay(mounts []mount.Mount) []mount.Mount {
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		return mounts
	}
	m := mount.Mount{Type: "overlay", Source: "overlay"}
	for _, o := range mounts[0].Options {
		if o != "rbind" && o != "bind" {
			m.Options = append(m.Options, o)
		}
	}
	m.Options = append(m.Options, "upperdir="+mounts[0].Source)
	return []mount.Mount{m}
}

func uniquePart() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%d-%s", time.Now().Nanosecond(), base64.URLEncoding.EncodeToString(b[:]))
}
