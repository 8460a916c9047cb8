package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/internal/standalone"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// bin is flotilla-snapshotter, built once for every test here.
var bin = &standalone.Binary{Name: "snapshotter"}

func TestMain(m *testing.M) { os.Exit(bin.Main(m)) }

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the snapshotter suite mounts filesystems and needs root, as containerd's does")
	}
}

// start runs flotilla-snapshotter with driver on root, as a remote
// snapshotter (or containerd's proxy_plugins target) would be run.
func start(t testing.TB, driver, root string) (*standalone.Process, error) {
	return bin.Start(t, root, "driver="+driver)
}

// startT is start for callers that want the test failed on error.
func startT(t testing.TB, driver, root string) *standalone.Process {
	t.Helper()
	p, err := start(t, driver, root)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// client is containerd's own proxy snapshotter client over Flotilla's dialer.
func client(t testing.TB, p *standalone.Process) (*grpc.ClientConn, snapshots.Snapshotter) {
	t.Helper()
	conn, err := rpc.Dial(p.Socket)
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
		conn, err := rpc.Dial(p.Socket)
		if err != nil {
			p.Stop()
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)
		return sn, func() error {
			conn.Close()
			return p.Stop()
		}, nil
	})
}

func TestContainerdSnapshotterSuiteOverlayfs(t *testing.T) { suite(t, "overlayfs", "overlayfs") }

func TestContainerdSnapshotterSuiteNative(t *testing.T) { suite(t, "native", "native") }
