package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestDiffApplyIgnoresPayloadsOfALayerThatNeedsNoProcessor drives the Diff
// API with containerd's Go client as nerdctl's unpack does: it passes
// imgcrypt's decryption payloads with every layer. As in containerd, a plain
// gzip layer is applied and its payloads ignored; an encrypted one, with no
// stream processor to decrypt it, is refused NotImplemented naming its media
// type, and the snapshotter process that refused it says so in its log.
func TestDiffApplyIgnoresPayloadsOfALayerThatNeedsNoProcessor(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	t.Cleanup(func() { unmountUnder(d.root) })
	img, archive := imageArchive(t)
	d.mustCtr("images", "import", "--no-unpack", archive)
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), time.Minute)
	defer cancel()
	ctx, done, err := c.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer done(ctx)

	payloads := map[string]typeurl.Any{
		// What imgcrypt's unpack options carry: an opaque payload under
		// its stream processor's id.
		"io.containerd.ocicrypt.decoder.v1.tar.gzip": &anypb.Any{TypeUrl: "github.com/containerd/imgcrypt/ocicrypt.DecryptConfig", Value: []byte("{}")},
	}
	layer := img.Layers[0]
	sn := c.SnapshotService("overlayfs")
	mounts, err := sn.Prepare(ctx, "payloads-plain", "")
	if err != nil {
		t.Fatal(err)
	}
	applied, err := c.DiffService().Apply(ctx, layer, mounts, diff.WithPayloads(payloads))
	if err != nil {
		t.Fatalf("Apply of a gzip layer with imgcrypt's payloads: %v", err)
	}
	if applied.Digest != img.DiffIDs[0] {
		t.Errorf("applied layer has diff ID %s, want %s", applied.Digest, img.DiffIDs[0])
	}

	encrypted := layer
	encrypted.MediaType = ocispec.MediaTypeImageLayerGzip + "+encrypted"
	mounts, err = sn.Prepare(ctx, "payloads-encrypted", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.DiffService().Apply(ctx, encrypted, mounts, diff.WithPayloads(payloads))
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), encrypted.MediaType) {
		t.Fatalf("Apply of an encrypted layer without a processor: %v, want NotImplemented naming %s", err, encrypted.MediaType)
	}
	waitFor(t, 5*time.Second, "the snapshotter's log line for the refused Apply", func() bool {
		for _, line := range strings.Split(d.out.String(), "\n") {
			if strings.Contains(line, "call refused") && strings.Contains(line, "service=snapshotter-overlayfs") && strings.Contains(line, "+encrypted") {
				return true
			}
		}
		return false
	})
}
