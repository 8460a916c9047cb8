// Package image is the CRI's image side: resolving the references the
// kubelet uses to CRI images (every image record of one config), pulling
// them through the transfer engine, and the ImageService calls (list,
// status, remove, filesystem usage). The image records, content and
// snapshots live in the other services; what is kept here (the image
// index and what each manifest says) is a cache of them.
package image

import (
	"context"
	"fmt"
	"sync"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/services/cri/store"
)

// Config is the image side of the cri service's configuration.
type Config struct {
	// Snapshotter unpacks pulled images.
	Snapshotter string
	// InsecureRegistries are registry hosts ("host" or "host:port") pulled
	// from over plain HTTP, or HTTPS without certificate verification.
	InsecureRegistries []string
	// ConfigPath is a directory of containerd-format registry host
	// configurations (<ConfigPath>/<host>/hosts.toml); empty means none.
	ConfigPath string
	// ImageFSPath is reported as the mount point of the image filesystem.
	ImageFSPath string
	// DiscardUnpackedLayers lets the collector take a pulled layer's blob
	// once it is unpacked (its snapshot holds the image's files).
	DiscardUnpackedLayers bool
}

// Transferrer runs image transfers: the transfer engine
// (pkg/imagetransfer) over the graph's stores.
type Transferrer interface {
	Transfer(ctx context.Context, src, dst any, progress transfer.ProgressFunc) error
}

// Service finds, pulls and removes CRI images.
type Service struct {
	client *containerd.Client
	// daemon reaches the gateway's events, which keep the image index.
	daemon   grpc.ClientConnInterface
	cfg      Config
	platform platforms.MatchComparer

	// transfers runs pulls (pkg/imagetransfer); pulls joins concurrent
	// PullImage calls of one image with the same credentials into one.
	transfers Transferrer
	pulls     flightGroup[string]
	// imageIdx saves resolving an image reference a listing of all
	// images; see imageindex.go.
	imageIdx imageIndex

	// infos caches what an image's manifest says (config digest, size,
	// config), keyed by the manifest or index digest: content-addressed,
	// so it never goes stale; entries of deleted images are dropped on
	// the next full listing.
	mu    sync.Mutex
	infos map[digest.Digest]*Info
}

// New is the image service over a containerd client of the other
// services, the gateway's connection (daemon, for image events) and the
// transfer engine.
func New(client *containerd.Client, daemon grpc.ClientConnInterface, transfers Transferrer, cfg Config) *Service {
	return &Service{
		client:    client,
		daemon:    daemon,
		transfers: transfers,
		cfg:       cfg,
		platform:  platforms.Default(),
		infos:     map[digest.Digest]*Info{},
	}
}

// withNamespace puts every call in the CRI namespace, whatever namespace
// header the caller sent.
func withNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, store.Namespace)
}

// Ensure finds an image by reference, pulling it when missing (the
// sandbox image is not the kubelet's to pull).
func (s *Service) Ensure(ctx context.Context, ref string) (*Image, error) {
	img, err := s.Resolve(ctx, ref)
	if errdefs.IsNotFound(err) {
		named, perr := reference.ParseDockerRef(ref)
		if perr != nil {
			return nil, fmt.Errorf("image reference %q: %v: %w", ref, perr, errdefs.ErrInvalidArgument)
		}
		if _, _, err = s.pulls.Do(ctx, pullKey(named.String(), nil), func(ctx context.Context) (string, error) {
			return s.pull(ctx, named, nil)
		}); err != nil {
			return nil, err
		}
		img, err = s.Resolve(ctx, ref)
	}
	return img, err
}

// Name is the image record a CRI image is known by: its ID record when
// it has one (every image the CRI pulled does).
func (img *Image) Name() string {
	name := img.Refs[0]
	for _, r := range img.Refs {
		if r == img.Info.ID {
			name = r
		}
	}
	return name
}

// Ref is the reference ContainerStatus reports: the repo digest the
// image was pulled by, else its ID.
func (img *Image) Ref() string {
	_, digests := img.repoTagsAndDigests()
	if len(digests) > 0 {
		return digests[0]
	}
	return img.Info.ID
}
