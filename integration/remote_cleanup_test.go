package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/snapshotserver"
)

// spySnapshotter is a remote snapshotter as flotillad sees one (containerd's
// Snapshots API on a socket of its own) that passes every call to a real
// flotilla-snapshotter and records what a remote snapshotter such as stargz
// acts on: the labels of each Prepare, and each Cleanup.
type spySnapshotter struct {
	snapshots.Snapshotter
	socket string

	mu       sync.Mutex
	prepares []map[string]string
	cleanups int
}

func (s *spySnapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	s.prepares = append(s.prepares, info.Labels)
	s.mu.Unlock()
	return s.Snapshotter.Prepare(ctx, key, parent, opts...)
}

func (s *spySnapshotter) Cleanup(ctx context.Context) error {
	s.mu.Lock()
	s.cleanups++
	s.mu.Unlock()
	return s.Snapshotter.(snapshots.Cleaner).Cleanup(ctx)
}

func (s *spySnapshotter) cleanupCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cleanups
}

// prepareLabels are the labels of every Prepare so far.
func (s *spySnapshotter) prepareLabels() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]string(nil), s.prepares...)
}

// startSpySnapshotter serves a spy over a flotilla-snapshotter started by
// hand; flotillad reaches it as the remote snapshotter named "remote".
func startSpySnapshotter(t *testing.T) (*spySnapshotter, *remoteSnapshotter) {
	t.Helper()
	backend := startRemoteSnapshotter(t, "overlayfs")
	dir, err := os.MkdirTemp("", "spy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	spy := &spySnapshotter{Snapshotter: backend.raw(), socket: filepath.Join(dir, "spy.sock")}
	srv := rpc.NewServer(nil)
	snapshotserver.New(spy).Register(srv.Server)
	l, err := rpc.Listen(spy.socket)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return spy, backend
}

// TestCollectorCleansUpARemoteSnapshotterAndTheAPIServesCleanup: as
// containerd's collector does, Flotilla's asks a remote snapshotter to clean
// up (its directories, its FUSE mounts) after a sweep that removed its
// snapshots; and Cleanup through the namespaced Snapshots API reaches the
// snapshotter instead of answering NotImplemented.
func TestCollectorCleansUpARemoteSnapshotterAndTheAPIServesCleanup(t *testing.T) {
	spy, backend := startSpySnapshotter(t)
	d := newDaemon(t, withConfig(fmt.Sprintf("[snapshotters.remote]\naddress = %q\n", spy.socket))).start()
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), time.Minute)
	defer cancel()
	sn := c.SnapshotService("remote")

	if _, err := sn.Prepare(ctx, "scratch", ""); err != nil {
		t.Fatalf("prepare on the remote: %v", err)
	}
	before := spy.cleanupCount()
	if err := sn.Remove(ctx, "scratch"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the collector to remove the snapshot from the remote and clean it up", func() bool {
		return len(rawSnapshots(t, backend.raw())) == 0 && spy.cleanupCount() > before
	})

	cleaner, ok := sn.(snapshots.Cleaner)
	if !ok {
		t.Fatalf("containerd's snapshot client %T has no Cleanup", sn)
	}
	before = spy.cleanupCount()
	if err := cleaner.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup of the remote through the namespaced API: %v", err)
	}
	if spy.cleanupCount() != before+1 {
		t.Errorf("Cleanup through the API reached the remote %d times, want once", spy.cleanupCount()-before)
	}
	if err := c.SnapshotService("overlayfs").(snapshots.Cleaner).Cleanup(ctx); err != nil {
		t.Errorf("Cleanup of overlayfs through the namespaced API: %v", err)
	}
	if out := d.mustCtr("snapshots", "--snapshotter", "remote", "ls"); strings.Contains(out, "scratch") {
		t.Errorf("the removed snapshot is still listed:\n%s", out)
	}
}

// TestRemoteSnapshotterThatRefusesConnectionsFailsItsCallsAtOnce: a remote
// snapshotter nobody listens for any more (killed: its socket refuses; or
// its socket gone) fails its callers Unavailable after a short retry, not
// after the call timeout (30 s); once it is back, calls work again.
func TestRemoteSnapshotterThatRefusesConnectionsFailsItsCallsAtOnce(t *testing.T) {
	remote := startRemoteSnapshotter(t, "overlayfs")
	d := newDaemon(t, remoteConfig(remote, "")).start()
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), time.Minute)
	defer cancel()
	sn := c.SnapshotService("remote")
	if _, err := sn.Prepare(ctx, "before", "", snapshots.WithLabels(map[string]string{"containerd.io/gc.root": "test"})); err != nil {
		t.Fatalf("prepare on the remote: %v", err)
	}

	const prompt = 5 * time.Second
	failsAtOnce := func(what string) {
		t.Helper()
		for i, call := range []func() error{
			func() error { _, err := sn.Prepare(ctx, fmt.Sprintf("%s-%d", what, 0), ""); return err },
			func() error { _, err := sn.Mounts(ctx, "before"); return err },
			func() error { _, err := sn.Usage(ctx, "before"); return err },
		} {
			start := time.Now()
			err := call()
			took := time.Since(start)
			if !errdefs.IsUnavailable(err) {
				t.Errorf("%s: call %d: %v, want Unavailable", what, i, err)
			}
			if took > prompt {
				t.Errorf("%s: call %d failed after %s, want under %s (the call timeout is 30 s)", what, i, took, prompt)
			}
		}
	}
	remote.kill()
	failsAtOnce("refused")
	if err := os.Remove(remote.socket); err != nil {
		t.Fatal(err)
	}
	failsAtOnce("gone")

	remote.start()
	if _, err := sn.Mounts(ctx, "before"); err != nil {
		t.Fatalf("mounts of the remote's snapshot once it is back: %v", err)
	}
	if _, err := sn.Prepare(ctx, "after", ""); err != nil {
		t.Fatalf("prepare on the remote once it is back: %v", err)
	}
}

// TestPullsLabelSnapshotsForLazySnapshotters: `flotilla pull` and CRI
// PullImage label each layer's Prepare with containerd's CRI snapshot
// annotations (the image reference, the layer's digest, the image's
// layers), which a lazy snapshotter such as stargz reads to mount the layer
// from the registry instead of having it downloaded.
func TestPullsLabelSnapshotsForLazySnapshotters(t *testing.T) {
	requireTool(t, "docker-registry", "docker-registry")
	spy, _ := startSpySnapshotter(t)
	reg := startPodRegistry(t)
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.push(t, img, nil, "flotilla/lazy", "v1")
	d := newDaemon(t, withConfig(fmt.Sprintf("[snapshotters.remote]\naddress = %q\n[services.cri.options]\nsnapshotter = \"remote\"\n", spy.socket))).start()

	layers := make([]string, len(img.Layers))
	for i, l := range img.Layers {
		layers[i] = l.Digest.String()
	}
	check := func(how string) {
		t.Helper()
		var labelled []map[string]string
		for _, l := range spy.prepareLabels() {
			if l["containerd.io/snapshot/cri.image-ref"] != "" {
				labelled = append(labelled, l)
			}
		}
		if len(labelled) != len(layers) {
			t.Fatalf("%s: %d Prepares carried the image reference, want one per layer (%d): %v", how, len(labelled), len(layers), spy.prepareLabels())
		}
		for i, l := range labelled {
			if l["containerd.io/snapshot/cri.image-ref"] != ref {
				t.Errorf("%s: layer %d labelled image-ref %q, want %q", how, i, l["containerd.io/snapshot/cri.image-ref"], ref)
			}
			if l["containerd.io/snapshot/cri.layer-digest"] != layers[i] {
				t.Errorf("%s: layer %d labelled layer-digest %q, want %s", how, i, l["containerd.io/snapshot/cri.layer-digest"], layers[i])
			}
			if got := l["containerd.io/snapshot/cri.image-layers"]; !strings.HasPrefix(got, layers[i]) {
				t.Errorf("%s: layer %d labelled image-layers %q, want the layers from %s on", how, i, got, layers[i])
			}
		}
	}

	d.flotilla("pull", "--snapshotter", "remote", "--plain-http", ref)
	check("flotilla pull")

	spy.mu.Lock()
	spy.prepares = nil
	spy.mu.Unlock()
	_, images := criClients(t, d)
	pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := images.PullImage(pctx, &runtimeapi.ImageSpec{Image: ref}, nil, nil); err != nil {
		t.Fatalf("CRI PullImage %s into the remote snapshotter: %v", ref, err)
	}
	check("CRI PullImage")
}
