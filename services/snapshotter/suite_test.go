package snapshotter_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// binary is flotilla-snapshotter, built once for every test here.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fsbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "flotilla-snapshotter")
	build := exec.Command("go", "build", "-o", binary, "./cmd/flotilla-snapshotter")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building flotilla-snapshotter failed:", err)
		return 1
	}
	return m.Run()
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the snapshotter suite mounts filesystems and needs root, as containerd's does")
	}
}

// process is a flotilla-snapshotter started by hand, as a remote
// snapshotter (or containerd's proxy_plugins target) would be.
type process struct {
	cmd    *exec.Cmd
	socket string
	out    *bytes.Buffer
	exited chan struct{} // closed once cmd.Wait returned
}

// start runs flotilla-snapshotter with driver on root. The socket lives in
// a short temp directory: Unix socket paths are limited to ~100 bytes.
func start(t testing.TB, driver, root string) (*process, error) {
	sockDir, err := os.MkdirTemp("", "fs")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	p := &process{socket: filepath.Join(sockDir, "s.sock"), out: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, "--socket", p.socket, "--root", root, "--log-level", "warn", "--option", "driver="+driver)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	exited := p.exited
	go func() { _ = p.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(p.socket); err == nil {
			return p, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("flotilla-snapshotter exited at start: %v; output:\n%s", p.cmd.ProcessState, p.out)
		default:
		}
		if time.Now().After(deadline) {
			_ = p.cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("flotilla-snapshotter did not create %s within 20s; output:\n%s", p.socket, p.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startT is start for callers that want the test failed on error.
func startT(t testing.TB, driver, root string) *process {
	t.Helper()
	p, err := start(t, driver, root)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// stop ends the process as flotillad would, and reports how it exited.
func (p *process) stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("flotilla-snapshotter did not stop within 15s of SIGTERM; output:\n%s", p.out)
	}
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("flotilla-snapshotter exited with %v; output:\n%s", p.cmd.ProcessState, p.out)
	}
	return nil
}

// kill ends the process at once, as a crash or an OOM kill would.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// client is containerd's own proxy snapshotter client over Flotilla's dialer.
func client(t testing.TB, p *process) (*grpc.ClientConn, snapshots.Snapshotter) {
	t.Helper()
	conn, err := rpc.Dial(p.socket)
	if err != nil {
		t.Fatal(err)
	}
	return conn, proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "flotilla")
}

// suite runs containerd's generic snapshotter suite against the real binary
// reached through containerd's proxy snapshotter client. name sets the
// suite's expectations ("overlayfs" knows that renaming a lower directory
// fails on overlayfs).
func suite(t *testing.T, name, driver string) {
	requireRoot(t)
	testsuite.SnapshotterSuite(t, name, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		p, err := start(t, driver, filepath.Join(root, driver))
		if err != nil {
			return nil, nil, err
		}
		conn, err := rpc.Dial(p.socket)
		if err != nil {
			p.stop()
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)
		return sn, func() error {
			conn.Close()
			return p.stop()
		}, nil
	})
}

func TestContainerdSnapshotterSuiteOverlayfs(t *testing.T) { suite(t, "overlayfs", "overlayfs") }

func TestContainerdSnapshotterSuiteNative(t *testing.T) { suite(t, "native", "native") }
