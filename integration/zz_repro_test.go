package integration

import (
	"bytes"
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestZZRepro(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	data := []byte("hello index")
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	for _, ns := range []string{"y", "x"} {
		ctx := namespaces.WithNamespace(context.Background(), ns)
		l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
		if err != nil {
			t.Fatal(err)
		}
		ctx = leases.WithLease(ctx, l.ID)
		err = content.WriteBlob(ctx, c.ContentStore(), "manifest-"+desc.Digest.String(), bytes.NewReader(data), desc)
		t.Logf("%s write: %v", ns, err)
		_, err = c.ContentStore().Info(ctx, desc.Digest)
		t.Logf("%s info: %v", ns, err)
	}
}
