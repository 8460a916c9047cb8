package server

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/image"
)

// Creating a sandbox or container with the client's stock options
// (WithNewSnapshot, WithImageConfig, WithUser) costs a dozen calls
// between processes: the manifest and config are each read twice (Info
// and Read, the read crossing three processes), the snapshotter's
// capabilities asked, and the new snapshot's mounts asked again by every
// option that looks at /etc/passwd or /etc/group. Everything those calls
// return is known here already: the config is content-addressed and
// cached in image.Info, and the mounts are what Prepare returned. The
// options below feed the same containerd code from that knowledge, so
// the spec comes out the same.

// cachedImage is an oci.Image whose config is served from the cache.
type cachedImage struct {
	content.Store
	info *image.Info
}

func (s *Server) cachedImage(info *image.Info) cachedImage {
	return cachedImage{Store: s.client.ContentStore(), info: info}
}

func (c cachedImage) Config(context.Context) (ocispec.Descriptor, error) {
	return c.info.Config, nil
}

func (c cachedImage) ContentStore() content.Store { return c }

func (c cachedImage) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if desc.Digest == c.info.Config.Digest && c.info.ConfigBlob != nil {
		return blobReader{bytes.NewReader(c.info.ConfigBlob)}, nil
	}
	return c.Store.ReaderAt(ctx, desc)
}

type blobReader struct{ *bytes.Reader }

func (blobReader) Close() error { return nil }

// withCreateLease gives ctx the lease NewContainer would make itself (the
// client's, expiring in a day) and returns its release, which deletes it
// in the background: once the record exists it holds the snapshot, and a
// delete lost to a crash is made up for by the expiry, so the create
// need not wait for it.
func (s *Server) withCreateLease(ctx context.Context) (context.Context, func(), error) {
	lctx, done, err := s.client.WithLease(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("create lease: %w", err)
	}
	return lctx, func() {
		go func() {
			if err := done(context.WithoutCancel(ctx)); err != nil && !errdefs.IsNotFound(err) {
				logging.G(ctx).Warn("delete create lease", "error", err)
			}
		}()
	}, nil
}

// preparedRootfs is a container's new snapshot: its key and the mounts
// Prepare returned for it.
type preparedRootfs struct {
	key    string
	mounts []mount.Mount
}

// withRootfs prepares the container's snapshot over the image's layers, as
// containerd.WithNewSnapshot does, with the chain ID from the cache, and
// names the image on the record.
func (s *Server) withRootfs(id string, img *image.Image, r *preparedRootfs) containerd.NewContainerOpts {
	return func(ctx context.Context, client *containerd.Client, c *containers.Container) error {
		mounts, err := client.SnapshotService(s.cfg.Snapshotter).Prepare(ctx, id, img.Info.ChainID)
		if err != nil {
			return fmt.Errorf("prepare rootfs of %s from image %s: %w", id, img.Info.ID, err)
		}
		c.Snapshotter, c.SnapshotKey, c.Image = s.cfg.Snapshotter, id, img.Name()
		r.key, r.mounts = id, mounts
		return nil
	}
}

// withSpec is containerd.WithNewSpec with the prepared snapshot's mounts
// given to the options that read the rootfs, instead of asked for again.
func withSpec(r *preparedRootfs, opts ...oci.SpecOpts) containerd.NewContainerOpts {
	return func(ctx context.Context, client *containerd.Client, c *containers.Container) error {
		spec, err := oci.GenerateSpec(ctx, preparedClient{Client: client, r: r}, c, opts...)
		if err != nil {
			return err
		}
		c.Spec, err = typeurl.MarshalAny(spec)
		return err
	}
}

// preparedClient answers Mounts of the prepared snapshot itself; it embeds
// the client so that the options see everything else (its mount manager
// among them) unchanged.
type preparedClient struct {
	*containerd.Client
	r *preparedRootfs
}

func (p preparedClient) SnapshotService(name string) snapshots.Snapshotter {
	return preparedSnapshotter{Snapshotter: p.Client.SnapshotService(name), r: p.r}
}

type preparedSnapshotter struct {
	snapshots.Snapshotter
	r *preparedRootfs
}

func (p preparedSnapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	if p.r.mounts != nil && key == p.r.key {
		// A copy each time: a read-only temporary mount rewrites
		// the options of the mounts it is given.
		out := make([]mount.Mount, len(p.r.mounts))
		for i, m := range p.r.mounts {
			m.Options = append([]string(nil), m.Options...)
			out[i] = m
		}
		return out, nil
	}
	return p.Snapshotter.Mounts(ctx, key)
}

// criTask is a task this process created with createTask: the calls
// StartContainer and the exit watcher need, without the client's Task,
// whose creation reads the container record three times.
type criTask struct {
	s   *Server
	id  string
	pid uint32
	io  cio.IO
}

// createTask is containerd's Container.NewTask over the record in hand:
// the rootfs mounts (with the spec's SELinux mount label, as the client
// adds it), the task created, and nothing read again. The mounts are
// those Prepare returned when the caller has them (an active snapshot's
// mounts do not change), else asked of the snapshotter.
func (s *Server) createTask(ctx context.Context, rec containers.Container, prepared []mount.Mount, ioCreate cio.Creator) (_ *criTask, retErr error) {
	i, err := ioCreate(rec.ID)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			i.Cancel()
			i.Close()
		}
	}()
	cfg := i.Config()
	req := &tasksapi.CreateTaskRequest{
		ContainerID: rec.ID,
		Terminal:    cfg.Terminal,
		Stdin:       cfg.Stdin,
		Stdout:      cfg.Stdout,
		Stderr:      cfg.Stderr,
	}
	if rec.SnapshotKey != "" {
		if rec.Snapshotter == "" {
			return nil, fmt.Errorf("container %s has a snapshot but no snapshotter: %w", rec.ID, errdefs.ErrInvalidArgument)
		}
		mounts := prepared
		if mounts == nil {
			if mounts, err = s.client.SnapshotService(rec.Snapshotter).Mounts(ctx, rec.SnapshotKey); err != nil {
				return nil, fmt.Errorf("rootfs of %s: %w", rec.ID, err)
			}
		}
		spec := recordSpec(rec)
		var label string
		if spec != nil && spec.Linux != nil {
			label = spec.Linux.MountLabel
		}
		// In a user namespace, the image's layers are seen through an
		// idmapped mount until the shim has mounted the overlay.
		mounts, idmapDone, err := idmapRootfs(s.idmapDir(rec.ID), spec, mounts)
		if err != nil {
			return nil, fmt.Errorf("rootfs of %s: %w", rec.ID, err)
		}
		defer idmapDone()
		for _, m := range mounts {
			if label != "" {
				// A new slice: prepared mounts are shared.
				m.Options = append(slices.Clip(m.Options), fmt.Sprintf("context=%q", label))
			}
			req.Rootfs = append(req.Rootfs, &types.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
	}
	resp, err := s.client.TaskService().Create(ctx, req)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return &criTask{s: s, id: rec.ID, pid: resp.GetPid(), io: i}, nil
}

func (t *criTask) Start(ctx context.Context) error {
	if _, err := t.s.client.TaskService().Start(ctx, &tasksapi.StartRequest{ContainerID: t.id}); err != nil {
		return errgrpc.ToNative(err)
	}
	return nil
}

// Wait is the client's Task.Wait: the exit arrives on the channel.
func (t *criTask) Wait(ctx context.Context) <-chan containerd.ExitStatus {
	c := make(chan containerd.ExitStatus, 1)
	go func() {
		defer close(c)
		r, err := t.s.client.TaskService().Wait(ctx, &tasksapi.WaitRequest{ContainerID: t.id})
		if err != nil {
			c <- *containerd.NewExitStatus(containerd.UnknownExitStatus, time.Time{}, errgrpc.ToNative(err))
			return
		}
		c <- *containerd.NewExitStatus(r.GetExitStatus(), exitTime(r.GetExitedAt()), nil)
	}()
	return c
}

// Delete deletes the exited task as the client's Task.Delete does: the
// output drained first, the FIFOs closed after.
func (t *criTask) Delete(ctx context.Context, _ ...containerd.ProcessDeleteOpts) (*containerd.ExitStatus, error) {
	t.io.Cancel()
	t.io.Wait()
	r, err := t.s.client.TaskService().Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: t.id})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	t.io.Close()
	return containerd.NewExitStatus(r.GetExitStatus(), exitTime(r.GetExitedAt()), nil), nil
}

// abort kills and deletes a task that failed to start, and closes its IO.
func (t *criTask) abort(ctx context.Context) {
	if err := t.s.deleteTask(ctx, t.id); err != nil && !errdefs.IsNotFound(err) {
		logging.G(ctx).Warn("delete task that failed to start", "container", t.id, "error", err)
	}
	t.io.Cancel()
	t.io.Close()
}

// exitTime is the zero time for no timestamp, as the client's.
func exitTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
