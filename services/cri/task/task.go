// Package task holds what a CRI sandbox or container runs on: its root
// filesystem prepared from the image (with the creation lease and the
// image config served from the cache), the spec generated over it, and
// the task created, started, waited for and deleted with the task
// service's calls directly. In a user namespace the image's layers are
// seen through an idmapped mount while the shim mounts the rootfs.
package task

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// Service creates root filesystems and tasks over a containerd client
// of the other services.
type Service struct {
	client      *containerd.Client
	snapshotter string
	// idmapDir holds, per task, the idmapped layers' mount point while
	// its shim mounts its rootfs.
	idmapDir string
}

// New is the service over client, preparing snapshots on snapshotter,
// with idmapped layers mounted under idmapDir.
func New(client *containerd.Client, snapshotter, idmapDir string) *Service {
	return &Service{client: client, snapshotter: snapshotter, idmapDir: idmapDir}
}

// Task is a task this process created with Create: the calls
// StartContainer and the exit watcher need, without the client's Task,
// whose creation reads the container record three times.
type Task struct {
	s   *Service
	id  string
	pid uint32
	io  cio.IO
}

// Create is containerd's Container.NewTask over the record in hand:
// the rootfs mounts (with the spec's SELinux mount label, as the client
// adds it), the task created, and nothing read again. The mounts are
// those Prepare returned when the caller has them (an active snapshot's
// mounts do not change), else asked of the snapshotter.
func (s *Service) Create(ctx context.Context, rec containers.Container, prepared []mount.Mount, ioCreate cio.Creator) (_ *Task, retErr error) {
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
		spec := store.Spec(rec)
		var label string
		if spec != nil && spec.Linux != nil {
			label = spec.Linux.MountLabel
		}
		// In a user namespace, the image's layers are seen through an
		// idmapped mount until the shim has mounted the overlay.
		mounts, idmapDone, err := idmapRootfs(filepath.Join(s.idmapDir, rec.ID), spec, mounts)
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
	return &Task{s: s, id: rec.ID, pid: resp.GetPid(), io: i}, nil
}

func (t *Task) Start(ctx context.Context) error {
	if _, err := t.s.client.TaskService().Start(ctx, &tasksapi.StartRequest{ContainerID: t.id}); err != nil {
		return errgrpc.ToNative(err)
	}
	return nil
}

// Wait is the client's Task.Wait: the exit arrives on the channel.
func (t *Task) Wait(ctx context.Context) <-chan containerd.ExitStatus {
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
func (t *Task) Delete(ctx context.Context, _ ...containerd.ProcessDeleteOpts) (*containerd.ExitStatus, error) {
	t.io.Cancel()
	t.io.Wait()
	r, err := t.s.client.TaskService().Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: t.id})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	t.io.Close()
	return containerd.NewExitStatus(r.GetExitStatus(), exitTime(r.GetExitedAt()), nil), nil
}

// Abort kills and deletes a task that failed to start, and closes its IO.
func (t *Task) Abort(ctx context.Context) {
	if err := t.s.Delete(ctx, t.id); err != nil && !errdefs.IsNotFound(err) {
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

// Load is an object's task, nil when it has none.
func (s *Service) Load(ctx context.Context, id string) (containerd.Task, error) {
	c, err := s.client.LoadContainer(ctx, id)
	if err != nil {
		return nil, err
	}
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	return task, err
}

// Delete kills an object's task, if it has one, and deletes it.
func (s *Service) Delete(ctx context.Context, id string) error {
	task, err := s.Load(ctx, id)
	if err != nil || task == nil {
		return err
	}
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task of %s: %w", id, err)
	}
	return nil
}

// State asks the tasks service about an object's task: its status
// (UNKNOWN with NotFound when it has none), pid and exit.
func (s *Service) State(ctx context.Context, id string) (*tasktypes.Process, error) {
	resp, err := s.client.TaskService().Get(ctx, &tasksapi.GetRequest{ContainerID: id})
	if err != nil {
		return nil, fmt.Errorf("task of %s: %w", id, errgrpc.ToNative(err))
	}
	return resp.GetProcess(), nil
}
