package snapshotter

import (
	"context"
	"errors"
	"io"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
)

// namespacedContent is the namespaced content store (metadata's), able to
// stream a whole blob in one Read call — from the content process itself
// when it is given its socket, once the namespaced store has said the
// caller may see the blob.
type namespacedContent struct {
	content.Store
	client contentapi.ContentClient
	raw    contentapi.ContentClient // nil: stream from the namespaced store
}

func newNamespacedContent(namespaced, raw grpc.ClientConnInterface) *namespacedContent {
	client := contentapi.NewContentClient(namespaced)
	c := &namespacedContent{Store: proxy.NewContentStore(client), client: client}
	if raw != nil {
		c.raw = contentapi.NewContentClient(raw)
	}
	return c
}

func (c *namespacedContent) Stream(ctx context.Context, d digest.Digest) (io.ReadCloser, error) {
	client := c.client
	if c.raw != nil {
		if _, err := c.Store.Info(ctx, d); err != nil {
			return nil, err
		}
		client = c.raw
	}
	ctx, cancel := context.WithCancel(ctx)
	rs, err := client.Read(ctx, &contentapi.ReadContentRequest{Digest: d.String()})
	if err != nil {
		cancel()
		return nil, err
	}
	return &streamReader{rs: rs, cancel: cancel}, nil
}

type streamReader struct {
	rs     contentapi.Content_ReadClient
	cancel context.CancelFunc
	buf    []byte
	err    error
}

func (r *streamReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		resp, err := r.rs.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				r.err = io.EOF
			} else {
				r.err = err
			}
			continue
		}
		r.buf = resp.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *streamReader) Close() error {
	r.cancel()
	return nil
}
