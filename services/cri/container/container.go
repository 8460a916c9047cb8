package container

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/moby/sys/signal"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/container/watch"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// CreateContainer creates a container in a pod: the image's config merged
// with the request, in the pause container's network, IPC and UTS
// namespaces, with the pod's hostname, hosts and resolv.conf files.
func (s *Service) CreateContainer(ctx context.Context, req *runtime.CreateContainerRequest) (_ *runtime.CreateContainerResponse, retErr error) {
	ctx = withNamespace(ctx)
	cfg, err := s.imageVolumes.Resolve(ctx, req.GetConfig())
	if err != nil {
		return nil, err
	}
	md := cfg.GetMetadata()
	if md.GetName() == "" {
		return nil, fmt.Errorf("container metadata needs a name: %w", errdefs.ErrInvalidArgument)
	}
	sb, err := s.pods.CreatedSandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	ready, pausePid := s.pods.SandboxReady(ctx, sb.ID)
	if !ready {
		return nil, fmt.Errorf("sandbox %s is not ready: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	sbMD := sb.Config.GetMetadata()
	name := strings.Join([]string{md.GetName(), sbMD.GetName(), sbMD.GetNamespace(), sbMD.GetUid(), strconv.Itoa(int(md.GetAttempt()))}, "_")
	release, err := s.store.ReserveName(ctx, store.KindContainer, name)
	if err != nil {
		return nil, err
	}
	defer release()

	img, err := s.images.Resolve(ctx, cfg.GetImage().GetImage())
	if err != nil {
		return nil, fmt.Errorf("image of container %s: %w", md.GetName(), err)
	}
	cfgBytes, err := proto.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	id := store.NewID()
	m := &store.Container{
		ID: id, Name: name, SandboxID: sb.ID, RawConfig: cfgBytes,
		ImageID: img.Info.ID, ImageRef: img.Ref(),
		StopSignal: img.Info.Spec.Config.StopSignal,
		CreatedAt:  time.Now().UnixNano(), Config: cfg,
	}
	if dir, p := sb.Config.GetLogDirectory(), cfg.GetLogPath(); dir != "" && p != "" {
		m.LogPath = filepath.Join(dir, p)
	}

	imageMounts, err := s.imageVolumes.Mount(ctx, id, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil && len(imageMounts) > 0 {
			s.imageVolumes.Release(context.WithoutCancel(ctx), id)
		}
	}()
	ociRuntime, err := s.runtimes.Get(sb.RuntimeHandler)
	if err != nil {
		return nil, fmt.Errorf("runtime of sandbox %s: %w", sb.ID, err)
	}
	cdiOpt, err := s.cdi.Devices(ctx, cfg)
	if err != nil {
		return nil, err
	}
	specOpts, err := spec.Container(spec.Request{
		ID: id, Config: cfg, Sandbox: sb, PausePid: pausePid,
		SandboxDir: s.pods.SandboxDir(sb.ID), Shm: s.pods.SandboxShm(sb),
		Image: s.tasks.CachedImage(img.Info), ImageConfig: img.Info.Spec.Config,
		ImageMounts:         imageMounts,
		RestrictOOMScoreAdj: s.restrictOOMScoreAdj,
	})
	if err != nil {
		return nil, err
	}
	specOpts = append(specOpts, ociRuntime.WithPassthroughAnnotations(sb.Config.GetAnnotations(), cfg.GetAnnotations()))
	if cdiOpt != nil {
		specOpts = append(specOpts, cdiOpt)
	}
	ext, err := store.EncodeExtension(store.ContainerExtension, m)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{}
	for k, v := range cfg.GetLabels() {
		labels[k] = v
	}
	labels[store.KindLabel] = store.KindContainer
	labels[store.SandboxIDLabel] = sb.ID
	lctx, releaseLease, err := s.tasks.WithCreateLease(ctx)
	if err != nil {
		return nil, err
	}
	defer releaseLease()
	var rootfs task.Rootfs
	var rec containers.Container
	nriHook := s.hooks.CreateHook(sb, m)
	defer nriHook.Finish(ctx, &rec, &retErr)
	if _, err := s.client.NewContainer(lctx, id,
		s.tasks.WithRootfs(id, img, &rootfs),
		ociRuntime.WithRuntime(),
		task.WithSpec(&rootfs, specOpts...),
		containerd.WithContainerLabels(labels),
		store.WithExtension(store.ContainerExtension, ext),
		nriHook.Adjust(),
		store.WithRecordCopy(&rec),
	); err != nil {
		return nil, fmt.Errorf("create container %s: %w", md.GetName(), err)
	}
	s.store.RememberCreated(rec, rootfs.Mounts())
	s.store.AddName(store.KindContainer, name, id)
	return &runtime.CreateContainerResponse{ContainerId: id}, nil
}

// StartContainer starts a created container, its stdout and stderr
// written to its log file.
func (s *Service) StartContainer(ctx context.Context, req *runtime.StartContainerRequest) (*runtime.StartContainerResponse, error) {
	ctx = withNamespace(ctx)
	m, rec, prepared, cached, err := s.containerToStart(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	unlock := s.store.Lock(m.ID)
	defer unlock()
	if _, ok := s.store.Created(store.KindContainer, m.ID); cached && !ok {
		// Rewritten (started, most likely) while this call waited
		// for the lock: the kept record is stale.
		if m, rec, err = s.store.Container(ctx, m.ID); err != nil {
			return nil, err
		}
		prepared = nil
	}
	if m.StartedAt != 0 || m.FinishedAt != 0 {
		return nil, fmt.Errorf("container %s was started before: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	if ok, _ := s.pods.SandboxReady(ctx, m.SandboxID); !ok {
		return nil, fmt.Errorf("sandbox %s of container %s is not ready: %w", m.SandboxID, m.ID, errdefs.ErrFailedPrecondition)
	}
	lg, err := watch.OpenLog(m.LogPath)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*runtime.StartContainerResponse, error) {
		lg.Close()
		defer s.hooks.StopContainer(context.WithoutCancel(ctx), m.ID)
		// As containerd: a container that failed to start is exited,
		// with the reason recorded.
		m.StartedAt, m.FinishedAt = time.Now().UnixNano(), time.Now().UnixNano()
		m.ExitCode, m.Reason, m.Message = 128, "StartError", err.Error()
		if serr := s.store.SaveContainer(context.WithoutCancel(ctx), m); serr != nil {
			logging.G(ctx).Warn("record start failure", "container", m.ID, "error", serr)
		}
		return nil, err
	}
	if err := s.hooks.StartContainer(ctx, m, rec); err != nil {
		return fail(err)
	}
	lg.Attach = s.hooks.AttachPoint(m)
	stdout, stderr := lg.Writers()
	ioOpts := []cio.Opt{cio.WithStreams(lg.Stdin(), stdout, stderr), cio.WithFIFODir(s.fifoDir)}
	if m.Config.GetTty() {
		ioOpts = append(ioOpts, cio.WithTerminal)
	}
	// The record read above is the one the task is made from; the
	// lock keeps it current.
	task, err := s.tasks.Create(ctx, rec, prepared, cio.NewCreator(ioOpts...))
	if err != nil {
		return fail(fmt.Errorf("create task of container %s: %w", m.ID, err))
	}
	exitC := task.Wait(s.bg)
	if err := task.Start(ctx); err != nil {
		task.Abort(context.WithoutCancel(ctx))
		return fail(fmt.Errorf("start container %s: %w", m.ID, err))
	}
	m.StartedAt = time.Now().UnixNano()
	if err := s.store.SaveContainer(ctx, m); err != nil {
		return nil, err
	}
	s.exits.Watch(m.ID, task, exitC, lg)
	s.hooks.PostStartContainer(ctx, m, rec)
	return &runtime.StartContainerResponse{}, nil
}

// containerToStart is getContainer for StartContainer: the record (and
// the rootfs mounts) this process created, when it has them (cached),
// else the record read, with nil mounts for createTask to ask for.
func (s *Service) containerToStart(ctx context.Context, id string) (_ *store.Container, _ containers.Container, _ []mount.Mount, cached bool, _ error) {
	if r, ok := s.store.Created(store.KindContainer, id); ok {
		m, err := store.DecodeContainer(r.Record)
		return m, r.Record, r.Mounts, true, err
	}
	m, rec, err := s.store.Container(ctx, id)
	return m, rec, nil, false, err
}

// recordExit records how a container ended; oom says the kernel's OOM
// killer took a process of it, which the CRI reports as the reason. ctx's
// logger names the container.
func (s *Service) recordExit(ctx context.Context, id string, code int32, at time.Time, oom bool) {
	m, _, err := s.store.Container(ctx, id)
	if err != nil {
		logging.G(ctx).Debug("exited container has no record", "error", err)
		return
	}
	if m.FinishedAt != 0 {
		return
	}
	if at.IsZero() {
		at = time.Now()
	}
	m.FinishedAt, m.ExitCode = at.UnixNano(), code
	switch {
	case oom:
		m.Reason = "OOMKilled"
	case code != 0:
		m.Reason = "Error"
	default:
		m.Reason = "Completed"
	}
	if err := s.store.SaveContainer(ctx, m); err != nil {
		logging.G(ctx).Warn("record container exit", "error", err)
	}
}

// StopContainer stops a running container: its stop signal (the image's,
// else SIGTERM), then SIGKILL once the timeout passes. Stopping a stopped
// container succeeds.
func (s *Service) StopContainer(ctx context.Context, req *runtime.StopContainerRequest) (*runtime.StopContainerResponse, error) {
	ctx = withNamespace(ctx)
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if errdefs.IsNotFound(err) {
		// Stopping is idempotent, as the kubelet expects: what is
		// gone is stopped.
		return &runtime.StopContainerResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.stopContainer(ctx, m.ID, time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, err
	}
	s.hooks.StopContainer(ctx, m.ID)
	return &runtime.StopContainerResponse{}, nil
}

func (s *Service) stopContainer(ctx context.Context, id string, timeout time.Duration) error {
	ctx = logging.With(ctx, "container", id)
	unlock := s.store.Lock(id)
	defer unlock()
	m, _, err := s.store.Container(ctx, id)
	if err != nil {
		return err
	}
	if m.StartedAt == 0 || m.FinishedAt != 0 {
		return nil
	}
	p, err := s.tasks.State(ctx, id)
	if errdefs.IsNotFound(err) {
		// Exited and deleted, but the exit not recorded: the process
		// died in between.
		s.recordExit(ctx, id, 255, time.Time{}, false)
		return nil
	}
	if err != nil {
		return err
	}
	done, err := s.exits.Ensure(ctx, id, nil)
	if err != nil {
		return err
	}
	if p.GetStatus() != tasktypes.Status_STOPPED && timeout > 0 {
		sig := syscall.SIGTERM
		if m.StopSignal != "" {
			if parsed, err := signal.ParseSignal(m.StopSignal); err == nil {
				sig = parsed
			}
		}
		if err := s.kill(ctx, id, sig); err != nil {
			return err
		}
		select {
		case <-done:
			return nil
		case <-time.After(timeout):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if p.GetStatus() != tasktypes.Status_STOPPED {
		if err := s.kill(ctx, id, syscall.SIGKILL); err != nil {
			return err
		}
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for container %s to exit: %w", id, ctx.Err())
	}
}

func (s *Service) kill(ctx context.Context, id string, sig syscall.Signal) error {
	task, err := s.tasks.Load(ctx, id)
	if err != nil || task == nil {
		return err
	}
	if err := task.Kill(ctx, sig, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("signal %d to container %s: %w", sig, id, err)
	}
	return nil
}

// RemoveContainer removes a container, stopping it first if it runs; its
// log file stays (the kubelet owns it). Removing an unknown container
// succeeds.
func (s *Service) RemoveContainer(ctx context.Context, req *runtime.RemoveContainerRequest) (*runtime.RemoveContainerResponse, error) {
	ctx = withNamespace(ctx)
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if errdefs.IsNotFound(err) {
		return &runtime.RemoveContainerResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.removeContainer(ctx, m.ID); err != nil {
		return nil, err
	}
	return &runtime.RemoveContainerResponse{}, nil
}

func (s *Service) removeContainer(ctx context.Context, id string) error {
	if err := s.stopContainer(ctx, id, 0); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	unlock := s.store.Lock(id)
	defer unlock()
	s.hooks.RemoveContainer(ctx, id)
	if err := s.tasks.Delete(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	c, err := s.client.LoadContainer(ctx, id)
	if err == nil {
		err = c.Delete(ctx, containerd.WithSnapshotCleanup)
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	s.imageVolumes.Release(ctx, id)
	s.hooks.Forget(id)
	return nil
}

// containerState is a container's state and, once exited, how it ended.
func (s *Service) containerState(ctx context.Context, m *store.Container) (runtime.ContainerState, int32, int64) {
	switch {
	case m.FinishedAt != 0:
		return runtime.ContainerState_CONTAINER_EXITED, m.ExitCode, m.FinishedAt
	case m.StartedAt == 0:
		return runtime.ContainerState_CONTAINER_CREATED, 0, 0
	}
	p, err := s.tasks.State(ctx, m.ID)
	if errdefs.IsNotFound(err) {
		// The task is gone: this process's exit watcher is between
		// deleting it and recording the exit. Its record says how
		// the container ended in a moment.
		if done := s.exits.Done(m.ID); done != nil {
			select {
			case <-done:
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
			}
			if m2, _, err := s.store.Container(ctx, m.ID); err == nil && m2.FinishedAt != 0 {
				*m = *m2 // the caller reports the reason too
				return runtime.ContainerState_CONTAINER_EXITED, m.ExitCode, m.FinishedAt
			}
		}
	}
	if err != nil {
		return runtime.ContainerState_CONTAINER_UNKNOWN, 0, 0
	}
	if p.GetStatus() == tasktypes.Status_STOPPED {
		// Exited; the watcher records it shortly.
		return runtime.ContainerState_CONTAINER_EXITED, int32(p.GetExitStatus()), p.GetExitedAt().AsTime().UnixNano()
	}
	return runtime.ContainerState_CONTAINER_RUNNING, 0, 0
}

// ContainerStatus describes a container.
func (s *Service) ContainerStatus(ctx context.Context, req *runtime.ContainerStatusRequest) (*runtime.ContainerStatusResponse, error) {
	ctx = withNamespace(ctx)
	m, rec, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	state, code, finished := s.containerState(ctx, m)
	st := &runtime.ContainerStatus{
		Id:          m.ID,
		Metadata:    m.Config.GetMetadata(),
		State:       state,
		CreatedAt:   m.CreatedAt,
		StartedAt:   m.StartedAt,
		FinishedAt:  finished,
		ExitCode:    code,
		Image:       m.Config.GetImage(),
		ImageRef:    m.ImageRef,
		ImageId:     m.ImageID,
		Labels:      m.Config.GetLabels(),
		Annotations: m.Config.GetAnnotations(),
		Mounts:      m.Config.GetMounts(),
		LogPath:     m.LogPath,
		User:        spec.User(store.Spec(rec)),
	}
	if state == runtime.ContainerState_CONTAINER_EXITED {
		st.Reason, st.Message = m.Reason, m.Message
	}
	return &runtime.ContainerStatusResponse{Status: st}, nil
}

// ListContainers lists containers, narrowed by ID (or prefix), sandbox,
// state and label selector.
func (s *Service) ListContainers(ctx context.Context, req *runtime.ListContainersRequest) (*runtime.ListContainersResponse, error) {
	ctx = withNamespace(ctx)
	recs, err := s.store.List(ctx, store.KindContainer)
	if err != nil {
		return nil, err
	}
	f := req.GetFilter()
	var out []*runtime.Container
	for _, c := range recs {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) {
			continue
		}
		m, err := store.DecodeContainer(c)
		if err != nil {
			logging.G(ctx).Warn("unreadable container record", "id", c.ID, "error", err)
			continue
		}
		if f.GetPodSandboxId() != "" && !strings.HasPrefix(m.SandboxID, f.GetPodSandboxId()) {
			continue
		}
		if !store.MatchLabels(m.Config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		state, _, _ := s.containerState(ctx, m)
		if f.GetState() != nil && f.GetState().GetState() != state {
			continue
		}
		out = append(out, &runtime.Container{
			Id:           m.ID,
			PodSandboxId: m.SandboxID,
			Metadata:     m.Config.GetMetadata(),
			Image:        m.Config.GetImage(),
			ImageRef:     m.ImageRef,
			ImageId:      m.ImageID,
			State:        state,
			CreatedAt:    m.CreatedAt,
			Labels:       m.Config.GetLabels(),
			Annotations:  m.Config.GetAnnotations(),
		})
	}
	return &runtime.ListContainersResponse{Containers: out}, nil
}

// Recover gives the containers running when this process started their
// exit watchers and log writers back. It retries until metadata and
// tasks answer, for at most a minute.
func (s *Service) Recover(ctx context.Context) {
	ctx = withNamespace(ctx)
	var recs []containers.Container
	var err error
	for i := 0; i < 60; i++ {
		if recs, err = s.store.List(ctx, store.KindContainer); err == nil {
			break
		}
		select {
		case <-time.After(time.Second):
		case <-s.bg.Done():
			return
		}
	}
	if err != nil {
		logging.G(ctx).Error("recover containers", "error", err)
		return
	}
	for _, c := range recs {
		m, err := store.DecodeContainer(c)
		if err != nil || m.StartedAt == 0 || m.FinishedAt != 0 {
			continue
		}
		ctx := logging.With(ctx, "container", m.ID)
		if _, err := s.tasks.State(ctx, m.ID); errdefs.IsNotFound(err) {
			s.recordExit(ctx, m.ID, 255, time.Time{}, false)
			continue
		}
		lg, err := watch.OpenLog(m.LogPath)
		if err != nil {
			logging.G(ctx).Warn("reopen container log", "error", err)
			lg = nil
		} else {
			lg.Attach = s.hooks.AttachPoint(m)
		}
		if _, err := s.exits.Ensure(ctx, m.ID, lg); err != nil {
			logging.G(ctx).Warn("watch recovered container", "error", err)
		}
	}
	logging.G(ctx).Debug("recovered containers", "count", len(recs))
}

// UpdateContainerResources changes a container's CPU and memory
// resources: in its running task's cgroup (runc update through the shim),
// then in its spec and record, so that a later start, status or restart
// of the cri process sees the new values.
func (s *Service) UpdateContainerResources(ctx context.Context, req *runtime.UpdateContainerResourcesRequest) (*runtime.UpdateContainerResourcesResponse, error) {
	ctx = withNamespace(ctx)
	if req.GetLinux() == nil {
		return &runtime.UpdateContainerResourcesResponse{}, nil
	}
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	// NRI plugins may change what is applied.
	r, err := s.hooks.UpdateContainer(ctx, m.ID, req.GetLinux())
	if err != nil {
		return nil, err
	}
	if err := s.updateContainerResources(ctx, m.ID, r); err != nil {
		return nil, err
	}
	s.hooks.PostUpdateContainer(ctx, m.ID)
	return &runtime.UpdateContainerResourcesResponse{}, nil
}

// updateContainerResources is UpdateContainerResources without NRI: also
// what NRI plugins' own updates go through.
func (s *Service) updateContainerResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error {
	m, _, err := s.store.Container(ctx, id)
	if err != nil {
		return err
	}
	unlock := s.store.Lock(m.ID)
	defer unlock()
	// Again under the lock: a start or exit may have rewritten it.
	m, _, err = s.store.Container(ctx, m.ID)
	if err != nil {
		return err
	}
	c, err := s.client.LoadContainer(ctx, m.ID)
	if err != nil {
		return err
	}
	sp, err := c.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec of container %s: %w", m.ID, err)
	}
	for _, opt := range spec.Update(r) {
		if err := opt(ctx, nil, nil, sp); err != nil {
			return err
		}
	}
	if state, _, _ := s.containerState(ctx, m); state == runtime.ContainerState_CONTAINER_RUNNING {
		task, err := c.Task(ctx, nil)
		if err != nil {
			return fmt.Errorf("task of container %s: %w", m.ID, err)
		}
		if err := task.Update(ctx, containerd.WithResources(sp.Linux.Resources)); err != nil {
			return fmt.Errorf("update resources of container %s: %w", m.ID, err)
		}
	}
	specAny, err := typeurl.MarshalAnyToProto(sp)
	if err != nil {
		return err
	}
	if _, err := s.client.ContainerService().Update(ctx, containers.Container{ID: m.ID, Spec: specAny}, "spec"); err != nil {
		return fmt.Errorf("record spec of container %s: %w", m.ID, err)
	}
	cfg := proto.Clone(m.Config).(*runtime.ContainerConfig)
	if cfg.Linux == nil {
		cfg.Linux = &runtime.LinuxContainerConfig{}
	}
	cfg.Linux.Resources = r
	if m.RawConfig, err = proto.Marshal(cfg); err != nil {
		return err
	}
	m.Config = cfg
	if err := s.store.SaveContainer(ctx, m); err != nil {
		return err
	}
	return nil
}

// ReopenContainerLog closes a running container's log file and opens its
// path again: the kubelet renames the file to rotate it, then asks for
// this so that new lines go to a new file.
func (s *Service) ReopenContainerLog(ctx context.Context, req *runtime.ReopenContainerLogRequest) (*runtime.ReopenContainerLogResponse, error) {
	ctx = withNamespace(ctx)
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if state, _, _ := s.containerState(ctx, m); state != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is not running: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	lg := s.exits.Log(m.ID)
	if lg == nil || lg.File() == nil {
		return nil, fmt.Errorf("container %s has no log this process writes: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	if err := lg.File().Reopen(); err != nil {
		return nil, err
	}
	return &runtime.ReopenContainerLogResponse{}, nil
}
