package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Image volumes (KEP-4639): a mount whose source is an image, read-only.
// Each is a view snapshot of the image, mounted on the host under
// <state>/image-volumes/<container>/<n> and bound into the container
// (its sub-path, when one is asked). The views belong to a lease of the
// container, so that removing the container (or a failed creation)
// releases them in one step.

func (s *Server) imageVolumeDir(containerID string) string {
	return filepath.Join(s.cfg.StateDir, "image-volumes", containerID)
}

func imageVolumeLease(containerID string) string { return "cri-image-volumes-" + containerID }

// resolveImageVolumes checks the request's image mounts and records in
// each the ID of the image it names, which ContainerStatus reports. It
// returns cfg itself when there is none, else a copy.
func (s *Server) resolveImageVolumes(ctx context.Context, cfg *runtime.ContainerConfig) (*runtime.ContainerConfig, error) {
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

// mountImageVolumes mounts the image volumes of cfg on the host and
// returns the container's bind mounts of them, by container path. On
// error nothing is left mounted; releaseImageVolumes undoes a success.
func (s *Server) mountImageVolumes(ctx context.Context, containerID string, cfg *runtime.ContainerConfig) (_ map[string]specs.Mount, retErr error) {
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
					s.releaseImageVolumes(context.WithoutCancel(ctx), containerID)
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

func (s *Server) mountImageVolume(ctx context.Context, containerID string, i int, m *runtime.Mount) (string, error) {
	img, err := s.images.Resolve(ctx, m.GetImage().GetImage())
	if err != nil {
		return "", err
	}
	ci, err := s.containerdImage(ctx, img)
	if err != nil {
		return "", err
	}
	if ok, err := ci.IsUnpacked(ctx, s.cfg.Snapshotter); err != nil || !ok {
		if err := ci.Unpack(ctx, s.cfg.Snapshotter); err != nil {
			return "", fmt.Errorf("unpack: %w", err)
		}
	}
	diffIDs, err := ci.RootFS(ctx)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s-%d", imageVolumeLease(containerID), i)
	mounts, err := s.client.SnapshotService(s.cfg.Snapshotter).View(ctx, key, identity.ChainID(diffIDs).String())
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

// releaseImageVolumes unmounts a container's image volumes and ends the
// lease holding their snapshots; with none, it does nothing.
func (s *Server) releaseImageVolumes(ctx context.Context, containerID string) {
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
