package content_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/internal/standalone"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// bin is flotilla-content, built once for every test here.
var bin = &standalone.Binary{Name: "content"}

func TestMain(m *testing.M) { os.Exit(bin.Main(m)) }

// start runs flotilla-content on root, as a remote content store would be
// run, and fails the test if it does not come up.
func start(t testing.TB, root string) *standalone.Process {
	t.Helper()
	p, err := bin.Start(t, root)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dial(t testing.TB, socket string) (*grpc.ClientConn, content.Store) {
	t.Helper()
	conn, err := rpc.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	return conn, proxy.NewContentStore(contentapi.NewContentClient(conn))
}

// TestContainerdContentSuite drives the real binary with containerd's own
// content store test suite, through containerd's own gRPC client.
func TestContainerdContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "flotilla", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		p := start(t, filepath.Join(root, "content"))
		conn, err := rpc.Dial(p.Socket)
		if err != nil {
			p.Stop()
			return nil, nil, nil, err
		}
		cs := proxy.NewContentStore(contentapi.NewContentClient(conn))
		return ctx, cs, func() error {
			conn.Close()
			return p.Stop()
		}, nil
	})
}

// TestIngestSurvivesRestart writes half a blob, restarts the service, and
// finishes the same ingest from where it stopped.
func TestIngestSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "content")
	blob := bytes.Repeat([]byte("flotilla"), 64<<10)
	d := digest.FromBytes(blob)
	desc := ocispec.Descriptor{Size: int64(len(blob)), Digest: d}
	half := len(blob) / 2

	p := start(t, root)
	conn, cs := dial(t, p.Socket)
	w, err := content.OpenWriter(ctx, cs, content.WithRef("restart"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob[:half]); err != nil {
		t.Fatal(err)
	}
	before, err := w.Status()
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	conn.Close()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}

	p = start(t, root)
	defer p.Stop()
	conn, cs = dial(t, p.Socket)
	defer conn.Close()
	st, err := cs.Status(ctx, "restart")
	if err != nil {
		t.Fatalf("status of the ingest after restart: %v", err)
	}
	if st.Offset != int64(half) || st.Total != desc.Size || st.Expected != d || !st.StartedAt.Equal(before.StartedAt) {
		t.Fatalf("after restart the ingest is %+v; want offset %d, total %d, expected %s, started %s",
			st, half, desc.Size, d, before.StartedAt)
	}
	w, err = content.OpenWriter(ctx, cs, content.WithRef("restart"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	// containerd's remote writer learns the digest from its first status.
	if _, err := w.Status(); err != nil {
		t.Fatal(err)
	}
	if w.Digest() != digest.FromBytes(blob[:half]) {
		t.Fatalf("resumed writer reports digest %s, want that of the first half", w.Digest())
	}
	if _, err := w.Write(blob[half:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, desc.Size, d); err != nil {
		t.Fatal(err)
	}
	got, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, blob) {
		t.Fatal("blob read back differs from the one written across the restart")
	}
}

// TestSecondProcessOnSameRootFails keeps two services from sharing one root.
func TestSecondProcessOnSameRootFails(t *testing.T) {
	root := filepath.Join(t.TempDir(), "content")
	p := start(t, root)
	defer p.Stop()

	sockDir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin.Path, "--socket", filepath.Join(sockDir, "c.sock"), "--root", root).CombinedOutput()
	if err == nil {
		t.Fatalf("a second flotilla-content on the same root started; output:\n%s", out)
	}
	if !bytes.Contains(out, []byte("another process is using this content root")) {
		t.Fatalf("second process failed without saying why; output:\n%s", out)
	}
}
