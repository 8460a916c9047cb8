package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// twoLayerImage is the busybox image plus a small second layer, so that its
// unpacked chain has a parent and a child.
func twoLayerImage(t *testing.T) (*testimage.Image, string, []digest.Digest) {
	t.Helper()
	img, archive := imageArchive(t, testimage.WithRandomLayer(4096, 7))
	chain := identity.ChainIDs(append([]digest.Digest{}, img.DiffIDs...))
	if len(chain) != 2 {
		t.Fatalf("test image has %d layers, want 2", len(chain))
	}
	return img, archive, chain
}

// snapshotRows is `ctr snapshots ls` parsed: key -> "parent kind".
func snapshotRows(out string) map[string][]string {
	rows := map[string][]string{}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		rows[f[0]] = f[1:]
	}
	return rows
}

// mountSnapshot mounts an active snapshot of snapshotter (the default when
// empty) on a fresh directory the way a user would, `ctr snapshots mounts
// <dir> <key> | sh`, and unmounts it when the test ends.
func mountSnapshot(t *testing.T, d *daemon, snapshotter, key string) string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"snapshots"}
	if snapshotter != "" {
		args = append(args, "--snapshotter", snapshotter)
	}
	script, err := d.ctrBytes(append(args, "mounts", dir, key)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(script), "mount ") {
		t.Fatalf("ctr snapshots mounts printed no mount command:\n%s", script)
	}
	sh := exec.Command("sh")
	sh.Stdin = strings.NewReader(string(script))
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("running `%s`: %v\n%s", strings.TrimSpace(string(script)), err, out)
	}
	// Registered after t.TempDir, so it runs before the directory (and what
	// is mounted on it) would be removed.
	t.Cleanup(func() { unmount(dir) })
	return dir
}

// unmount detaches whatever is mounted on dir; not mounted is fine.
func unmount(dir string) {
	for syscall.Unmount(dir, 0) == nil {
	}
}

// requireBusyboxRuns checks that the image's busybox runs under chroot in
// the mounted tree.
func requireBusyboxRuns(t *testing.T, root string) {
	t.Helper()
	out, err := exec.Command("chroot", root, "/bin/busybox", "echo", "ok").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("chroot %s /bin/busybox echo ok: %v\n%s", root, err, out)
	}
}

func TestCtrImportUnpacksIntoCommittedChain(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	img, archive, chain := twoLayerImage(t)

	d.mustCtr("images", "import", archive)
	check := d.mustCtr("images", "check")
	var line string
	for _, l := range strings.Split(check, "\n") {
		if strings.HasPrefix(l, img.Name+" ") {
			line = l
		}
	}
	if f := strings.Fields(line); len(f) == 0 || f[len(f)-1] != "true" || !strings.Contains(line, "complete") {
		t.Fatalf("ctr images check does not report %s complete and unpacked:\n%s", img.Name, check)
	}

	rows := snapshotRows(d.mustCtr("snapshots", "ls"))
	if len(rows) != 2 {
		t.Errorf("ctr snapshots ls lists %d snapshots, want the 2 of the chain: %v", len(rows), rows)
	}
	if r := rows[chain[0].String()]; len(r) != 1 || r[0] != "Committed" {
		t.Errorf("bottom layer %s listed as %v, want Committed without parent", chain[0], r)
	}
	if r := rows[chain[1].String()]; len(r) != 2 || r[0] != chain[0].String() || r[1] != "Committed" {
		t.Errorf("top layer %s listed as %v, want Committed on parent %s", chain[1], r, chain[0])
	}

	// ctr snapshots tree indents a child under its parent.
	tree := d.mustCtr("snapshots", "tree")
	indent := map[string]int{}
	for _, l := range strings.Split(tree, "\n") {
		// ctr prints a child as "  \\_ <key>" under its parent.
		k := strings.TrimLeft(l, " \t\\_")
		if k != "" {
			indent[strings.TrimSpace(k)] = len(l) - len(k)
		}
	}
	pi, okp := indent[chain[0].String()]
	ci, okc := indent[chain[1].String()]
	if !okp || !okc || ci <= pi {
		t.Errorf("ctr snapshots tree does not show %s under %s:\n%s", chain[1], chain[0], tree)
	}

	info := d.mustCtr("snapshots", "info", chain[1].String())
	for _, want := range []string{`"Kind": "Committed"`, `"Name": "` + chain[1].String() + `"`, `"Parent": "` + chain[0].String() + `"`} {
		if !strings.Contains(info, want) {
			t.Errorf("ctr snapshots info %s lacks %s:\n%s", chain[1], want, info)
		}
	}

	usage := d.mustCtr("snapshots", "usage")
	for _, k := range chain {
		if !strings.Contains(usage, k.String()) {
			t.Errorf("ctr snapshots usage does not list %s:\n%s", k, usage)
		}
	}
	// The busybox layer holds the binary (~1 MB) and its applet links.
	one := d.mustCtr("snapshots", "usage", chain[0].String())
	lines := strings.Split(strings.TrimSpace(one), "\n")
	if f := strings.Fields(lines[len(lines)-1]); len(f) < 4 || f[0] != chain[0].String() || f[2] != "MiB" || f[3] == "0" {
		t.Errorf("ctr snapshots usage %s does not report the busybox layer's size and inodes:\n%s", chain[0], one)
	}
}

func TestPreparedSnapshotMountsARunnableTree(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	_, archive, chain := twoLayerImage(t)
	d.mustCtr("images", "import", archive)

	d.mustCtr("snapshots", "prepare", "work", chain[1].String())
	root := mountSnapshot(t, d, "", "work")
	requireBusyboxRuns(t, root)
	// The tree is writable and writes land in the active snapshot only.
	if err := os.WriteFile(filepath.Join(root, "written"), []byte("x"), 0o644); err != nil {
		t.Fatalf("writing into the mounted active snapshot: %v", err)
	}
	unmount(root)
	// ctr labels what it prepares as a GC root (its views it does not, so
	// a collection may take them at any time): a sibling is safe to use.
	d.mustCtr("snapshots", "prepare", "sibling", chain[1].String())
	sibling := mountSnapshot(t, d, "", "sibling")
	if _, err := os.Stat(filepath.Join(sibling, "written")); err == nil {
		t.Error("a write into one active snapshot shows through in another of the same parent")
	}
	requireBusyboxRuns(t, sibling)
}

func TestSnapshotsAreIsolatedByNamespace(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()

	d.mustCtr("-n", "a", "snapshots", "prepare", "work")
	if out := d.mustCtr("-n", "b", "snapshots", "ls"); len(snapshotRows(out)) != 0 {
		t.Fatalf("namespace b lists namespace a's snapshots:\n%s", out)
	}
	if out, err := d.ctr("-n", "b", "snapshots", "info", "work"); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("namespace b reads namespace a's snapshot: err=%v\n%s", err, out)
	}
	// The same key in b is b's own; removing it leaves a's alone.
	d.mustCtr("-n", "b", "snapshots", "prepare", "work")
	d.mustCtr("-n", "b", "snapshots", "rm", "work")
	if rows := snapshotRows(d.mustCtr("-n", "a", "snapshots", "ls")); len(rows["work"]) != 1 || rows["work"][0] != "Active" {
		t.Errorf("namespace a's snapshot after b removed its own of the same key: %v", rows)
	}

	out, err := d.ctr("namespaces", "rm", "a")
	if err == nil || !strings.Contains(out, "failed precondition") || !strings.Contains(out, "snapshots") {
		t.Fatalf("removing a namespace that holds a snapshot: err=%v, want FailedPrecondition naming snapshots\n%s", err, out)
	}
	if out := d.mustCtr("namespaces", "ls", "-q"); !strings.Contains(out, "a\n") {
		t.Fatalf("the refused rm removed namespace a anyway:\n%s", out)
	}
	d.mustCtr("-n", "a", "snapshots", "rm", "work")
	d.mustCtr("namespaces", "rm", "a")
}

// backendSnapshotDirs lists the snapshot directories a snapshotter process
// keeps under its root.
func (d *daemon) backendSnapshotDirs(name string) []string {
	entries, _ := os.ReadDir(filepath.Join(d.root, "snapshotter-"+name, "snapshots"))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestImageRemovalCollectsItsSnapshots(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	img, archive, _ := twoLayerImage(t)
	d.mustCtr("images", "import", archive)
	if dirs := d.backendSnapshotDirs("overlayfs"); len(dirs) != 2 {
		t.Fatalf("after unpacking a 2-layer image the overlayfs root holds %v, want 2 snapshot directories", dirs)
	}

	d.mustCtr("images", "rm", "--sync", img.Name)
	if out := d.mustCtr("snapshots", "ls"); len(snapshotRows(out)) != 0 {
		t.Errorf("snapshots still listed after a synchronous image removal:\n%s", out)
	}
	waitFor(t, 5*time.Second, "the overlayfs snapshot directories to be removed", func() bool {
		return len(d.backendSnapshotDirs("overlayfs")) == 0
	})
	if len(d.diskBlobs()) != 0 {
		t.Errorf("blobs left after a synchronous image removal: %v", d.diskBlobs())
	}
}

func TestNativeSnapshotterUnpacksAndMounts(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	_, archive, chain := twoLayerImage(t)
	d.mustCtr("images", "import", "--snapshotter", "native", archive)

	rows := snapshotRows(d.mustCtr("snapshots", "--snapshotter", "native", "ls"))
	if r := rows[chain[1].String()]; len(r) != 2 || r[0] != chain[0].String() || r[1] != "Committed" {
		t.Errorf("native lists the top layer %s as %v, want Committed on %s (all: %v)", chain[1], r, chain[0], rows)
	}
	if out := d.mustCtr("snapshots", "ls"); len(snapshotRows(out)) != 0 {
		t.Errorf("an import into native left snapshots on overlayfs:\n%s", out)
	}
	if dirs := d.backendSnapshotDirs("native"); len(dirs) != 2 {
		t.Errorf("native root holds snapshot directories %v, want 2", dirs)
	}

	d.mustCtr("snapshots", "--snapshotter", "native", "prepare", "work", chain[1].String())
	root := mountSnapshot(t, d, "native", "work")
	requireBusyboxRuns(t, root)
}

func TestKilledSnapshotterKeepsActiveSnapshotCommittable(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	_, archive, chain := twoLayerImage(t)
	d.mustCtr("images", "import", archive)

	d.mustCtr("snapshots", "prepare", "work", chain[1].String())
	root := mountSnapshot(t, d, "", "work")
	if err := os.WriteFile(filepath.Join(root, "before-crash"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmount(root)

	old := d.servicePid("overlayfs")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the supervisor to restart the overlayfs snapshotter", func() bool {
		pid := d.servicePidOrZero("overlayfs")
		return pid != 0 && pid != old
	})

	rows := snapshotRows(d.mustCtr("snapshots", "ls"))
	if r := rows["work"]; len(r) != 2 || r[0] != chain[1].String() || r[1] != "Active" {
		t.Fatalf("after kill -9 the prepared snapshot is listed as %v, want Active on %s (all: %v)", r, chain[1], rows)
	}
	for _, k := range chain {
		if r := rows[k.String()]; len(r) == 0 || r[len(r)-1] != "Committed" {
			t.Errorf("after kill -9 layer %s is listed as %v, want Committed", k, r)
		}
	}
	if len(rows) != 3 {
		t.Errorf("after kill -9 ctr snapshots ls shows %d snapshots, want 3: %v", len(rows), rows)
	}

	root = mountSnapshot(t, d, "", "work")
	if b, err := os.ReadFile(filepath.Join(root, "before-crash")); err != nil || string(b) != "kept" {
		t.Errorf("a file written before kill -9 reads back as %q, %v", b, err)
	}
	requireBusyboxRuns(t, root)
	unmount(root)

	d.mustCtr("snapshots", "commit", "done", "work")
	if info := d.mustCtr("snapshots", "info", "done"); !strings.Contains(info, `"Kind": "Committed"`) || !strings.Contains(info, `"Parent": "`+chain[1].String()+`"`) {
		t.Errorf("ctr snapshots info done after the commit:\n%s", info)
	}
	if _, err := d.ctr("snapshots", "info", "work"); err == nil {
		t.Error("the active key is still there after its commit")
	}
}

func TestCtrSnapshotCommandsPublishEvents(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	sub := subscribeSynced(t, d.client(), `topic~="^/snapshot/"`)

	d.mustCtr("-n", "ev", "snapshots", "prepare", "work")
	if ev, ok := sub.expect("/snapshot/prepare", "ev").(*eventstypes.SnapshotPrepare); !ok || ev.Key != "work" || ev.Parent != "" || ev.Snapshotter != "overlayfs" {
		t.Errorf("/snapshot/prepare event is %#v, want SnapshotPrepare of work on overlayfs", ev)
	}
	d.mustCtr("-n", "ev", "snapshots", "commit", "done", "work")
	if ev, ok := sub.expect("/snapshot/commit", "ev").(*eventstypes.SnapshotCommit); !ok || ev.Key != "work" || ev.Name != "done" || ev.Snapshotter != "overlayfs" {
		t.Errorf("/snapshot/commit event is %#v, want SnapshotCommit of work as done on overlayfs", ev)
	}
	d.mustCtr("-n", "ev", "snapshots", "rm", "done")
	if ev, ok := sub.expect("/snapshot/remove", "ev").(*eventstypes.SnapshotRemove); !ok || ev.Key != "done" || ev.Snapshotter != "overlayfs" {
		t.Errorf("/snapshot/remove event is %#v, want SnapshotRemove of done on overlayfs", ev)
	}
	for _, env := range sub.fence() {
		t.Errorf("unexpected event %s in namespace %s", env.Topic, env.Namespace)
	}
}

// TestContainerdSnapshotterSuiteThroughGateway runs containerd's snapshotter
// suite against the namespaced view, through the gateway, with the
// containerd client. The suite puts every test in namespace "testsuite" and
// runs them in parallel, so each test's snapshotter moves its calls into a
// namespace of its own, inside a lease that its cleanup deletes.
func TestContainerdSnapshotterSuiteThroughGateway(t *testing.T) {
	for _, name := range []string{"overlayfs", "native"} {
		t.Run(name, func(t *testing.T) {
			d := newDaemon(t).start()
			client := d.client()
			var n atomic.Int64
			testsuite.SnapshotterSuite(t, name, func(ctx context.Context, _ string) (snapshots.Snapshotter, func() error, error) {
				ns := fmt.Sprintf("suite-%d", n.Add(1))
				nctx := namespaces.WithNamespace(context.Background(), ns)
				l, err := client.LeasesService().Create(nctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
				if err != nil {
					return nil, nil, err
				}
				sn := &namespacedSnapshotter{Snapshotter: client.SnapshotService(name), ns: ns, lease: l.ID}
				return sn, func() error {
					return client.LeasesService().Delete(nctx, l, leases.SynchronousDelete)
				}, nil
			})
		})
	}
}

// namespacedSnapshotter moves every call into its namespace and lease,
// keeping the rest of the caller's context (the suite's logger and mount
// manager).
type namespacedSnapshotter struct {
	snapshots.Snapshotter
	ns, lease string
}

func (s *namespacedSnapshotter) ctx(ctx context.Context) context.Context {
	return leases.WithLease(namespaces.WithNamespace(ctx, s.ns), s.lease)
}

func (s *namespacedSnapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return s.Snapshotter.Stat(s.ctx(ctx), key)
}

func (s *namespacedSnapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return s.Snapshotter.Update(s.ctx(ctx), info, fieldpaths...)
}

func (s *namespacedSnapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return s.Snapshotter.Usage(s.ctx(ctx), key)
}

func (s *namespacedSnapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	return s.Snapshotter.Mounts(s.ctx(ctx), key)
}

func (s *namespacedSnapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.Snapshotter.Prepare(s.ctx(ctx), key, parent, opts...)
}

func (s *namespacedSnapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.Snapshotter.View(s.ctx(ctx), key, parent, opts...)
}

func (s *namespacedSnapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.Snapshotter.Commit(s.ctx(ctx), name, key, opts...)
}

func (s *namespacedSnapshotter) Remove(ctx context.Context, key string) error {
	return s.Snapshotter.Remove(s.ctx(ctx), key)
}

func (s *namespacedSnapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.Snapshotter.Walk(s.ctx(ctx), fn, filters...)
}

// Close leaves the client's connection open: the daemon's client is shared
// by every test of the suite, and the suite closes twice.
func (s *namespacedSnapshotter) Close() error { return nil }

// TestCollectionKeepsSnapshotsMadeWhileItRuns makes snapshots (GC roots by
// label, as ctr and the unpacker make them) while collections run back to
// back: none of them may disappear from the snapshotter under its record.
func TestCollectionKeepsSnapshotsMadeWhileItRuns(t *testing.T) {
	d := newDaemon(t).start()
	client := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "race")
	sn := client.SnapshotService("overlayfs")
	root := snapshots.WithLabels(map[string]string{"containerd.io/gc.root": time.Now().UTC().Format(time.RFC3339)})

	// Each synchronous lease delete runs a collection.
	stop := make(chan struct{})
	collected := make(chan int)
	go func() {
		n := 0
		defer func() { collected <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			l, err := client.LeasesService().Create(ctx, leases.WithRandomID())
			if err != nil {
				t.Errorf("create lease: %v", err)
				return
			}
			if err := client.LeasesService().Delete(ctx, l, leases.SynchronousDelete); err != nil {
				t.Errorf("delete lease: %v", err)
				return
			}
			n++
		}
	}()

	deadline := time.Now().Add(2 * time.Second)
	parent := ""
	var failed error
	for i := 0; time.Now().Before(deadline) && failed == nil; i++ {
		active, name := fmt.Sprintf("active-%d", i), fmt.Sprintf("layer-%d", i)
		if _, err := sn.Prepare(ctx, active, parent, root); err != nil {
			failed = fmt.Errorf("prepare %s on %q: %w", active, parent, err)
			break
		}
		if _, err := sn.Mounts(ctx, active); err != nil {
			failed = fmt.Errorf("mounts of %s just prepared: %w", active, err)
			break
		}
		if err := sn.Commit(ctx, name, active, root); err != nil {
			failed = fmt.Errorf("commit %s as %s: %w", active, name, err)
			break
		}
		parent = name
	}
	close(stop)
	n := <-collected
	t.Logf("%d collections ran meanwhile", n)
	if failed != nil {
		t.Fatalf("a snapshot made while collections ran vanished: %v", failed)
	}
}

// A Prepare labelled with the committed snapshot it is to become
// (containerd.io/snapshot.ref, as an unpack labels each layer's) is
// AlreadyExists when the namespace has that snapshot, as in containerd, and
// the call's lease holds it: an unpack of an image whose layers are there
// skips them instead of fetching and applying them again.
func TestPrepareOfATargetTheNamespaceHasIsAlreadyExists(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	sn := c.SnapshotService("overlayfs")
	if _, err := sn.Prepare(ctx, "work", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "layer-1", "work"); err != nil {
		t.Fatal(err)
	}
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	lctx := leases.WithLease(ctx, l.ID)
	_, err = sn.Prepare(lctx, "extract-1", "", snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": "layer-1"}))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare with a target the namespace has: %v, want AlreadyExists", err)
	}
	if _, err := sn.Stat(ctx, "extract-1"); !errdefs.IsNotFound(err) {
		t.Fatalf("the refused Prepare made its key anyway: %v", err)
	}
	rs, err := c.LeasesService().ListResources(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	held := false
	for _, r := range rs {
		held = held || r.Type == "snapshots/overlayfs" && r.ID == "layer-1"
	}
	if !held {
		t.Fatalf("the lease of the refused Prepare holds %v, want snapshots/overlayfs layer-1", rs)
	}
	// In another namespace the target is not there, and the Prepare is made.
	other := namespaces.WithNamespace(context.Background(), "other")
	if _, err := sn.Prepare(other, "extract-1", "", snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": "layer-1"})); err != nil {
		t.Fatalf("Prepare in a namespace without the target: %v", err)
	}
	if err := sn.Remove(other, "extract-1"); err != nil {
		t.Fatal(err)
	}
}
