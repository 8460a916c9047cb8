package metadata

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// remoteAt is containerd's proxy snapshotter over a fail-fast connection to
// sock, as the metadata service reaches a remote snapshotter.
func remoteAt(t *testing.T, sock string) snapshots.Snapshotter {
	t.Helper()
	conn, err := rpc.DialTimeout(sock, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(newFailFast("remote", conn)), "remote")
}

func TestRemoteSnapshotterThatRefusesConnectionsIsUnavailableAtOnce(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	// A socket file nobody listens on refuses connections.
	refusing := filepath.Join(dir, "refusing.sock")
	l, err := net.Listen("unix", refusing)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(refusing); err != nil {
		t.Fatalf("the refusing socket is gone: %v", err)
	}
	for name, sock := range map[string]string{"no socket": missing, "refused": refusing} {
		t.Run(name, func(t *testing.T) {
			sn := remoteAt(t, sock)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			_, err := sn.Stat(ctx, "x")
			took := time.Since(start)
			if status.Code(err) != codes.Unavailable && !errdefs.IsUnavailable(err) {
				t.Errorf("Stat on a snapshotter that refuses connections: %v, want Unavailable", err)
			}
			if took < refusedRetry/2 || took > 3*refusedRetry {
				t.Errorf("Stat failed after %s, want about the retry bound %s", took, refusedRetry)
			}
			start = time.Now()
			err = sn.Walk(ctx, func(context.Context, snapshots.Info) error { return nil })
			if status.Code(err) != codes.Unavailable && !errdefs.IsUnavailable(err) {
				t.Errorf("Walk on a snapshotter that refuses connections: %v, want Unavailable", err)
			}
			if took := time.Since(start); took > 3*refusedRetry {
				t.Errorf("Walk failed after %s, want about %s", took, refusedRetry)
			}
		})
	}
}

// A remote snapshotter that comes back within the retry bound gets the
// call.
func TestRemoteSnapshotterBackWithinTheRetryGetsTheCall(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "late.sock")
	sn := remoteAt(t, sock)
	go func() {
		time.Sleep(refusedRetry / 3)
		l, err := rpc.Listen(sock)
		if err != nil {
			t.Error(err)
			return
		}
		srv := grpc.NewServer()
		snapshotsapi.RegisterSnapshotsServer(srv, &statServer{})
		t.Cleanup(srv.Stop)
		go srv.Serve(l)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := sn.Stat(ctx, "x")
	if err != nil || info.Name != "x" {
		t.Fatalf("Stat of a snapshotter that started within the retry: %+v, %v", info, err)
	}
}

type statServer struct {
	snapshotsapi.UnimplementedSnapshotsServer
}

func (statServer) Stat(_ context.Context, r *snapshotsapi.StatSnapshotRequest) (*snapshotsapi.StatSnapshotResponse, error) {
	return &snapshotsapi.StatSnapshotResponse{Info: &snapshotsapi.Info{Name: r.Key, Kind: snapshotsapi.Kind_COMMITTED}}, nil
}
