// Package imagevolume mounts the CRI's image volumes (KEP-4639): a
// container's mount whose source is an image, read-only. Each is a view
// snapshot of the image, mounted on the host under
// <dir>/<container>/<n> and bound into the container (its sub-path, when
// one is asked). The views belong to a lease of the container, so that
// removing the container (or a failed creation) releases them in one
// step.
package imagevolume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/image"
)

// Volumes mounts image volumes from the images the CRI knows, unpacked
// with its snapshotter.
type Volumes struct {
	client      *containerd.Client
	images      *image.Service
	snapshotter string
	dir         string
}

// New mounts volumes under dir.
func New(client *containerd.Client, images *image.Service, snapshotter, dir string) *Volumes {
	return &Volumes{client: client, images: images, snapshotter: snapshotter, dir: dir}
}

func (s *Volumes) imageVolumeDir(containerID string) string {
	return filepath.Join(s.dir, containerID)
}

func imageVolumeLease(containerID string) string { return "cri-image-volumes-" + containerID }

// Resolve checks the request's image mounts and records in
// each the ID of the image it names, which ContainerStatus reports. It
// returns cfg itself when there is none, else a copy.
func (s *Volumes) Resolve(ctx context.Context, cfg *runtime.ContainerConfig) (*runtime.ContainerConfig, error) {
	has := false
	for _, m := range cfg.GetMounts() {
		has = has || m.GetImage().GetImage() != ""
	}
	if !has {
		return cfg, nil
	}
	cfg = proto.Clone(cfg).(*runtime.ContainerConfig)
	for _, m := range cfg.GetMounts() {
		if m.GetImage().GetImage() == "" {
			continue
		}
		if !m.GetReadonly() {
			return nil, fmt.Errorf("image volume at %s must be read-only: %w", m.GetContainerPath(), errdefs.ErrInvalidArgument)
		}
		if m.GetContainerPath() == "" {
			return nil, fmt.Errorf("image volume %s has no container path: %w", m.GetImage().GetImage(), errdefs.ErrInvalidArgument)
		}
		img, err := s.images.Resolve(ctx, m.GetImage().GetImage())
		if err != nil {
			return nil, fmt.Errorf("image volume at %s: %w", m.GetContainerPath(), err)
		}
		m.Image.ImageRef = img.Info.ID
	}
	return cfg, nil
}

// Mount mounts the image volumes of cfg on the host and returns the
// container's bind mounts of them, by container path. On error nothing
// is left mounted; Release undoes a success.
func (s *Volumes) Mount(ctx context.Context, containerID string, cfg *runtime.ContainerConfig) (_ map[string]specs.Mount, retErr error) {
	out := map[string]specs.Mount{}
	var lease leases.Lease
	for i, m := range cfg.GetMounts() {
		if m.GetImage().GetImage() == "" {
			continue
		}
		if lease.ID == "" {
			var err error
			lease, err = s.client.LeasesService().Create(ctx, leases.WithID(imageVolumeLease(containerID)))
			if err != nil {
				return nil, fmt.Errorf("lease for image volumes: %w", err)
			}
			defer func() {
				if retErr != nil {
					s.Release(context.WithoutCancel(ctx), containerID)
				}
			}()
		}
		src, err := s.mountImageVolume(leases.WithLease(ctx, lease.ID), containerID, i, m)
		if err != nil {
			return nil, fmt.Errorf("image volume %s at %s: %w", m.GetImage().GetImage(), m.GetContainerPath(), err)
		}
		out[m.GetContainerPath()] = specs.Mount{Destination: m.GetContainerPath(), Type: "bind", Source: src,
			Options: []string{"rbind", "rprivate", "ro", "nosuid", "nodev"}}
	}
	return out, nil
}

func (s *Volumes) mountImageVolume(ctx context.Context, containerID string, i int, m *runtime.Mount) (string, error) {
	img, err := s.images.Resolve(ctx, m.GetImage().GetImage())
	if err != nil {
		return "", err
	}
	ci, err := s.containerdImage(ctx, img)
	if err != nil {
		return "", err
	}
	if ok, err := ci.IsUnpacked(ctx, s.snapshotter); err != nil || !ok {
		if err := ci.Unpack(ctx, s.snapshotter); err != nil {
			return "", fmt.Errorf("unpack: %w", err)
		}
	}
	diffIDs, err := ci.RootFS(ctx)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s-%d", imageVolumeLease(containerID), i)
	mounts, err := s.client.SnapshotService(s.snapshotter).View(ctx, key, identity.ChainID(diffIDs).String())
	if err != nil {
		return "", fmt.Errorf("view of the image: %w", err)
	}
	dir := filepath.Join(s.imageVolumeDir(containerID), strconv.Itoa(i))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := mount.All(mounts, dir); err != nil {
		return "", fmt.Errorf("mount the image's view: %w", err)
	}
	return imageSubPath(dir, m.GetImageSubPath())
}

// imageSubPath is the sub-path of an image volume on the host: it must
// exist and stay inside the image (no "..", no symbolic link out).
func imageSubPath(root, sub string) (string, error) {
	if sub == "" {
		return root, nil
	}
	if filepath.IsAbs(sub) || slices.Contains(strings.Split(filepath.ToSlash(sub), "/"), "..") {
		return "", fmt.Errorf("sub-path %q is not a path inside the image: %w", sub, errdefs.ErrInvalidArgument)
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", err
	}
	p, err := filepath.EvalSymlinks(filepath.Join(realRoot, sub))
	if err != nil {
		return "", fmt.Errorf("sub-path %q: %v: %w", sub, err, errdefs.ErrInvalidArgument)
	}
	if p != realRoot && !strings.HasPrefix(p, realRoot+string(filepath.Separator)) {
		return "", fmt.Errorf("sub-path %q leaves the image: %w", sub, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// Release unmounts a container's image volumes and ends the
// lease holding their snapshots; with none, it does nothing.
func (s *Volumes) Release(ctx context.Context, containerID string) {
	log := logging.G(ctx).With("container", containerID)
	dir := s.imageVolumeDir(containerID)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("list image volumes", "error", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if err := mount.UnmountAll(p, 0); err != nil {
			log.Warn("unmount image volume", "path", p, "error", err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		log.Warn("remove image volumes", "error", err)
	}
	err = s.client.LeasesService().Delete(ctx, leases.Lease{ID: imageVolumeLease(containerID)})
	if err != nil && !errdefs.IsNotFound(err) {
		log.Warn("release image volumes", "error", err)
	}
}

// containerdImage is the client's view of a CRI image, by its Name.
func (s *Volumes) containerdImage(ctx context.Context, img *image.Image) (containerd.Image, error) {
	name := img.Name()
	ci, err := s.client.GetImage(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	return ci, nil
}
