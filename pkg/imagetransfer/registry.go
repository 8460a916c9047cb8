package imagetransfer

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Registry is an image reference in a registry, reached through a
// resolver: the source of a pull and the destination of a push. What the
// resolver is given (hosts.toml, credentials, plain HTTP) is the caller's:
// the Transfer API's request says it, cri's configuration and the CRI
// request say it for a CRI pull.
type Registry struct {
	Ref      string
	Resolver remotes.Resolver
}

var (
	_ transfer.ImageFetcher = (*Registry)(nil)
	_ transfer.ImagePusher  = (*Registry)(nil)
)

func (r *Registry) String() string { return fmt.Sprintf("OCI Registry (%s)", r.Ref) }

// Image is the reference the transfer names.
func (r *Registry) Image() string { return r.Ref }

func (r *Registry) Resolve(ctx context.Context) (string, ocispec.Descriptor, error) {
	return r.Resolver.Resolve(ctx, r.Ref)
}

func (r *Registry) SetResolverOptions(opts ...transfer.ImageResolverOption) {
	if s, ok := r.Resolver.(remotes.ResolverWithOptions); ok {
		s.SetOptions(opts...)
	}
}

func (r *Registry) Fetcher(ctx context.Context, ref string) (transfer.Fetcher, error) {
	return r.Resolver.Fetcher(ctx, ref)
}

func (r *Registry) Pusher(ctx context.Context, desc ocispec.Descriptor) (transfer.Pusher, error) {
	ref := r.Ref
	// A tag is pushed for the one manifest it is given.
	if !strings.Contains(ref, "@") {
		ref += "@" + desc.Digest.String()
	}
	return r.Resolver.Pusher(ctx, ref)
}
