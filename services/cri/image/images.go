package image

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Labels containerd's CRI puts on the image records it creates; Flotilla
// sets the same, so either runtime recognises the other's images.
const (
	// imageLabelKey marks an image record as the CRI's own.
	imageLabelKey   = "io.cri-containerd.image"
	imageLabelValue = "managed"
	// pinnedLabelKey marks an image the kubelet must not garbage-collect.
	pinnedLabelKey   = "io.cri-containerd.pinned"
	pinnedLabelValue = "pinned"
)

// Info is what an image's manifest and config say, for this platform.
type Info struct {
	// ID is the CRI image ID: the config's digest, as containerd's CRI.
	ID      string
	Size    int64
	ChainID string
	Spec    ocispec.Image
	// Config and ConfigBlob are the config's descriptor and bytes, for
	// building specs without reading them again.
	Config     ocispec.Descriptor
	ConfigBlob []byte
}

// Image is one CRI image: every image record whose target resolves to
// the same config.
type Image struct {
	Info *Info
	// Refs are the names of its image records: tags, digest references
	// and the ID itself.
	Refs   []string
	Pinned bool
}

func (img *Image) repoTagsAndDigests() (tags, digests []string) {
	for _, r := range img.Refs {
		if r == img.Info.ID {
			continue
		}
		named, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			continue
		}
		if _, ok := named.(reference.Digested); ok {
			digests = append(digests, r)
		} else if _, ok := named.(reference.Tagged); ok {
			tags = append(tags, r)
		}
	}
	return tags, digests
}

func (img *Image) toCRI() *runtime.Image {
	tags, digests := img.repoTagsAndDigests()
	out := &runtime.Image{
		Id:          img.Info.ID,
		RepoTags:    tags,
		RepoDigests: digests,
		Size:        uint64(img.Info.Size),
		Pinned:      img.Pinned,
	}
	out.Uid, out.Username = imageUser(img.Info.Spec.Config.User)
	return out
}

// imageUser splits an image's "user[:group]" into a numeric uid or a user
// name, as the kubelet wants it (it refuses to run a non-numeric user as
// non-root, for instance).
func imageUser(user string) (*runtime.Int64Value, string) {
	if user == "" {
		return nil, ""
	}
	u, _, _ := strings.Cut(user, ":")
	if uid, err := strconv.ParseInt(u, 10, 64); err == nil {
		return &runtime.Int64Value{Value: uid}, ""
	}
	return nil, u
}

// info returns what img's target says, reading the manifest and config
// once per target digest.
func (s *Service) info(ctx context.Context, img images.Image) (*Info, error) {
	s.mu.Lock()
	info, ok := s.infos[img.Target.Digest]
	s.mu.Unlock()
	if ok {
		return info, nil
	}
	ci := containerd.NewImageWithPlatform(s.client, img, s.platform)
	cfgDesc, err := ci.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("config of image %s: %w", img.Name, err)
	}
	b, err := content.ReadBlob(ctx, s.client.ContentStore(), cfgDesc)
	if err != nil {
		return nil, fmt.Errorf("read config of image %s: %w", img.Name, err)
	}
	info = &Info{ID: cfgDesc.Digest.String(), Config: cfgDesc, ConfigBlob: b}
	if err := json.Unmarshal(b, &info.Spec); err != nil {
		return nil, fmt.Errorf("config of image %s: %v: %w", img.Name, err, errdefs.ErrInvalidArgument)
	}
	info.ChainID = identity.ChainID(info.Spec.RootFS.DiffIDs).String()
	if info.Size, err = ci.Size(ctx); err != nil {
		return nil, fmt.Errorf("size of image %s: %w", img.Name, err)
	}
	s.mu.Lock()
	s.infos[img.Target.Digest] = info
	s.mu.Unlock()
	return info, nil
}

// images groups the namespace's image records into CRI images, by ID.
// Unless fresh is asked, the records may come from the image index
// (reused says so).
func (s *Service) images(ctx context.Context, fresh bool) (_ map[string]*Image, reused bool, _ error) {
	records, reused := s.imageIdx.cached()
	if fresh || !reused {
		var err error
		reused = false
		if records, err = s.imageIdx.list(ctx, s.client.ImageService()); err != nil {
			return nil, false, fmt.Errorf("list images: %w", err)
		}
	}
	out := map[string]*Image{}
	seen := map[digest.Digest]bool{}
	for _, r := range records {
		info, err := s.info(ctx, r)
		if err != nil {
			// Another client's image without content for this
			// platform is not a CRI image; it is no error either.
			logging.G(ctx).Debug("image is not usable by the CRI", "image", r.Name, "error", err)
			continue
		}
		seen[r.Target.Digest] = true
		img, ok := out[info.ID]
		if !ok {
			img = &Image{Info: info}
			out[info.ID] = img
		}
		img.Refs = append(img.Refs, r.Name)
		if r.Labels[pinnedLabelKey] == pinnedLabelValue {
			img.Pinned = true
		}
	}
	for _, img := range out {
		sort.Strings(img.Refs)
	}
	if !reused {
		s.mu.Lock()
		for d := range s.infos {
			if !seen[d] {
				delete(s.infos, d)
			}
		}
		s.mu.Unlock()
	}
	return out, reused, nil
}

// Resolve finds the image a CRI image reference names: an image ID
// ("sha256:..."), a name or digest reference in any form the kubelet uses
// ("busybox", "docker.io/library/busybox:1.36", "repo@sha256:..."), or an
// unambiguous prefix of an ID's hex. Not found is errdefs.ErrNotFound.
func (s *Service) Resolve(ctx context.Context, ref string) (*Image, error) {
	if ref == "" {
		return nil, fmt.Errorf("no image given: %w", errdefs.ErrInvalidArgument)
	}
	all, reused, err := s.images(ctx, false)
	if err != nil {
		return nil, err
	}
	img, err := findImage(all, ref)
	if errdefs.IsNotFound(err) && reused {
		// Absent from a reused listing may be new since: ask again.
		if all, _, err = s.images(ctx, true); err != nil {
			return nil, err
		}
		img, err = findImage(all, ref)
	}
	return img, err
}

// findImage finds ref in CRI images grouped by ID, as Resolve describes.
func findImage(all map[string]*Image, ref string) (*Image, error) {
	if _, err := digest.Parse(ref); err == nil {
		if img, ok := all[ref]; ok {
			return img, nil
		}
		return nil, fmt.Errorf("image %s: %w", ref, errdefs.ErrNotFound)
	}
	if named, err := reference.ParseDockerRef(ref); err == nil {
		name := named.String()
		for _, img := range all {
			for _, r := range img.Refs {
				if r == name {
					return img, nil
				}
			}
		}
	}
	if isHex(ref) {
		var found *Image
		for id, img := range all {
			if strings.HasPrefix(strings.TrimPrefix(id, "sha256:"), ref) {
				if found != nil {
					return nil, fmt.Errorf("image ID prefix %s is ambiguous: %w", ref, errdefs.ErrNotFound)
				}
				found = img
			}
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("image %s: %w", ref, errdefs.ErrNotFound)
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ListImages lists every image of the namespace the CRI can use; a filter
// naming an image narrows the list to that one.
func (s *Service) ListImages(ctx context.Context, req *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	imgs, err := s.listImages(withNamespace(ctx), req.GetFilter())
	if err != nil {
		return nil, err
	}
	return &runtime.ListImagesResponse{Images: imgs}, nil
}

// StreamBatch is how many images one StreamImages message carries; the
// server streams containers and sandboxes in batches of the same size.
const StreamBatch = 100

// StreamImages is ListImages in batches, for nodes with many images.
func (s *Service) StreamImages(req *runtime.StreamImagesRequest, stream grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	imgs, err := s.listImages(withNamespace(stream.Context()), req.GetFilter())
	if err != nil {
		return err
	}
	for len(imgs) > 0 {
		n := min(len(imgs), StreamBatch)
		if err := stream.Send(&runtime.StreamImagesResponse{Images: imgs[:n]}); err != nil {
			return err
		}
		imgs = imgs[n:]
	}
	return nil
}

func (s *Service) listImages(ctx context.Context, filter *runtime.ImageFilter) ([]*runtime.Image, error) {
	if ref := filter.GetImage().GetImage(); ref != "" {
		img, err := s.Resolve(ctx, ref)
		if errdefs.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []*runtime.Image{img.toCRI()}, nil
	}
	all, _, err := s.images(ctx, true)
	if err != nil {
		return nil, err
	}
	out := make([]*runtime.Image, 0, len(all))
	for _, img := range all {
		out = append(out, img.toCRI())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out, nil
}

// verboseImageInfo is ImageStatus's verbose "info", in containerd's shape.
type verboseImageInfo struct {
	ChainID   string        `json:"chainID"`
	ImageSpec ocispec.Image `json:"imageSpec"`
}

// ImageStatus describes one image; an unknown image is no error but an
// empty answer, as the CRI specifies.
func (s *Service) ImageStatus(ctx context.Context, req *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	img, err := s.Resolve(withNamespace(ctx), req.GetImage().GetImage())
	if errdefs.IsNotFound(err) {
		return &runtime.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	resp := &runtime.ImageStatusResponse{Image: img.toCRI()}
	if req.GetVerbose() {
		b, err := json.Marshal(verboseImageInfo{ChainID: img.Info.ChainID, ImageSpec: img.Info.Spec})
		if err != nil {
			return nil, fmt.Errorf("verbose info of image %s: %w", img.Info.ID, err)
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

// RemoveImage deletes every record of the image (tags, digest references,
// ID), the last one synchronously so that the garbage collector has freed
// its content and snapshots when the call returns. Removing an image that
// does not exist succeeds.
func (s *Service) RemoveImage(ctx context.Context, req *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	ctx = withNamespace(ctx)
	img, err := s.Resolve(ctx, req.GetImage().GetImage())
	if errdefs.IsNotFound(err) {
		return &runtime.RemoveImageResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	// The ID record goes last: while any name remains, the image stays
	// findable by its ID, so a failed removal can be retried by ID.
	refs := append([]string(nil), img.Refs...)
	sort.SliceStable(refs, func(i, j int) bool { return refs[j] == img.Info.ID && refs[i] != img.Info.ID })
	is := s.client.ImageService()
	defer s.imageIdx.invalidate()
	for i, r := range refs {
		var opts []images.DeleteOpt
		if i == len(refs)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := is.Delete(ctx, r, opts...); err != nil && !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("remove image %s (%s): %w", img.Info.ID, r, err)
		}
	}
	return &runtime.RemoveImageResponse{}, nil
}

// ImageFsInfo reports the space the configured snapshotter's snapshots use
// in the namespace, which is where images are unpacked.
func (s *Service) ImageFsInfo(ctx context.Context, _ *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	ctx = withNamespace(ctx)
	sn := s.client.SnapshotService(s.cfg.Snapshotter)
	var size, inodes int64
	var keys []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		keys = append(keys, info.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("walk snapshots of %s: %w", s.cfg.Snapshotter, err)
	}
	for _, k := range keys {
		u, err := sn.Usage(ctx, k)
		if errdefs.IsNotFound(err) {
			continue // removed since the walk
		}
		if err != nil {
			return nil, fmt.Errorf("usage of snapshot %s: %w", k, err)
		}
		size += u.Size
		inodes += u.Inodes
	}
	usage := &runtime.FilesystemUsage{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtime.FilesystemIdentifier{Mountpoint: s.cfg.ImageFSPath},
		UsedBytes:  &runtime.UInt64Value{Value: uint64(size)},
		InodesUsed: &runtime.UInt64Value{Value: uint64(inodes)},
	}
	return &runtime.ImageFsInfoResponse{ImageFilesystems: []*runtime.FilesystemUsage{usage}}, nil
}
