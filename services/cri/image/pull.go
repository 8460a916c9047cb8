package image

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/imagetransfer"
	"github.com/flotilla-project/flotilla/pkg/logging"
)

// PullImage fetches an image from its registry, unpacks it into the
// configured snapshotter and records it under its reference, its digest
// reference and its ID, as containerd's CRI does. Concurrent pulls of one
// reference with the same credentials share one download.
func (s *Service) PullImage(ctx context.Context, req *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	raw := req.GetImage().GetImage()
	named, err := reference.ParseDockerRef(raw)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", raw, err, errdefs.ErrInvalidArgument)
	}
	auth := req.GetAuth()
	id, shared, err := s.pulls.Do(withNamespace(ctx), pullKey(named.String(), auth), func(ctx context.Context) (string, error) {
		return s.pull(ctx, named, auth)
	})
	if err != nil {
		return nil, err
	}
	logging.G(ctx).Debug("pulled image", "image", named.String(), "id", id, "shared", shared)
	return &runtime.PullImageResponse{ImageRef: id}, nil
}

// pullKey identifies a pull: callers with different credentials never
// share one, so nobody gets an image their own credentials would not.
func pullKey(ref string, auth *runtime.AuthConfig) string {
	h := sha256.New()
	for _, f := range []string{ref, auth.GetUsername(), auth.GetPassword(), auth.GetAuth(),
		auth.GetServerAddress(), auth.GetIdentityToken(), auth.GetRegistryToken()} {
		fmt.Fprintf(h, "%d:%s", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (s *Service) pull(ctx context.Context, named reference.Named, auth *runtime.AuthConfig) (string, error) {
	// The records change: the next resolve must see them.
	defer s.imageIdx.invalidate()
	ref := named.String()
	src := &imagetransfer.Registry{
		Ref:      ref,
		Resolver: docker.NewResolver(docker.ResolverOptions{Hosts: s.registryHosts(ctx, auth)}),
	}
	dst := &pulledImage{s: s, named: named}
	// The transfer engine fetches the layers in parallel, unpacks each
	// as it downloads (in parallel on overlayfs) and shares downloads
	// and unpacks with the pulls running beside it.
	if err := s.transfers.Transfer(ctx, src, dst, nil); err != nil {
		return "", fmt.Errorf("pull image %s: %w", ref, err)
	}
	return dst.id, nil
}

// pulledImage is where a CRI pull puts its image: unpacked into cri's
// snapshotter for the host's platform, and recorded, labelled as the CRI's
// own, under its reference, its digest reference and its ID.
type pulledImage struct {
	s     *Service
	named reference.Named
	// id is the image's config digest, once stored.
	id string
}

var (
	_ transfer.ImageStorer            = (*pulledImage)(nil)
	_ transfer.ImageFilterer          = (*pulledImage)(nil)
	_ transfer.ImageUnpacker          = (*pulledImage)(nil)
	_ imagetransfer.SnapshotAnnotator = (*pulledImage)(nil)
)

func (c *pulledImage) String() string { return fmt.Sprintf("CRI image store (%s)", c.named) }

// ImageFilter walks the host's platform only. The manifests keep their
// layers' blobs unless discard_unpacked_layers says otherwise, as
// containerd's CRI pulls: kept, the image can still be exported or pushed.
func (c *pulledImage) ImageFilter(h images.HandlerFunc, cs content.Store) images.HandlerFunc {
	children := images.ChildGCLabels
	if c.s.cfg.DiscardUnpackedLayers {
		children = images.ChildGCLabelsFilterLayers
	}
	h = images.SetChildrenMappedLabels(cs, h, children)
	h = images.FilterPlatforms(h, c.s.platform)
	return images.LimitManifests(h, c.s.platform, 1)
}

func (c *pulledImage) UnpackPlatforms() []transfer.UnpackConfiguration {
	return []transfer.UnpackConfiguration{{Platform: platforms.DefaultSpec(), Snapshotter: c.s.cfg.Snapshotter}}
}

// AnnotateSnapshots: each layer's snapshot is labelled with the image
// reference, its digest and the image's layers (containerd's CRI snapshot
// annotations), which a lazy snapshotter (stargz) reads from its Prepare to
// mount the layer from the registry instead.
func (c *pulledImage) AnnotateSnapshots() bool { return true }

func (c *pulledImage) Store(ctx context.Context, target ocispec.Descriptor, is images.Store) ([]images.Image, error) {
	cfg, err := images.Config(ctx, c.s.client.ContentStore(), target, c.s.platform)
	if err != nil {
		return nil, fmt.Errorf("config of image %s: %w", c.named, err)
	}
	c.id = cfg.Digest.String()
	labels := map[string]string{imageLabelKey: imageLabelValue}
	repoDigest, repoTag := repoDigestAndTag(c.named, target)
	var stored []images.Image
	for _, name := range []string{c.named.String(), c.id, repoTag, repoDigest} {
		if name == "" || slices.ContainsFunc(stored, func(i images.Image) bool { return i.Name == name }) {
			continue
		}
		if err := c.s.createImageRecord(ctx, name, target, labels); err != nil {
			return nil, err
		}
		stored = append(stored, images.Image{Name: name, Target: target, Labels: labels})
	}
	return stored, nil
}

// repoDigestAndTag are the digest reference and (for a tagged reference)
// the tag an image pulled by named is known by.
func repoDigestAndTag(named reference.Named, target ocispec.Descriptor) (repoDigest, repoTag string) {
	if _, ok := named.(reference.NamedTagged); ok {
		repoTag = named.String()
	}
	if _, ok := named.(reference.Canonical); ok {
		repoDigest = named.String()
	} else {
		repoDigest = named.Name() + "@" + target.Digest.String()
	}
	return repoDigest, repoTag
}

// createImageRecord points name at target, moving an existing name (a tag
// pulled again after it changed upstream).
func (s *Service) createImageRecord(ctx context.Context, name string, target ocispec.Descriptor, labels map[string]string) error {
	is := s.client.ImageService()
	img := images.Image{Name: name, Target: target, Labels: labels}
	old, err := is.Create(ctx, img)
	if err == nil {
		return nil
	}
	if !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("create image record %s: %w", name, err)
	}
	if old.Name == "" {
		if old, err = is.Get(ctx, name); err != nil {
			return fmt.Errorf("image record %s: %w", name, err)
		}
	}
	if old.Target.Digest == target.Digest && old.Labels[imageLabelKey] == imageLabelValue {
		return nil
	}
	if _, err := is.Update(ctx, img, "target", "labels."+imageLabelKey); err != nil {
		return fmt.Errorf("update image record %s: %w", name, err)
	}
	return nil
}

// registryHosts configures the registry endpoints of a host: hosts.toml
// under ConfigPath when there is one (mirrors, certificates, headers),
// plain HTTP (after a TLS attempt without verification) for an insecure
// registry, and the request's credentials.
func (s *Service) registryHosts(ctx context.Context, auth *runtime.AuthConfig) docker.RegistryHosts {
	creds := func(host string) (string, string, error) { return parseAuth(auth, host) }
	return func(host string) ([]docker.RegistryHost, error) {
		opts := config.HostOptions{Credentials: creds}
		if s.cfg.ConfigPath != "" {
			opts.HostDir = config.HostDirFromRoot(s.cfg.ConfigPath)
		}
		if s.insecure(host) {
			// With a TLS configuration given, containerd's host
			// configuration tries HTTPS first and falls back to HTTP.
			opts.DefaultScheme = "http"
			opts.DefaultTLS = &tls.Config{InsecureSkipVerify: true}
		}
		return config.ConfigureHosts(ctx, opts)(host)
	}
}

func (s *Service) insecure(host string) bool {
	if slices.Contains(s.cfg.InsecureRegistries, host) {
		return true
	}
	// A registry listed without a port is insecure on every port.
	if h, _, err := net.SplitHostPort(host); err == nil {
		return slices.Contains(s.cfg.InsecureRegistries, h)
	}
	return false
}

// dockerHubHosts are the names Docker Hub's credentials are given under.
var dockerHubHosts = []string{"docker.io", "index.docker.io", "registry-1.docker.io"}

// parseAuth gives the credentials of auth for host, none when auth names
// another server, as containerd's CRI. RegistryToken is not supported
// (containerd does not support it either).
func parseAuth(auth *runtime.AuthConfig, host string) (string, string, error) {
	if auth == nil {
		return "", "", nil
	}
	if addr := auth.GetServerAddress(); addr != "" {
		if !strings.Contains(addr, "://") {
			addr = "//" + addr
		}
		u, err := url.Parse(addr)
		if err != nil {
			return "", "", fmt.Errorf("auth server address %q: %v: %w", auth.GetServerAddress(), err, errdefs.ErrInvalidArgument)
		}
		same := u.Host == host ||
			slices.Contains(dockerHubHosts, u.Host) && slices.Contains(dockerHubHosts, host)
		if !same {
			return "", "", nil
		}
	}
	switch {
	case auth.GetUsername() != "":
		return auth.GetUsername(), auth.GetPassword(), nil
	case auth.GetIdentityToken() != "":
		return "", auth.GetIdentityToken(), nil
	case auth.GetAuth() != "":
		b, err := base64.StdEncoding.DecodeString(auth.GetAuth())
		if err != nil {
			return "", "", fmt.Errorf("decode auth: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		user, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return "", "", fmt.Errorf("decoded auth is not user:password: %w", errdefs.ErrInvalidArgument)
		}
		return user, strings.Trim(pass, "\x00"), nil
	}
	return "", "", nil
}
