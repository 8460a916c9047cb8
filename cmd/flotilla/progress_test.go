package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vbauerster/mpb/v8"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

var (
	layerDigest = digest.FromString("layer")
	mib         = int64(1 << 20)
)

func TestPlainLineShowsKindDigestBytesAndState(t *testing.T) {
	short := "sha256:" + layerDigest.Encoded()[:12]
	for _, tc := range []struct {
		row  blobRow
		want string
	}{
		{blobRow{Digest: layerDigest, Kind: kindLayer, Total: 8 * mib, State: stateWaiting},
			"layer    " + short + " " + pad("0B/8.0MiB") + "  waiting"},
		{blobRow{Digest: layerDigest, Kind: kindLayer, Offset: 4 * mib, Total: 8 * mib, State: stateDownloading},
			"layer    " + short + " " + pad("4.0MiB/8.0MiB") + "  downloading"},
		{blobRow{Digest: layerDigest, Kind: kindLayer, Offset: 0, Total: 8 * mib, State: stateDone},
			"layer    " + short + " " + pad("8.0MiB") + "  done"},
		{blobRow{Digest: layerDigest, Kind: kindLayer, Total: 8 * mib, State: stateUnpacked},
			"layer    " + short + " " + pad("8.0MiB") + "  unpacked"},
		{blobRow{Ref: "tar-repositories", Kind: kindBlob, State: stateDone},
			"blob     tar-repositories                    -  done"},
	} {
		if got := plainLine(tc.row); got != tc.want {
			t.Errorf("plainLine(%s)\n got %q\nwant %q", tc.row.State, got, tc.want)
		}
	}
}

// pad right-aligns a size column as plainLine does.
func pad(s string) string { return fmt.Sprintf("%17s", s) }

// fakeTerminal is a console of a fixed size that keeps every frame mpb
// draws.
type fakeTerminal struct {
	width, height int
	cur           bytes.Buffer
	frames        []string
}

func (f *fakeTerminal) Write(b []byte) (int, error)               { return f.cur.Write(b) }
func (f *fakeTerminal) ReadFrom(r io.Reader) (int64, error)       { return f.cur.ReadFrom(r) }
func (f *fakeTerminal) IsTerminal() bool                          { return true }
func (f *fakeTerminal) GetTermSize() (width, height int, _ error) { return f.width, f.height, nil }
func (f *fakeTerminal) Flush(int) error {
	f.frames = append(f.frames, f.cur.String())
	f.cur.Reset()
	return nil
}

func TestBarDisplayFitsTheTerminal(t *testing.T) {
	term := &fakeTerminal{width: 70, height: 4}
	var out bytes.Buffer
	d := newBarDisplay(&out, mpb.WithConsoleWriter(term), mpb.WithRefreshRate(5*time.Millisecond))
	var rows []blobRow
	for i := range 6 {
		rows = append(rows, blobRow{Digest: digest.FromString(fmt.Sprint(i)), Kind: kindLayer, Total: 8 * mib, Offset: int64(i) * mib, State: stateDownloading})
	}
	d.update(rows)
	time.Sleep(50 * time.Millisecond)
	for i := range rows {
		rows[i].State, rows[i].Offset = stateUnpacked, rows[i].Total
	}
	d.finish(rows, "pulled x: summary")
	if len(term.frames) == 0 {
		t.Fatal("mpb drew no frame")
	}
	sawBar := false
	for _, f := range term.frames {
		lines := strings.Split(strings.TrimSuffix(f, "\n"), "\n")
		if len(lines) > term.height {
			t.Errorf("a frame of %d lines on a terminal %d high:\n%s", len(lines), term.height, f)
		}
		for _, l := range lines {
			if w := utf8.RuneCountInString(l); w > term.width {
				t.Errorf("a line %d wide on a terminal %d wide: %q", w, term.width, l)
			}
			if strings.HasPrefix(l, "layer ") && strings.Contains(l, "sha256:") && strings.Contains(l, "[") {
				sawBar = true
			}
		}
	}
	if !sawBar {
		t.Errorf("no frame shows a layer's bar:\n%s", strings.Join(term.frames, "\n---\n"))
	}
	last := term.frames[len(term.frames)-1]
	t.Logf("first frame:\n%s\nlast frame:\n%s", term.frames[0], last)
	if !strings.Contains(last, "unpacked") {
		t.Errorf("the last frame does not show the layers unpacked:\n%s", last)
	}
	if out.String() != "pulled x: summary\n" {
		t.Errorf("summary printed as %q", out.String())
	}
}

func TestNewDisplayPrintsLinesWhenNotATerminal(t *testing.T) {
	if _, ok := newDisplay(&bytes.Buffer{}).(*plainDisplay); !ok {
		t.Error("a buffer got a display that redraws")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := newDisplay(f).(*plainDisplay); !ok {
		t.Error("a regular file got a display that redraws")
	}
}

func TestPlainDisplayPrintsStateChangesAndSlowDownloads(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	d := newPlainDisplay(&buf)
	d.now = func() time.Time { return now }
	row := blobRow{Digest: layerDigest, Kind: kindLayer, Total: 10, State: stateWaiting}
	lines := func() []string {
		s := strings.TrimSpace(buf.String())
		buf.Reset()
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}

	d.update([]blobRow{row})
	if l := lines(); len(l) != 0 {
		t.Fatalf("a waiting blob printed %q", l)
	}
	row.State, row.Offset = stateDownloading, 1
	d.update([]blobRow{row})
	if l := lines(); len(l) != 1 || !strings.HasSuffix(l[0], "downloading") {
		t.Fatalf("a download starting printed %q, want one downloading line", l)
	}
	now = now.Add(time.Second)
	row.Offset = 2
	d.update([]blobRow{row})
	if l := lines(); len(l) != 0 {
		t.Fatalf("a download 1s later printed %q, want nothing", l)
	}
	now = now.Add(plainLineEvery)
	d.update([]blobRow{row})
	if l := lines(); len(l) != 1 {
		t.Fatalf("a download %s later printed %q, want one line", plainLineEvery, l)
	}
	row.State = stateDone
	d.update([]blobRow{row})
	d.update([]blobRow{row})
	if l := lines(); len(l) != 1 || !strings.HasSuffix(l[0], "done") {
		t.Fatalf("completion printed %q, want one done line", l)
	}
	row.State, row.Fetched = stateUnpacked, true
	d.finish([]blobRow{row}, "imported x: summary")
	if l := lines(); len(l) != 2 || !strings.HasSuffix(l[0], "unpacked") || l[1] != "imported x: summary" {
		t.Fatalf("finish printed %q, want the unpacked line and the summary", l)
	}
}

// fakeStores is a content store and snapshotter the test sets by hand.
type fakeStores struct {
	blobs     map[digest.Digest][]byte
	created   map[digest.Digest]time.Time
	active    []content.Status
	snapshots map[string]bool
}

func (f *fakeStores) Info(_ context.Context, d digest.Digest) (content.Info, error) {
	b, ok := f.blobs[d]
	if !ok {
		return content.Info{}, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	return content.Info{Digest: d, Size: int64(len(b)), CreatedAt: f.created[d]}, nil
}

func (f *fakeStores) ListStatuses(context.Context, ...string) ([]content.Status, error) {
	return f.active, nil
}

func (f *fakeStores) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	b, ok := f.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return readerAt{bytes.NewReader(b)}, nil
}

type readerAt struct{ *bytes.Reader }

func (readerAt) Close() error { return nil }

func (f *fakeStores) Stat(_ context.Context, key string) (snapshots.Info, error) {
	if !f.snapshots[key] {
		return snapshots.Info{}, fmt.Errorf("snapshot %s: %w", key, errdefs.ErrNotFound)
	}
	return snapshots.Info{Name: key}, nil
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTrackerFollowsBlobsFromWaitingToUnpacked(t *testing.T) {
	ctx := context.Background()
	l1, l2 := []byte("layer one"), []byte("layer two, longer")
	d1, d2 := digest.FromBytes(l1), digest.FromBytes(l2)
	diffIDs := []digest.Digest{digest.FromString("diff1"), digest.FromString("diff2")}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	cfg := mustJSON(t, ocispec.Image{RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}})
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	layers := []ocispec.Descriptor{
		{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d1, Size: int64(len(l1))},
		{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d2, Size: int64(len(l2))},
	}
	mf := mustJSON(t, ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: layers})
	mfDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mf), Size: int64(len(mf))}

	tr := newTracker(true)
	st := &fakeStores{blobs: map[digest.Digest][]byte{}, created: map[digest.Digest]time.Time{}, snapshots: map[string]bool{}}
	stateOf := func(d digest.Digest) blobState {
		for _, r := range tr.snapshot() {
			if r.Digest == d {
				return r.State
			}
		}
		t.Fatalf("no row for %s", d)
		return 0
	}
	poll := func() {
		t.Helper()
		if err := tr.poll(ctx, st, st); err != nil {
			t.Fatal(err)
		}
	}
	store := func(d digest.Digest, b []byte, created time.Time) { st.blobs[d], st.created[d] = b, created }

	// A pull's handler names the manifest; its blob is already here.
	tr.add(mfDesc)
	store(mfDesc.Digest, mf, tr.start.Add(-time.Hour))
	// The layer's ingest is under way.
	st.active = []content.Status{{Ref: "layer-" + d2.String(), Offset: 3, Total: int64(len(l2))}}
	poll()
	rows := tr.snapshot()
	var kinds []string
	for _, r := range rows {
		kinds = append(kinds, r.Kind)
	}
	if got, want := strings.Join(kinds, ","), "manifest,config,layer,layer"; got != want {
		t.Fatalf("rows are %s, want %s (the manifest names its children, layers bottom first)", got, want)
	}
	if rows[2].Digest != d1 || rows[3].Digest != d2 {
		t.Fatalf("layers out of order: %s, %s", rows[2].Digest, rows[3].Digest)
	}
	if s := stateOf(mfDesc.Digest); s != stateExists {
		t.Errorf("manifest stored before the pull is %s, want exists", s)
	}
	if s := stateOf(d2); s != stateDownloading || rows[3].Offset != 3 {
		t.Errorf("layer with an active ingest is %s at %d, want downloading at 3", s, rows[3].Offset)
	}
	if s := stateOf(d1); s != stateWaiting {
		t.Errorf("layer nobody wrote is %s, want waiting", s)
	}

	// Config and bottom layer land; the bottom layer unpacks first.
	store(cfgDesc.Digest, cfg, time.Now())
	store(d1, l1, time.Now())
	tr.startUnpack()
	poll()
	if s := stateOf(cfgDesc.Digest); s != stateDone {
		t.Errorf("config committed during the pull is %s, want done", s)
	}
	if s := stateOf(d1); s != stateUnpacking {
		t.Errorf("stored bottom layer is %s, want unpacking", s)
	}

	st.snapshots[chain[0].String()] = true
	st.active = nil
	store(d2, l2, time.Now())
	poll()
	if s := stateOf(d1); s != stateUnpacked {
		t.Errorf("layer whose chain snapshot exists is %s, want unpacked", s)
	}
	if s := stateOf(d2); s != stateUnpacking {
		t.Errorf("next layer is %s, want unpacking", s)
	}

	st.snapshots[chain[1].String()] = true
	poll()
	if s := stateOf(d2); s != stateUnpacked {
		t.Errorf("top layer is %s, want unpacked", s)
	}
	sum := summarize(tr.snapshot())
	if sum.fetched != 3 || sum.existed != 1 || sum.layers != 2 || sum.unpackedLyrs != 2 {
		t.Errorf("summary %+v, want 3 fetched, 1 existed, 2/2 layers unpacked", sum)
	}
}

func TestPrescanListsEveryBlobOfAnArchiveNamed(t *testing.T) {
	if _, err := testimage.BusyboxPath(); err != nil {
		t.Skip(err)
	}
	img, err := testimage.Busybox(testimage.WithRandomLayer(1<<10, 1))
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := img.WriteArchive(&archive); err != nil {
		t.Fatal(err)
	}
	tr := newTracker(true)
	if err := prescanArchive(bytes.NewReader(archive.Bytes()), tr); err != nil {
		t.Fatal(err)
	}
	rows := tr.snapshot()
	want := []struct {
		kind string
		d    digest.Digest
	}{{kindIndex, ""}, {kindManifest, img.Manifest.Digest}, {kindConfig, img.Config.Digest}}
	for _, l := range img.Layers {
		want = append(want, struct {
			kind string
			d    digest.Digest
		}{kindLayer, l.Digest})
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(rows), len(want), rows)
	}
	for i, w := range want {
		if rows[i].Kind != w.kind || (w.d != "" && rows[i].Digest != w.d) {
			t.Errorf("row %d is %s %s, want %s %s", i, rows[i].Kind, rows[i].Digest, w.kind, w.d)
		}
		if rows[i].State != stateWaiting || rows[i].Total <= 0 {
			t.Errorf("row %d is %s of %d bytes, want waiting with a size", i, rows[i].State, rows[i].Total)
		}
	}
	if len(tr.chains) != 1 || len(tr.chains[0]) != len(img.Layers) {
		t.Fatalf("chains %v: want one manifest's %d layers with chain IDs", tr.chains, len(img.Layers))
	}
	if r := tr.byRef["tar-index.json"]; r == nil || r.Kind != kindIndex {
		t.Errorf("the importer's ref for index.json does not map to the index row")
	}
}

func TestPlainDisplaySaysDoneWhenUnpackingFollowsADownloadAtOnce(t *testing.T) {
	var buf bytes.Buffer
	d := newPlainDisplay(&buf)
	row := blobRow{Digest: layerDigest, Kind: kindLayer, Total: 10, Offset: 5, State: stateDownloading}
	d.update([]blobRow{row})
	row.State, row.Fetched = stateUnpacking, true
	d.update([]blobRow{row})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[1], " done") || !strings.HasSuffix(lines[2], " unpacking") {
		t.Fatalf("printed %q, want downloading, done, unpacking", lines)
	}
}
