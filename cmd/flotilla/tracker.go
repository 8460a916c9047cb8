package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Progress of a pull or an import is observed from outside the operation,
// the way ctr does it: every pollInterval the tool asks the content store
// for its active ingests (offset and total of each blob being written) and
// for the Info of every blob it knows of, and the snapshotter whether each
// layer's chain snapshot exists yet. Nothing in the daemon reports progress
// itself, so the same view works for any client's pull and any snapshotter.

const pollInterval = 100 * time.Millisecond

// blobState is where one blob stands.
type blobState int

const (
	stateWaiting     blobState = iota // known, nothing written yet
	stateDownloading                  // an ingest is active (fetch or archive read)
	stateDone                         // committed during this operation
	stateExists                       // was in the store before the operation began
	stateUnpacking                    // a layer being applied to its snapshot
	stateUnpacked                     // a layer whose chain snapshot exists
)

func (s blobState) String() string {
	switch s {
	case stateWaiting:
		return "waiting"
	case stateDownloading:
		return "downloading"
	case stateDone:
		return "done"
	case stateExists:
		return "exists"
	case stateUnpacking:
		return "unpacking"
	case stateUnpacked:
		return "unpacked"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// stored says the blob's content is complete in the store.
func (s blobState) stored() bool { return s >= stateDone }

// Kinds of blob, in the order rows are shown.
const (
	kindIndex    = "index"
	kindManifest = "manifest"
	kindConfig   = "config"
	kindLayer    = "layer"
	kindBlob     = "blob" // not (yet) known what it is
)

func kindRank(kind string) int {
	switch kind {
	case kindIndex:
		return 0
	case kindManifest:
		return 1
	case kindConfig:
		return 2
	case kindLayer:
		return 3
	}
	return 4
}

// kindOf names a descriptor's media type.
func kindOf(mediaType string) string {
	switch {
	case images.IsIndexType(mediaType):
		return kindIndex
	case images.IsManifestType(mediaType):
		return kindManifest
	case images.IsConfigType(mediaType):
		return kindConfig
	case images.IsLayerType(mediaType):
		return kindLayer
	}
	return kindBlob
}

// blobRow is one line of the display.
type blobRow struct {
	Digest digest.Digest // empty while only an ingest ref is known
	Ref    string        // the ingest ref, for blobs whose digest is not known yet
	Kind   string
	Offset int64
	Total  int64
	State  blobState
	// Fetched says the blob was committed during the operation, Existed
	// that it was there before: a layer may go on to unpacking and
	// unpacked, or be unpacked without either (its snapshot was there).
	Fetched, Existed bool

	mediaType string
	chainID   digest.Digest // layers, once their manifest's config is read
	layer     int           // position in its manifest, for layers
	order     int           // when the row was first seen
}

func (r *blobRow) name() string {
	if r.Digest != "" {
		return shortDigest(r.Digest)
	}
	return r.Ref
}

// shortDigest is the algorithm and the first 12 hex digits, as docker and
// ctr show image IDs.
func shortDigest(d digest.Digest) string {
	enc := d.Encoded()
	if len(enc) > 12 {
		enc = enc[:12]
	}
	return d.Algorithm().String() + ":" + enc
}

// contentSource is what the tracker reads from the content store.
type contentSource interface {
	content.Provider
	Info(ctx context.Context, dgst digest.Digest) (content.Info, error)
	ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error)
}

// snapshotStatter is what the tracker asks the snapshotter.
type snapshotStatter interface {
	Stat(ctx context.Context, key string) (snapshots.Info, error)
}

// tracker holds the rows of one operation and updates them from the stores.
type tracker struct {
	mu    sync.Mutex
	start time.Time
	rows  []*blobRow
	byDig map[digest.Digest]*blobRow
	byRef map[string]*blobRow
	// unpack says layers are to be unpacked, unpackStarted that unpacking
	// may be under way (from the start of a pull; after an import).
	unpack, unpackStarted bool
	// memory holds small blobs read before the operation (an archive's
	// manifests and configs), so rows are named before the store has them.
	memory map[digest.Digest][]byte
	// resolved marks manifests and indexes whose children are known.
	resolved map[digest.Digest]bool
	// chains are each manifest's layer rows, bottom first.
	chains [][]*blobRow
}

func newTracker(unpack bool) *tracker {
	return &tracker{
		start:    time.Now(),
		byDig:    map[digest.Digest]*blobRow{},
		byRef:    map[string]*blobRow{},
		unpack:   unpack,
		memory:   map[digest.Digest][]byte{},
		resolved: map[digest.Digest]bool{},
	}
}

// add records a descriptor (a pull's image handler calls it for each one
// it is about to fetch); it is safe to add one twice.
func (t *tracker) add(desc ocispec.Descriptor) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.addLocked(desc)
}

func (t *tracker) addLocked(desc ocispec.Descriptor) *blobRow {
	r := t.byDig[desc.Digest]
	if r == nil {
		r = &blobRow{Digest: desc.Digest, Kind: kindBlob, order: len(t.rows)}
		t.rows = append(t.rows, r)
		t.byDig[desc.Digest] = r
	}
	if desc.MediaType != "" && r.mediaType == "" {
		r.mediaType = desc.MediaType
		r.Kind = kindOf(desc.MediaType)
	}
	if r.Total <= 0 && desc.Size > 0 {
		r.Total = desc.Size
	}
	return r
}

// startUnpack says unpacking has begun.
func (t *tracker) startUnpack() {
	t.mu.Lock()
	t.unpackStarted = true
	t.mu.Unlock()
}

// snapshot copies the rows in display order: index, manifests, config,
// layers bottom first, then anything not yet identified.
func (t *tracker) snapshot() []blobRow {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]blobRow, 0, len(t.rows))
	for _, r := range t.rows {
		out = append(out, *r)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if kindRank(a.Kind) != kindRank(b.Kind) {
			return kindRank(a.Kind) < kindRank(b.Kind)
		}
		if a.Kind == kindLayer && a.layer != b.layer {
			return a.layer < b.layer
		}
		return a.order < b.order
	})
	return out
}

// ingestDigest finds the digest an ingest is writing: the expected digest
// when the writer gave one, else the one its ref names (a pull's refs end
// in the digest, an archive's in blobs/sha256/<hex>).
func ingestDigest(st content.Status) digest.Digest {
	if st.Expected != "" {
		return st.Expected
	}
	ref := st.Ref
	if i := strings.LastIndex(ref, "sha256:"); i >= 0 {
		if d, err := digest.Parse(ref[i:]); err == nil {
			return d
		}
	}
	if i := strings.LastIndex(ref, "blobs/sha256/"); i >= 0 {
		if d, err := digest.Parse("sha256:" + ref[i+len("blobs/sha256/"):]); err == nil {
			return d
		}
	}
	return ""
}

// poll updates every row from the stores once. Errors are the caller's to
// ignore: the next poll tries again.
func (t *tracker) poll(ctx context.Context, cs contentSource, sn snapshotStatter) error {
	active, err := cs.ListStatuses(ctx)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()

	seen := map[*blobRow]bool{}
	for _, st := range active {
		r := t.byRef[st.Ref]
		if d := ingestDigest(st); r == nil && d != "" {
			r = t.addLocked(ocispec.Descriptor{Digest: d})
		} else if r == nil {
			r = &blobRow{Ref: st.Ref, Kind: kindBlob, order: len(t.rows)}
			t.rows = append(t.rows, r)
			t.byRef[st.Ref] = r
		}
		if r.State.stored() {
			continue
		}
		r.State, r.Offset = stateDownloading, st.Offset
		if st.Total > 0 {
			r.Total = st.Total
		}
		seen[r] = true
	}

	for _, r := range t.rows {
		if seen[r] || r.State.stored() {
			continue
		}
		if r.Digest == "" {
			// An ingest with no digest to look up has ended: committed,
			// or the operation fails and says so.
			if r.State == stateDownloading {
				r.State, r.Offset, r.Fetched = stateDone, r.Total, true
			}
			continue
		}
		info, err := cs.Info(ctx, r.Digest)
		if errdefs.IsNotFound(err) {
			continue
		} else if err != nil {
			return err
		}
		r.State, r.Offset, r.Total, r.Fetched = stateDone, info.Size, info.Size, true
		if info.CreatedAt.Before(t.start) {
			r.State, r.Fetched, r.Existed = stateExists, false, true
		}
	}

	t.resolveLocked(ctx, cs)
	if t.unpack {
		t.unpackLocked(ctx, sn)
	}
	return nil
}

// emptyProvider has no blobs: resolving from a tracker's memory alone.
type emptyProvider struct{}

func (emptyProvider) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
}

// read gets a small blob from memory or the store.
func (t *tracker) read(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) ([]byte, error) {
	if b, ok := t.memory[desc.Digest]; ok {
		return b, nil
	}
	return content.ReadBlob(ctx, cs, desc)
}

// resolveLocked reads indexes and manifests as they become readable, to
// name their children and learn each layer's place and chain ID.
func (t *tracker) resolveLocked(ctx context.Context, cs content.Provider) {
	// Until nothing changes: a parent resolved late names children
	// listed before it.
	for n := -1; n != len(t.resolved); {
		n = len(t.resolved)
		t.resolveOnce(ctx, cs)
	}
}

func (t *tracker) resolveOnce(ctx context.Context, cs content.Provider) {
	for i := 0; i < len(t.rows); i++ { // rows may grow
		r := t.rows[i]
		if r.Digest == "" || t.resolved[r.Digest] || (r.Kind != kindIndex && r.Kind != kindManifest) {
			continue
		}
		desc := ocispec.Descriptor{Digest: r.Digest, MediaType: r.mediaType, Size: r.Total}
		b, err := t.read(ctx, cs, desc)
		if err != nil {
			continue
		}
		if r.Kind == kindIndex {
			var idx ocispec.Index
			if json.Unmarshal(b, &idx) != nil {
				t.resolved[r.Digest] = true
				continue
			}
			for _, m := range idx.Manifests {
				// Only name what is here: an index lists every platform,
				// a pull fetches one.
				if c := t.byDig[m.Digest]; c != nil {
					t.addLocked(m)
				}
			}
			t.resolved[r.Digest] = true
			continue
		}
		var m ocispec.Manifest
		if json.Unmarshal(b, &m) != nil {
			t.resolved[r.Digest] = true
			continue
		}
		t.addLocked(m.Config)
		layers := make([]*blobRow, len(m.Layers))
		for i, l := range m.Layers {
			layers[i] = t.addLocked(l)
			layers[i].layer = i
		}
		cb, err := t.read(ctx, cs, m.Config)
		if err != nil {
			continue // the config is not here yet: read it all again next time
		}
		var img ocispec.Image
		if json.Unmarshal(cb, &img) == nil && len(img.RootFS.DiffIDs) == len(layers) {
			for i, c := range identity.ChainIDs(append([]digest.Digest(nil), img.RootFS.DiffIDs...)) {
				layers[i].chainID = c
			}
			t.chains = append(t.chains, layers)
		}
		t.resolved[r.Digest] = true
	}
}

// unpackLocked marks layers whose chain snapshot exists as unpacked, and
// the next one of each chain, its blob stored, as unpacking: layers are
// applied bottom first.
func (t *tracker) unpackLocked(ctx context.Context, sn snapshotStatter) {
	for _, chain := range t.chains {
		below := true // every lower layer is unpacked
		for _, l := range chain {
			if l.State == stateUnpacked {
				continue
			}
			if _, err := sn.Stat(ctx, l.chainID.String()); err == nil {
				l.State, l.Offset = stateUnpacked, l.Total
				continue
			}
			if below && t.unpackStarted && l.State.stored() {
				l.State = stateUnpacking
			}
			below = false
		}
	}
}

// summary sums up the rows: blobs stored by this operation and their
// bytes, blobs already there, layers unpacked out of all.
type summary struct {
	fetched, existed     int
	fetchedBytes         int64
	layers, unpackedLyrs int
}

func summarize(rows []blobRow) summary {
	var s summary
	for _, r := range rows {
		switch {
		case r.Existed || (!r.Fetched && r.State == stateUnpacked):
			// A layer found unpacked before its blob was looked at
			// needed nothing fetched.
			s.existed++
		case r.Fetched:
			s.fetched++
			s.fetchedBytes += r.Total
		}
		if r.Kind == kindLayer {
			s.layers++
			if r.State == stateUnpacked {
				s.unpackedLyrs++
			}
		}
	}
	return s
}

// watcher polls and draws until stopped.
type watcher struct {
	tr     *tracker
	cs     contentSource
	sn     snapshotStatter
	disp   progressDisplay
	cancel context.CancelFunc
	done   chan struct{}
}

// watch starts polling the stores every pollInterval and drawing the rows.
func watch(ctx context.Context, tr *tracker, cs contentSource, sn snapshotStatter, disp progressDisplay) *watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{tr: tr, cs: cs, sn: sn, disp: disp, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(pollInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if tr.poll(ctx, cs, sn) == nil {
					disp.update(tr.snapshot())
				}
			}
		}
	}()
	return w
}

// stop ends polling, takes a last look at the stores (the operation has
// ended: what it stored is all committed now) and returns the final rows.
func (w *watcher) stop(ctx context.Context) []blobRow {
	w.cancel()
	<-w.done
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = w.tr.poll(ctx, w.cs, w.sn)
	return w.tr.snapshot()
}

// summaryLine reads e.g. "imported docker.io/x/y:1: 5 blobs (8.2 MiB) new,
// 0 already present, 2/2 layers unpacked into overlayfs in 1.2s".
func summaryLine(verb string, names []string, rows []blobRow, unpacked bool, snapshotter string, elapsed time.Duration) string {
	s := summarize(rows)
	line := fmt.Sprintf("%s %s: %d blobs (%s) new, %d already present", verb, strings.Join(names, ", "),
		s.fetched, bytesString(uint64(s.fetchedBytes)), s.existed)
	if unpacked {
		line += fmt.Sprintf(", %d/%d layers unpacked into %s", s.unpackedLyrs, s.layers, snapshotter)
	}
	return line + fmt.Sprintf(" in %s", elapsed.Round(time.Millisecond))
}
