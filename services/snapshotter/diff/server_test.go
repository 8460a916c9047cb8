package diff

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	cdiff "github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// remoteDiffer serves svc over a Unix socket and returns containerd's own
// Diff proxy client for it: what ctr and the containerd client use.
func remoteDiffer(t *testing.T, svc *Service) interface {
	cdiff.Applier
	cdiff.Comparer
} {
	sock := filepath.Join(t.TempDir(), "diff.sock")
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	svc.Register(srv.Server)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(interface {
		cdiff.Applier
		cdiff.Comparer
	})
}

func TestGRPCApplyForwardsNamespaceAndLeaseToContentStore(t *testing.T) {
	svc, cs := newTestService(t)
	remote := remoteDiffer(t, svc)
	layer := sampleLayer(t)
	desc := cs.add(ocispec.MediaTypeImageLayerGzip, gzipBytes(t, layer))

	ctx := leases.WithLease(namespaces.WithNamespace(context.Background(), "team-a"), "lease-1")
	root := t.TempDir()
	applied, err := remote.Apply(ctx, desc, bindMount(root))
	if err != nil {
		t.Fatalf("Apply over gRPC: %v", err)
	}
	if applied.MediaType != ocispec.MediaTypeImageLayer || applied.Size != int64(len(layer)) {
		t.Errorf("applied = %+v", applied)
	}
	checkSampleTree(t, root)

	md, _ := metadata.FromOutgoingContext(cs.lastCtx)
	if got := md.Get("containerd-namespace"); len(got) == 0 || got[0] != "team-a" {
		t.Errorf("content store call carried namespace header %v, want team-a", got)
	}
	if got := md.Get("containerd-lease"); len(got) == 0 || got[0] != "lease-1" {
		t.Errorf("content store call carried lease header %v, want lease-1", got)
	}
}

func TestGRPCDiffWritesLayerUnderCallersNamespace(t *testing.T) {
	requireRoot(t)
	svc, cs := newTestService(t)
	remote := remoteDiffer(t, svc)
	lower, upper := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(upper, "new"), []byte("x"), 0o644))
	ctx := namespaces.WithNamespace(context.Background(), "team-b")
	desc, err := remote.Compare(ctx, bindMount(lower), bindMount(upper), cdiff.WithMediaType(ocispec.MediaTypeImageLayerZstd))
	if err != nil {
		t.Fatalf("Diff over gRPC: %v", err)
	}
	if _, ok := cs.blobs[desc.Digest]; !ok || desc.MediaType != ocispec.MediaTypeImageLayerZstd {
		t.Errorf("descriptor %+v: blob stored %v", desc, ok)
	}
	md, _ := metadata.FromOutgoingContext(cs.lastCtx)
	if got := md.Get("containerd-namespace"); len(got) == 0 || got[0] != "team-b" {
		t.Errorf("content store call carried namespace header %v, want team-b", got)
	}
}

func TestGRPCErrorsKeepTheirCodes(t *testing.T) {
	svc, cs := newTestService(t)
	remote := remoteDiffer(t, svc)
	ctx := namespaces.WithNamespace(context.Background(), "default")

	unsupported := cs.add("application/vnd.example.layer+rar", []byte("x"))
	if _, err := remote.Apply(ctx, unsupported, bindMount(t.TempDir())); !errdefs.IsNotImplemented(err) {
		t.Errorf("unsupported media type: %v, want NotImplemented", err)
	}
	escape := cs.add(ocispec.MediaTypeImageLayer, buildTar(t, file("../escape", "x", 0o644)))
	if _, err := remote.Apply(ctx, escape, bindMount(t.TempDir())); !errdefs.IsInvalidArgument(err) {
		t.Errorf("escaping layer: %v, want InvalidArgument", err)
	}
	mismatch := cs.add(ocispec.MediaTypeImageLayer, sampleLayer(t))
	cs.put(mismatch.Digest, buildTar(t, file("other", "y", 0o644)))
	mismatch.Size = 0
	if _, err := remote.Apply(ctx, mismatch, bindMount(t.TempDir())); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("digest mismatch: %v, want FailedPrecondition", err)
	}
	if _, err := remote.Compare(ctx, nil, nil, cdiff.WithMediaType("application/x-rar")); !errdefs.IsNotImplemented(err) {
		t.Errorf("diff media type: %v, want NotImplemented", err)
	}
}
