package snapshotter

import (
	"context"
	"errors"
	"io"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla-project/flotilla/pkg/blobfd"
)

// namespacedContent is the namespaced content store, reached over the
// graph (records are metadata's, bytes the content process's), able to hand
// over a whole blob: its file, which the content process gives once metadata
// has said the caller's namespace holds it (pkg/blobfd), so a layer's bytes
// are read from the disk here, not relayed.
type namespacedContent struct {
	content.Store
	client contentapi.ContentClient
	fd     string // the content process's blob file socket; "" streams
}

func newNamespacedContent(graph grpc.ClientConnInterface, fd string) *namespacedContent {
	client := contentapi.NewContentClient(graph)
	return &namespacedContent{Store: proxy.NewContentStore(client), client: client, fd: fd}
}

func (c *namespacedContent) Stream(ctx context.Context, d digest.Digest) (io.ReadCloser, error) {
	if c.fd != "" {
		f, _, err := blobfd.Open(ctx, c.fd, d.String())
		if err == nil {
			return f, nil
		}
		if status.Code(err) != codes.Unavailable {
			return nil, errgrpc.ToNative(err)
		}
		// The content process is restarting: its Read stream waits
		// for it.
	}
	ctx, cancel := context.WithCancel(ctx)
	rs, err := c.client.Read(ctx, &contentapi.ReadContentRequest{Digest: d.String()})
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
