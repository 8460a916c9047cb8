package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/image-spec/identity"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// remoteSnapshotter is a flotilla-snapshotter process started by hand, as an
// operator would start a remote snapshotter: Flotilla (or containerd) only
// knows its socket.
type remoteSnapshotter struct {
	t      *testing.T
	dir    string
	socket string
	root   string
	driver string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
}

// startRemoteSnapshotter runs flotilla-snapshotter on a socket of its own
// under a short directory in /tmp (Unix socket paths stay under 100 bytes).
func startRemoteSnapshotter(t *testing.T, driver string) *remoteSnapshotter {
	t.Helper()
	requireRoot(t)
	dir, err := os.MkdirTemp("", "rs")
	if err != nil {
		t.Fatal(err)
	}
	r := &remoteSnapshotter{
		t:      t,
		dir:    dir,
		socket: filepath.Join(dir, "s.sock"),
		root:   filepath.Join(dir, "root"),
		driver: driver,
		out:    &syncBuffer{},
	}
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("remote snapshotter output:\n%s", r.out.String())
		}
		_ = os.RemoveAll(dir)
	})
	r.start()
	return r
}

func (r *remoteSnapshotter) start() {
	r.t.Helper()
	r.cmd = exec.Command(filepath.Join(binDir, "flotilla-snapshotter"),
		"--socket", r.socket, "--root", r.root, "--log-level", "debug",
		"--option", "driver="+r.driver)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start flotilla-snapshotter: %v", err)
	}
	done := make(chan struct{})
	r.done = done
	cmd := r.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	// The process is ready once its socket answers a List.
	sn := r.raw()
	waitFor(r.t, 15*time.Second, "the remote snapshotter to answer on "+r.socket, func() bool {
		select {
		case <-done:
			r.t.Fatalf("flotilla-snapshotter exited at start:\n%s", r.out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		return sn.Walk(ctx, func(context.Context, snapshots.Info) error { return nil }) == nil
	})
}

// signal sends sig to the running process.
func (r *remoteSnapshotter) signal(sig syscall.Signal) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v to the remote snapshotter: %v", sig, err)
	}
}

// kill ends the process with SIGKILL and waits for it.
func (r *remoteSnapshotter) kill() {
	r.t.Helper()
	r.signal(syscall.SIGKILL)
	<-r.done
}

func (r *remoteSnapshotter) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	// A stopped process must be continued to act on SIGTERM.
	_ = r.cmd.Process.Signal(syscall.SIGCONT)
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// raw is containerd's snapshots proxy client on the process's own socket:
// the unnamespaced backend as the metadata service sees it.
func (r *remoteSnapshotter) raw() snapshots.Snapshotter {
	r.t.Helper()
	conn, err := rpc.Dial(r.socket)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "remote")
}

// rawSnapshots lists what the process itself holds.
func rawSnapshots(t *testing.T, sn snapshots.Snapshotter) []snapshots.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []snapshots.Info
	if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		out = append(out, i)
		return nil
	}); err != nil {
		t.Fatalf("walk of the remote snapshotter's raw API: %v", err)
	}
	return out
}

func rawNames(infos []snapshots.Info) []string {
	var out []string
	for _, i := range infos {
		out = append(out, i.Name)
	}
	return out
}

// hasRawSuffix says whether a raw snapshot's name ends in suffix: clients
// with namespaces (Flotilla's metadata, containerd's) prefix their keys.
func hasRawSuffix(infos []snapshots.Info, suffix string) bool {
	for _, i := range infos {
		if strings.HasSuffix(i.Name, suffix) {
			return true
		}
	}
	return false
}

// remoteConfig is flotillad's configuration naming r as snapshotter "remote".
func remoteConfig(r *remoteSnapshotter, extra string) daemonOption {
	return withConfig(fmt.Sprintf("%s\n[snapshotters.remote]\naddress = %q\n", extra, r.socket))
}

// mountAndCheckBusybox mounts a snapshot with the command `ctr snapshots
// mounts` prints and checks that the image's busybox is in the tree.
func mountAndCheckBusybox(t *testing.T, d *daemon, snapshotter, key string) {
	t.Helper()
	target := t.TempDir()
	script := d.mustCtr("snapshots", "--snapshotter", snapshotter, "mounts", target, key)
	if !strings.Contains(script, "mount") {
		t.Fatalf("ctr snapshots mounts printed no mount command:\n%s", script)
	}
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("running the mount command of %s: %v\n%s\n%s", key, err, script, out)
	}
	defer func() {
		if err := syscall.Unmount(target, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	}()
	if _, err := os.Stat(filepath.Join(target, "bin", "busybox")); err != nil {
		t.Fatalf("snapshot %s mounted at %s has no /bin/busybox: %v", key, target, err)
	}
}

func TestRemoteSnapshotterByAddressUnpacksAndSurvivesItsRestart(t *testing.T) {
	remote := startRemoteSnapshotter(t, "overlayfs")
	d := newDaemon(t, remoteConfig(remote, "")).start()
	img, archive := imageArchive(t)
	chainID := identity.ChainID(img.DiffIDs).String()

	plugins := d.mustCtr("plugins", "ls")
	listed := false
	for _, line := range strings.Split(plugins, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "io.containerd.snapshotter.v1" && f[1] == "remote" {
			listed = true
		}
	}
	if !listed {
		t.Fatalf("ctr plugins ls does not list the remote snapshotter (io.containerd.snapshotter.v1 remote):\n%s", plugins)
	}

	d.mustCtr("images", "import", "--snapshotter", "remote", archive)
	if out := d.mustCtr("snapshots", "--snapshotter", "remote", "ls"); !strings.Contains(out, chainID) || !strings.Contains(out, "Committed") {
		t.Fatalf("ctr snapshots --snapshotter remote ls does not show the committed chain %s:\n%s", chainID, out)
	}
	if out := d.mustCtr("snapshots", "ls"); strings.Contains(out, chainID) {
		t.Fatalf("the image was unpacked into the default snapshotter instead of the remote one:\n%s", out)
	}
	raw := remote.raw()
	if n := len(rawSnapshots(t, raw)); n < len(img.DiffIDs) {
		t.Fatalf("the remote process holds %d snapshots, want at least the %d layers: %v", n, len(img.DiffIDs), rawNames(rawSnapshots(t, raw)))
	}

	// A rootfs on the remote: prepared, mounted, busybox inside. The
	// gc.root label keeps the collector away from it, as a container would.
	d.mustCtr("snapshots", "--snapshotter", "remote", "prepare", "work1", chainID)
	d.mustCtr("snapshots", "--snapshotter", "remote", "label", "work1", "containerd.io/gc.root=test")
	mountAndCheckBusybox(t, d, "remote", "work1")

	metadataPid := d.servicePid("metadata")
	remote.kill()
	remote.start()

	// flotillad never noticed beyond the failed calls: same processes,
	// still serving, and the snapshots on the remote work again.
	select {
	case <-d.done:
		t.Fatalf("flotillad exited when the remote snapshotter was killed: %v", d.exitErr)
	default:
	}
	if pid := d.servicePid("metadata"); pid != metadataPid {
		t.Fatalf("the metadata service restarted (pid %d -> %d) when the remote snapshotter was killed", metadataPid, pid)
	}
	d.mustCtr("version")
	mountAndCheckBusybox(t, d, "remote", "work1")
	d.mustCtr("snapshots", "--snapshotter", "remote", "prepare", "work2", chainID)
	d.mustCtr("snapshots", "--snapshotter", "remote", "commit", "committed2", "work2")
	d.mustCtr("snapshots", "--snapshotter", "remote", "prepare", "work3", "committed2")
	mountAndCheckBusybox(t, d, "remote", "work3")
	d.mustCtr("snapshots", "--snapshotter", "remote", "rm", "work3", "committed2")
	if out := d.mustCtr("snapshots", "--snapshotter", "remote", "usage", "work1"); !strings.Contains(out, "work1") {
		t.Fatalf("ctr snapshots usage work1 after the restart:\n%s", out)
	}
	if out := d.mustCtr("plugins", "ls", "id==remote"); !strings.Contains(out, "remote") {
		t.Fatalf("the remote snapshotter is no longer listed after its restart:\n%s", out)
	}
}

// containerd16 is Debian's containerd 1.6 daemon in directories of its own,
// with a flotilla-snapshotter as a proxy_plugins entry.
type containerd16 struct {
	t       *testing.T
	dir     string
	address string
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{}
}

func startContainerd16(t *testing.T, proxyName, proxySocket string) *containerd16 {
	t.Helper()
	return runContainerd16(t, "cd", func(dir, address string) string {
		return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "debug"

[proxy_plugins]
  [proxy_plugins.%s]
    type = "snapshot"
    address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), address, filepath.Join(dir, "t.sock"), proxyName, proxySocket)
	})
}

// runContainerd16 starts Debian's containerd in a temporary directory of
// its own (prefix names it), with the configuration config writes for
// that directory and its client socket, and stops it when the test ends.
func runContainerd16(t *testing.T, prefix string, config func(dir, address string) string) *containerd16 {
	t.Helper()
	bin := requireTool(t, "containerd", "containerd")
	requireTool(t, "containerd-shim-runc-v2", "containerd")
	requireTool(t, "runc", "runc")
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd16{t: t, dir: dir, address: filepath.Join(dir, "c.sock"), out: &syncBuffer{}}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config(dir, c.address)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config", cfgPath)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("containerd output:\n%s", c.out.String())
		}
		_ = os.RemoveAll(dir)
	})
	waitFor(t, 20*time.Second, "containerd 1.6 to answer on "+c.address, func() bool {
		select {
		case <-c.done:
			t.Fatalf("containerd exited at start:\n%s", c.out.String())
		default:
		}
		_, err := c.ctr("version")
		return err == nil
	})
	return c
}

func (c *containerd16) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.address}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *containerd16) mustCtr(args ...string) string {
	c.t.Helper()
	out, err := c.ctr(args...)
	if err != nil {
		c.t.Fatalf("ctr (containerd 1.6) %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// stop ends containerd, any shim it left behind, and every mount under its
// directories.
func (c *containerd16) stop() {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
	for _, pid := range processesMentioning(c.address) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	unmountUnder(c.dir)
}

// processesMentioning lists the pids whose command line contains s (the
// shims of one containerd name its address).
func processesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

func TestContainerdRunsAContainerOnFlotillaSnapshotterAsProxyPlugin(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	remote := startRemoteSnapshotter(t, "overlayfs")
	c := startContainerd16(t, "flotilla", remote.socket)
	img, archive := imageArchive(t)
	chainID := identity.ChainID(img.DiffIDs).String()

	if out := c.mustCtr("plugins", "ls", "type==io.containerd.snapshotter.v1"); !strings.Contains(out, "flotilla") {
		t.Fatalf("containerd does not list the proxy snapshotter flotilla:\n%s", out)
	}
	c.mustCtr("images", "import", "--snapshotter", "flotilla", archive)
	if out := c.mustCtr("snapshots", "--snapshotter", "flotilla", "ls"); !strings.Contains(out, chainID) {
		t.Fatalf("containerd's ctr snapshots --snapshotter flotilla ls does not show the chain %s:\n%s", chainID, out)
	}
	// containerd's metadata keeps the chain in our process, under a key
	// of its own (<namespace>/<id>/<name>).
	raw := remote.raw()
	if !hasRawSuffix(rawSnapshots(t, raw), "/"+chainID) {
		t.Fatalf("the flotilla-snapshotter process does not hold containerd's snapshot %s: %v", chainID, rawNames(rawSnapshots(t, raw)))
	}

	out, err := c.ctr("run", "--rm", "--snapshotter", "flotilla", img.Name, "t1", "echo", "ok")
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ctr run --rm --snapshotter flotilla %s t1 echo ok: err=%v, output:\n%s", img.Name, err, out)
	}
	// --rm removed the container's rootfs snapshot, and containerd's
	// collector removes it from our process too.
	if out := c.mustCtr("snapshots", "--snapshotter", "flotilla", "ls"); strings.Contains(out, "t1") {
		t.Fatalf("the container's snapshot t1 is still listed after ctr run --rm:\n%s", out)
	}
	waitFor(t, 10*time.Second, "containerd to remove the container's snapshot t1 from the flotilla-snapshotter", func() bool {
		return !hasRawSuffix(rawSnapshots(t, raw), "/t1")
	})
}

// timedCtr runs ctr, killing it after limit, and says how long it took.
func (d *daemon) timedCtr(limit time.Duration, args ...string) (string, error, time.Duration) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", d.address}, args...)...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("killed after %s: %w", limit, ctx.Err())
	}
	return string(out), err, time.Since(start)
}

func TestHungRemoteSnapshotterFailsItsCallsAndWedgesNothingElse(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	const (
		callTimeout = 2 * time.Second
		// slack covers ctr's own start and the hops through the gateway.
		slack  = 2 * time.Second
		prompt = 1500 * time.Millisecond
	)
	remote := startRemoteSnapshotter(t, "overlayfs")
	d := newDaemon(t, remoteConfig(remote, fmt.Sprintf("[timeouts]\ncall = %q\n", callTimeout))).start()
	img, archive := imageArchive(t)
	chainID := identity.ChainID(img.DiffIDs).String()
	raw := remote.raw()

	// Unpack into the remote once the import's own collection is over, so
	// that this test is about the hang alone.
	runs := d.gcRuns()
	d.mustCtr("images", "import", "--no-unpack", archive)
	waitFor(t, 10*time.Second, "the collection after the import", func() bool { return d.gcRuns() > runs })
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	image, err := c.GetImage(ctx, img.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Unpack(ctx, "remote"); err != nil {
		t.Fatalf("unpack into the remote snapshotter: %v", err)
	}
	if _, err := c.SnapshotService("remote").Prepare(ctx, "work", chainID, snapshots.WithLabels(map[string]string{"containerd.io/gc.root": "test"})); err != nil {
		t.Fatalf("prepare work on the remote: %v", err)
	}
	if !hasRawSuffix(rawSnapshots(t, raw), "/"+chainID) || !hasRawSuffix(rawSnapshots(t, raw), "/work") {
		t.Fatalf("the remote process does not hold the chain and work before the hang: %v", rawNames(rawSnapshots(t, raw)))
	}
	d.mustCtr("images", "import", "--no-unpack", "--index-name", "other", archive)

	remote.signal(syscall.SIGSTOP)
	stopped := true
	t.Cleanup(func() {
		if stopped {
			// Before flotillad stops: its shutdown must not meet a
			// stopped peer because a check above failed.
			_ = remote.cmd.Process.Signal(syscall.SIGCONT)
		}
	})

	answers := func(what string, args ...string) string {
		t.Helper()
		out, err, took := d.timedCtr(2*time.Minute, args...)
		if err != nil {
			t.Fatalf("%s (ctr %s) failed while the remote snapshotter is stopped: %v\n%s", what, strings.Join(args, " "), err, out)
		}
		if took > prompt {
			t.Errorf("%s (ctr %s) took %s while the remote snapshotter is stopped, want under %s", what, strings.Join(args, " "), took, prompt)
		}
		return out
	}
	timesOut := func(what string, args ...string) {
		t.Helper()
		limit := callTimeout + slack
		// ctr gets no deadline of its own (the configured one must apply);
		// it is killed a little after the limit to keep the test short.
		out, err, took := d.timedCtr(limit+time.Second, args...)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s (ctr %s) had not failed after %s (call timeout %s + %s): the configured call timeout did not apply", what, strings.Join(args, " "), took, callTimeout, slack)
			return
		}
		if err == nil {
			t.Fatalf("%s (ctr %s) succeeded against a stopped snapshotter:\n%s", what, strings.Join(args, " "), out)
		}
		if !strings.Contains(strings.ToLower(out), "deadline exceeded") && !strings.Contains(out, "DeadlineExceeded") {
			t.Errorf("%s (ctr %s) failed without DeadlineExceeded: %v\n%s", what, strings.Join(args, " "), err, out)
		}
		if took > limit {
			t.Errorf("%s (ctr %s) took %s to fail, want under the call timeout %s + %s", what, strings.Join(args, " "), took, callTimeout, slack)
		}
	}
	others := func(when string) {
		t.Helper()
		answers("content ls "+when, "content", "ls")
		answers("images ls "+when, "images", "ls")
		answers("namespaces ls "+when, "namespaces", "ls")
		answers("leases ls "+when, "leases", "ls")
		answers("snapshots ls of the remote "+when, "snapshots", "--snapshotter", "remote", "ls")
		answers("overlayfs prepare "+when, "snapshots", "prepare", "ovl-"+when)
		answers("overlayfs mounts "+when, "snapshots", "mounts", "/tmp/unused", "ovl-"+when)
		answers("overlayfs rm "+when, "snapshots", "rm", "ovl-"+when)
		answers("native prepare "+when, "snapshots", "--snapshotter", "native", "prepare", "nat-"+when)
		answers("native rm "+when, "snapshots", "--snapshotter", "native", "rm", "nat-"+when)
	}

	// Records are the metadata service's: listing needs no snapshotter.
	if out := answers("snapshots ls of the remote", "snapshots", "--snapshotter", "remote", "ls"); !strings.Contains(out, chainID) || !strings.Contains(out, "work") {
		t.Fatalf("ctr snapshots --snapshotter remote ls lost the records while the process is stopped:\n%s", out)
	}
	timesOut("prepare on the stopped remote", "snapshots", "--snapshotter", "remote", "prepare", "x", chainID)
	timesOut("mounts on the stopped remote", "snapshots", "--snapshotter", "remote", "mounts", "/tmp/unused", "work")
	timesOut("usage on the stopped remote", "snapshots", "--snapshotter", "remote", "usage", "work")
	others("before-gc")

	// Deleting the image collects synchronously; the sweep of the stopped
	// snapshotter must not hold the deletion (nor anything else) up.
	answersWithin := func(limit time.Duration, what string, args ...string) {
		t.Helper()
		out, err, took := d.timedCtr(2*time.Minute, args...)
		if err != nil {
			t.Fatalf("%s (ctr %s): %v\n%s", what, strings.Join(args, " "), err, out)
		}
		if took > limit {
			t.Errorf("%s (ctr %s) took %s while the remote snapshotter is stopped, want under %s", what, strings.Join(args, " "), took, limit)
		}
	}
	answersWithin(5*time.Second, "synchronous image deletion", "images", "rm", "--sync", img.Name)
	// A sweep of the stopped snapshotter is pending now: calls that need
	// the snapshotter still fail by their own deadline, others answer.
	timesOut("prepare on the stopped remote during its sweep", "snapshots", "--snapshotter", "remote", "prepare", "y", chainID)
	timesOut("mounts on the stopped remote during its sweep", "snapshots", "--snapshotter", "remote", "mounts", "/tmp/unused", "work")
	others("during-gc")
	// Writes take the collector's lock (shared): a collection waiting on
	// the stopped snapshotter's sweep must not hold them.
	start := time.Now()
	if out, err := d.ctrStdin(strings.NewReader("written while a snapshotter hangs"), "content", "ingest", "hang-ingest"); err != nil {
		t.Fatalf("content ingest while the remote snapshotter is stopped: %v\n%s", err, out)
	}
	if took := time.Since(start); took > prompt {
		t.Errorf("content ingest took %s while the remote snapshotter is stopped, want under %s", took, prompt)
	}
	answersWithin(prompt, "removing a remote snapshot's record", "snapshots", "--snapshotter", "remote", "rm", "work")
	answersWithin(5*time.Second, "a second synchronous deletion", "images", "rm", "--sync", "other")

	remote.signal(syscall.SIGCONT)
	stopped = false

	// Nothing references the remote's snapshots any more: the next
	// collections remove them all from the process, including any that a
	// timed-out Prepare made there after the process was continued.
	waitFor(t, 30*time.Second, "the collector to empty the continued remote snapshotter", func() bool {
		d.mustCtr("leases", "create", "--id", "trigger")
		d.mustCtr("leases", "rm", "--sync", "trigger")
		return len(rawSnapshots(t, raw)) == 0
	})
	if out := d.mustCtr("snapshots", "--snapshotter", "remote", "ls"); strings.Contains(out, "sha256:") || strings.Contains(out, "work") {
		t.Fatalf("records of the remote's snapshots are left:\n%s", out)
	}
	entries, _ := os.ReadDir(filepath.Join(remote.root, "snapshots"))
	for _, e := range entries {
		t.Logf("left in the remote's snapshots directory (for its Cleanup): %s", e.Name())
	}
	// And the remote serves as before.
	if _, err := c.SnapshotService("remote").Prepare(ctx, "after", ""); err != nil {
		t.Fatalf("prepare on the continued remote: %v", err)
	}
}

func TestRemoteSnapshotterGetsPrepareLabelsUntouched(t *testing.T) {
	remote := startRemoteSnapshotter(t, "overlayfs")
	d := newDaemon(t, remoteConfig(remote, "")).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "lazy")
	labels := map[string]string{
		// What a lazy-pulling snapshotter reads from its Prepare.
		"containerd.io/snapshot/remote/stargz.reference": "registry.example.com/app:1",
		"containerd.io/snapshot/remote/stargz.layers":    "sha256:aaa,sha256:bbb",
		"containerd.io/snapshot.ref":                     "sha256:target",
		"example.com/owner":                              "team-a",
	}
	sn := c.SnapshotService("remote")
	if _, err := sn.Prepare(ctx, "labelled", "", snapshots.WithLabels(labels)); err != nil {
		t.Fatalf("prepare with labels on the remote: %v", err)
	}
	if _, err := sn.View(ctx, "labelled-view", "", snapshots.WithLabels(map[string]string{"example.com/view": "yes"})); err != nil {
		t.Fatalf("view with labels on the remote: %v", err)
	}

	find := func(suffix string) snapshots.Info {
		t.Helper()
		for _, i := range rawSnapshots(t, remote.raw()) {
			if strings.HasSuffix(i.Name, "/"+suffix) {
				return i
			}
		}
		t.Fatalf("the remote process holds no snapshot for %q: %v", suffix, rawNames(rawSnapshots(t, remote.raw())))
		return snapshots.Info{}
	}
	got := find("labelled")
	for k, v := range labels {
		if got.Labels[k] != v {
			t.Errorf("the remote's snapshot %s has label %s=%q, want %q (labels: %v)", got.Name, k, got.Labels[k], v, got.Labels)
		}
	}
	if v := find("labelled-view").Labels["example.com/view"]; v != "yes" {
		t.Errorf("the remote's view lacks its label example.com/view=yes: %q", v)
	}
	// The namespaced record carries them too.
	info, err := sn.Stat(ctx, "labelled")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range labels {
		if info.Labels[k] != v {
			t.Errorf("Stat of labelled through the gateway: label %s=%q, want %q", k, info.Labels[k], v)
		}
	}
}
