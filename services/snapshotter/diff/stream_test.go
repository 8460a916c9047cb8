package diff

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	layerspb "github.com/flotilla-project/flotilla/proto/layers/v1"
)

// layersClient serves the Layers API over a Unix socket and returns a
// client of it.
func layersClient(t *testing.T) layerspb.LayersClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "layers.sock")
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	NewStreamServer().Register(srv.Server)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return layerspb.NewLayersClient(conn)
}

// streamApply sends blob in chunks of n bytes after the header.
func streamApply(t *testing.T, c layerspb.LayersClient, desc ocispec.Descriptor, mounts []mount.Mount, blob []byte, n int) (ocispec.Descriptor, error) {
	t.Helper()
	s, err := c.Apply(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&layerspb.ApplyRequest{Layer: oci.DescriptorToProto(desc), Mounts: mount.ToProto(mounts)}); err != nil {
		t.Fatal(err)
	}
	for len(blob) > 0 {
		m := min(n, len(blob))
		if err := s.Send(&layerspb.ApplyRequest{Data: blob[:m]}); err != nil {
			break // the server ended the call; its status comes with CloseAndRecv
		}
		blob = blob[m:]
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return ocispec.Descriptor{}, errgrpc.ToNative(err)
	}
	return oci.DescriptorFromProto(resp.GetApplied()), nil
}

func TestStreamApplyUnpacksTheLayerAsItsBytesArrive(t *testing.T) {
	requireRoot(t)
	c := layersClient(t)
	layer := sampleLayer(t)
	blob := gzipBytes(t, layer)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	root := t.TempDir()
	applied, err := streamApply(t, c, desc, bindMount(root), blob, 7)
	if err != nil {
		t.Fatalf("Apply over the stream: %v", err)
	}
	if applied.Digest != digest.FromBytes(layer) || applied.Size != int64(len(layer)) || applied.MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("applied = %+v; want the uncompressed tar's digest %s and size %d", applied, digest.FromBytes(layer), len(layer))
	}
	checkSampleTree(t, root)
}

func TestStreamApplyRefusesABlobThatIsNotItsDigest(t *testing.T) {
	requireRoot(t)
	c := layersClient(t)
	blob := gzipBytes(t, sampleLayer(t))
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("something else"), Size: int64(len(blob))}
	if _, err := streamApply(t, c, desc, bindMount(t.TempDir()), blob, 4096); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("apply of a blob that is not its digest: %v; want FailedPrecondition", err)
	}
	desc.Digest, desc.Size = digest.FromBytes(blob), int64(len(blob))+1
	if _, err := streamApply(t, c, desc, bindMount(t.TempDir()), blob, 4096); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("apply of a blob shorter than its descriptor: %v; want FailedPrecondition", err)
	}
}

func TestStreamApplyRefusesACallWithoutLayerOrMounts(t *testing.T) {
	c := layersClient(t)
	blob := gzipBytes(t, sampleLayer(t))
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if _, err := streamApply(t, c, desc, nil, blob, 4096); !errdefs.IsInvalidArgument(err) {
		t.Errorf("apply without mounts: %v; want InvalidArgument", err)
	}
	desc.MediaType = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
	if _, err := streamApply(t, c, desc, bindMount(t.TempDir()), blob, 4096); !errdefs.IsNotImplemented(err) {
		t.Errorf("apply of an encrypted layer: %v; want NotImplemented", err)
	}
	s, err := c.Apply(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&layerspb.ApplyRequest{Data: blob}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CloseAndRecv(); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("apply whose first message names no layer: %v; want InvalidArgument", err)
	}
}
