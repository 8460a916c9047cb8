package streams

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/containerd/v2/core/streaming"
	streamproxy "github.com/containerd/containerd/v2/core/streaming/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

func serve(t *testing.T) (*Manager, streaming.StreamCreator) {
	t.Helper()
	m := NewManager()
	sock := filepath.Join(t.TempDir(), "streams.sock")
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer(slog.New(slog.DiscardHandler))
	m.Register(srv.Server)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return m, streamproxy.NewStreamCreator(conn)
}

func TestStreamsAreFoundByNamespaceAndIDAndCarryBothWays(t *testing.T) {
	m, c := serve(t)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "ns1"), 10*time.Second)
	defer cancel()
	cs, err := c.Create(ctx, "progress-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, "progress-1"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("a second stream under the same id: %v; want AlreadyExists", err)
	}
	if _, err := m.Get(namespaces.WithNamespace(ctx, "ns2"), "progress-1"); !errdefs.IsNotFound(err) {
		t.Errorf("the stream of another namespace: %v; want NotFound", err)
	}
	ss, err := m.Get(ctx, "progress-1")
	if err != nil {
		t.Fatalf("the namespace's own stream: %v", err)
	}
	a, _ := typeurl.MarshalAny(&transfertypes.Progress{Event: "waiting", Name: "layer"})
	if err := ss.Send(a); err != nil {
		t.Fatal(err)
	}
	got, err := cs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var p transfertypes.Progress
	if err := typeurl.UnmarshalTo(got, &p); err != nil || p.Event != "waiting" {
		t.Fatalf("client got %v, %v; want the progress event", got, err)
	}
	q, _ := typeurl.MarshalAny(&transfertypes.AuthResponse{Username: "u"})
	if err := cs.Send(q); err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Recv(); err != nil {
		t.Fatalf("server side receive: %v", err)
	}
	// Closed by the transfer: the client reads the end, the stream is
	// forgotten.
	ss.Close()
	if _, err := cs.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("client read after the server closed: %v; want EOF", err)
	}
	if n := m.Len(); n != 0 {
		t.Errorf("%d streams held after the only one closed", n)
	}
}

func TestAStreamEndsWhenItsClientGoesAway(t *testing.T) {
	m, c := serve(t)
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), "ns1"))
	if _, err := c.Create(ctx, "creds"); err != nil {
		t.Fatal(err)
	}
	if m.Len() != 1 {
		t.Fatalf("%d streams held; want the one opened", m.Len())
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for m.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stream of a client that went away is still held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
