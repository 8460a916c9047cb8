package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/core/streaming"
	tstreaming "github.com/containerd/containerd/v2/core/transfer/streaming"
	"github.com/containerd/containerd/v2/pkg/httpdbg"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/flotilla-project/flotilla/pkg/imagetransfer"
)

// newRegistry is the registry a request names: containerd's OCIRegistry
// transfer type, resolved with containerd's docker resolver and the
// hosts.toml of the request's host directory (the service's when the
// request names none), asking the client for credentials over the stream
// the request names when the registry wants some.
func newRegistry(ctx context.Context, a typeurl.Any, streams streaming.StreamGetter, hostDir string) (*imagetransfer.Registry, error) {
	var s transfertypes.OCIRegistry
	if err := typeurl.UnmarshalTo(a, &s); err != nil {
		return nil, fmt.Errorf("registry: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if s.Reference == "" {
		return nil, fmt.Errorf("registry without an image reference: %w", errdefs.ErrInvalidArgument)
	}
	opts := config.HostOptions{}
	headers := http.Header{}
	res := s.GetResolver()
	if d := res.GetHostDir(); d != "" {
		hostDir = d
	}
	if hostDir != "" {
		opts.HostDir = config.HostDirFromRoot(hostDir)
	}
	if res.GetDefaultScheme() != "" {
		opts.DefaultScheme = res.GetDefaultScheme()
	}
	for k, v := range res.GetHeaders() {
		headers.Add(k, v)
	}
	if id := res.GetAuthStream(); id != "" {
		stream, err := streams.Get(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("credentials stream: %w", err)
		}
		creds := &credentials{stream: stream, ref: s.Reference}
		opts.Credentials = creds.get
	}
	if dbg := res.GetHttpDebug(); dbg != transfertypes.HTTPDebug_DISABLED {
		// The client asked for the HTTP exchanges (ctr --http-dump,
		// --http-trace): to its stream, or to this service's log.
		var w io.WriteCloser = nopCloser{io.Discard}
		if id := res.GetLogsStream(); id != "" {
			stream, err := streams.Get(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("HTTP debug stream: %w", err)
			}
			w = tstreaming.WriteByteStream(ctx, stream)
			go func() {
				<-ctx.Done()
				_ = w.Close()
			}()
		}
		opts.UpdateClient = func(c *http.Client) error {
			if dbg == transfertypes.HTTPDebug_DEBUG || dbg == transfertypes.HTTPDebug_BOTH {
				httpdbg.DumpRequests(ctx, c, w)
			}
			if dbg == transfertypes.HTTPDebug_TRACE || dbg == transfertypes.HTTPDebug_BOTH {
				httpdbg.DumpTraces(ctx, c)
			}
			return nil
		}
	}
	return &imagetransfer.Registry{
		Ref: s.Reference,
		Resolver: docker.NewResolver(docker.ResolverOptions{
			Hosts:   config.ConfigureHosts(ctx, opts),
			Headers: headers,
		}),
	}, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// credentials asks the client for a registry's credentials, one question
// at a time, over the stream it opened for them.
type credentials struct {
	mu     sync.Mutex
	stream streaming.Stream
	ref    string
}

func (c *credentials) get(host string) (string, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q, err := typeurl.MarshalAny(&transfertypes.AuthRequest{Host: host, Reference: c.ref})
	if err != nil {
		return "", "", err
	}
	if err := c.stream.Send(q); err != nil {
		return "", "", fmt.Errorf("ask the client for credentials of %s: %w", host, err)
	}
	a, err := c.stream.Recv()
	if err != nil {
		return "", "", fmt.Errorf("credentials of %s from the client: %w", host, err)
	}
	var resp transfertypes.AuthResponse
	if err := typeurl.UnmarshalTo(a, &resp); err != nil {
		return "", "", fmt.Errorf("credentials of %s from the client: %v: %w", host, err, errdefs.ErrInvalidArgument)
	}
	switch resp.AuthType {
	case transfertypes.AuthType_CREDENTIALS:
		return resp.Username, resp.Secret, nil
	case transfertypes.AuthType_REFRESH:
		// A refresh token goes as the secret with no user name, as
		// containerd's resolver takes one.
		return "", resp.Secret, nil
	}
	return "", "", nil
}
