package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

// TestContentReadRidesOutAKillMidBlob reads a blob far larger than the
// flow-control windows between the processes, and kill -9s the process
// serving it after the first chunk: the gateway (metadata killed) or the
// metadata service (content killed) opens the read again where the client's
// bytes ended, so the client gets every byte once, in order, and no error.
func TestContentReadRidesOutAKillMidBlob(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	blob := make([]byte, 96<<20)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := content.WriteBlob(ctx, c.ContentStore(), "big", bytes.NewReader(blob), desc,
		content.WithLabels(map[string]string{"containerd.io/gc.root": "test"})); err != nil {
		t.Fatal(err)
	}

	for _, victim := range []string{"content", "metadata"} {
		t.Run("kill "+victim, func(t *testing.T) {
			pid := d.servicePid(victim)
			rc, err := contentapi.NewContentClient(c.Conn().(grpc.ClientConnInterface)).Read(ctx, &contentapi.ReadContentRequest{Digest: desc.Digest.String()})
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			for {
				resp, err := rc.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("read failed after %d of %d bytes: %v", len(got), len(blob), err)
				}
				if resp.Offset != int64(len(got)) {
					t.Fatalf("chunk at offset %d after %d bytes", resp.Offset, len(got))
				}
				if len(got) == 0 {
					if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
				}
				got = append(got, resp.Data...)
			}
			if digest.FromBytes(got) != desc.Digest {
				t.Fatalf("read %d bytes of digest %s, want %d of %s", len(got), digest.FromBytes(got), len(blob), desc.Digest)
			}
			waitFor(t, 10*time.Second, victim+" restarted", func() bool {
				p := d.servicePidOrZero(victim)
				return p != 0 && p != pid
			})
		})
	}
}
