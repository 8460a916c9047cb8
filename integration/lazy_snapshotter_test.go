package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/unpack"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/snapshotserver"
)

const labelSnapshotRef = "containerd.io/snapshot.ref"

// lazySnapshotter behaves as lazy-pulling snapshotters such as stargz do: a
// Prepare labelled with the chain ID of a layer it already has answers
// AlreadyExists instead of making an extraction snapshot. Everything else
// passes to a real flotilla-snapshotter. It is a fake because no
// snapshotter installed here announces layers that way.
type lazySnapshotter struct {
	snapshots.Snapshotter
	announced atomic.Int32
}

func (l *lazySnapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	if target := info.Labels[labelSnapshotRef]; target != "" {
		var have bool
		err := l.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			have = have || i.Kind == snapshots.KindCommitted
			return nil
		}, fmt.Sprintf("labels.%q==%q,parent==%q", labelSnapshotRef, target, parent))
		if err != nil {
			return nil, err
		}
		if have {
			l.announced.Add(1)
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
	}
	return l.Snapshotter.Prepare(ctx, key, parent, opts...)
}

func TestUnpackTakesAlreadyExistsFromARemoteSnapshotterAsTheLayer(t *testing.T) {
	backend := startRemoteSnapshotter(t, "overlayfs")
	lazy := &lazySnapshotter{Snapshotter: backend.raw()}

	// The fake listens where flotillad will look for the remote snapshotter.
	dir, err := os.MkdirTemp("", "lz")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "lazy.sock")
	srv := rpc.NewServer(nil)
	snapshotserver.New(lazy).Register(srv.Server)
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Stop()

	// The layer is "already there": a committed snapshot the backend holds
	// under a key of its own, labelled with the layer's chain ID.
	img, archive := imageArchive(t)
	chain := identity.ChainIDs(append([]digest.Digest{}, img.DiffIDs...))
	ctx := context.Background()
	if _, err := lazy.Snapshotter.Prepare(ctx, "remote-fetch", ""); err != nil {
		t.Fatal(err)
	}
	if err := lazy.Snapshotter.Commit(ctx, "remote-layer", "remote-fetch",
		snapshots.WithLabels(map[string]string{labelSnapshotRef: chain[0].String()})); err != nil {
		t.Fatal(err)
	}

	d := newDaemon(t, withConfig(fmt.Sprintf("version = 1\n[snapshotters.lazy]\naddress = %q\n", sock))).start()
	d.mustCtr("images", "import", "--no-unpack", archive)

	// Unpack as containerd's client does after a pull, with the unpacker
	// that labels each extraction Prepare with the layer's chain ID.
	client := d.client()
	cctx, done, err := client.WithLease(namespaces.WithNamespace(ctx, "default"))
	if err != nil {
		t.Fatal(err)
	}
	defer done(cctx)
	u, err := unpack.NewUnpacker(cctx, client.ContentStore(), unpack.WithUnpackPlatform(unpack.Platform{
		Platform:       platforms.Default(),
		SnapshotterKey: "lazy",
		Snapshotter:    client.SnapshotService("lazy"),
		Applier:        client.DiffService(),
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := images.Dispatch(cctx, u.Unpack(images.ChildrenHandler(client.ContentStore())), nil, img.Manifest); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	if _, err := u.Wait(); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	if lazy.announced.Load() == 0 {
		t.Fatal("the unpack never asked the remote for the layer it has")
	}
	info := d.mustCtr("snapshots", "--snapshotter", "lazy", "info", chain[0].String())
	if !strings.Contains(info, `"Kind": "Committed"`) {
		t.Fatalf("the announced layer is not a committed snapshot in the namespace:\n%s", info)
	}
	// No extraction snapshot was made in the backend: it holds only the
	// layer it had.
	var keys []string
	if err := lazy.Snapshotter.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		keys = append(keys, i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "remote-layer" {
		t.Fatalf("the remote holds %v, want only its own remote-layer", keys)
	}
	// And the namespaced snapshot mounts the remote's layer.
	d.mustCtr("snapshots", "--snapshotter", "lazy", "prepare", "work", chain[0].String())
	root := mountSnapshot(t, d, "lazy", "work")
	if _, err := os.Stat(filepath.Join(root, "bin", "busybox")); !os.IsNotExist(err) {
		// The remote's layer is empty: what mounts is the remote's, not a
		// layer applied here.
		t.Fatalf("the mounted tree holds the applied image (bin/busybox: %v), not the remote's layer", err)
	}
}
