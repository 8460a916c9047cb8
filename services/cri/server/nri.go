package server

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	nriapi "github.com/containerd/nri/pkg/api"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/nri"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// The CRI server's side of NRI (services/cri/nri): its pods and
// containers as plugins see them, the hooks its lifecycle calls make, and
// what plugins may do to containers (nri.Runtime). Each hook is one call
// at its place in sandbox.go, container.go and update.go, in containerd's
// order: RunPodSandbox once the pause task runs (the pod hidden until the
// plugins have seen it), CreateContainer as the container record is made
// (the plugins' adjustment goes into its spec), StartContainer before the
// task is made and PostStart after, StopContainer once stopped (or when
// it exits by itself), RemoveContainer and RemovePodSandbox before the
// records go, StopPodSandbox once its containers and pause task are
// stopped.

// SetNRI gives the server its NRI adaptation (nil: none), before it
// serves.
func (s *Server) SetNRI(a *nri.API) { s.nri = a }

// SeedNRI tells NRI of the pods and containers made before this process
// started, so that plugins hear of their stop and removal; it retries
// until metadata and tasks answer, for at most a minute.
func (s *Server) SeedNRI(ctx context.Context) {
	if s.nri == nil {
		return
	}
	ctx = withNamespace(ctx)
	for i := 0; i < 60; i++ {
		pods, perr := s.store.List(ctx, store.KindSandbox)
		ctrs, cerr := s.store.List(ctx, store.KindContainer)
		if perr == nil && cerr == nil {
			var ready []string
			for _, p := range pods {
				if ok, _ := s.pods.Ready(ctx, p.ID); ok {
					ready = append(ready, p.ID)
				}
			}
			states := map[string]nriapi.ContainerState{}
			for _, c := range ctrs {
				if m, err := store.DecodeContainer(c); err == nil {
					state, _, _ := s.containers.State(ctx, m)
					states[c.ID] = nriState(state)
				}
			}
			s.nri.Seed(ready, states)
			return
		}
		select {
		case <-time.After(time.Second):
		case <-s.bg.Done():
			return
		}
	}
	logging.G(ctx).Warn("NRI: pods and containers could not be listed; plugins hear nothing of their stop")
}

func nriState(st runtime.ContainerState) nriapi.ContainerState {
	switch st {
	case runtime.ContainerState_CONTAINER_CREATED:
		return nriapi.ContainerState_CONTAINER_CREATED
	case runtime.ContainerState_CONTAINER_RUNNING:
		return nriapi.ContainerState_CONTAINER_RUNNING
	case runtime.ContainerState_CONTAINER_EXITED:
		return nriapi.ContainerState_CONTAINER_STOPPED
	}
	return nriapi.ContainerState_CONTAINER_UNKNOWN
}

// metaState is a container's state from its record alone.
func metaState(m *store.Container) nriapi.ContainerState {
	switch {
	case m.FinishedAt != 0:
		return nriapi.ContainerState_CONTAINER_STOPPED
	case m.StartedAt != 0:
		return nriapi.ContainerState_CONTAINER_RUNNING
	}
	return nriapi.ContainerState_CONTAINER_CREATED
}

// nriPod describes a pod to plugins; full, or only its ID when no plugin
// listens. rec is its record when the caller has it at hand.
func (s *Server) nriPod(ctx context.Context, m *store.Sandbox, rec *containers.Container, full bool) *nri.Pod {
	p := &nri.Pod{ID: m.ID}
	if !full {
		return p
	}
	p.Config, p.RuntimeHandler = m.Config, m.RuntimeHandler
	if m.IP != "" {
		p.IPs = append([]string{m.IP}, m.AdditionalIPs...)
	}
	if rec == nil {
		if r, err := s.client.ContainerService().Get(ctx, m.ID); err == nil {
			rec = &r
		}
	}
	if rec != nil {
		p.Labels, p.Spec = rec.Labels, store.Spec(*rec)
	}
	if ok, pid := s.pods.Ready(ctx, m.ID); ok {
		p.Pid = pid
	}
	return p
}

// nriContainer describes a container to plugins, as nriPod.
func (s *Server) nriContainer(ctx context.Context, m *store.Container, rec *containers.Container, full bool) *nri.Container {
	c := &nri.Container{ID: m.ID, SandboxID: m.SandboxID, State: metaState(m)}
	if !full {
		return c
	}
	c.Config = m.Config
	c.CreatedAt, c.StartedAt, c.FinishedAt = m.CreatedAt, m.StartedAt, m.FinishedAt
	c.ExitCode, c.Reason, c.Message = m.ExitCode, m.Reason, m.Message
	c.ImageName, c.ImageDigest, c.ImageID = m.Config.GetImage().GetImage(), m.ImageRef, m.ImageID
	if rec == nil {
		if r, err := s.client.ContainerService().Get(ctx, m.ID); err == nil {
			rec = &r
		}
	}
	if rec != nil {
		c.Labels, c.Spec = rec.Labels, store.Spec(*rec)
	}
	if c.State == nriapi.ContainerState_CONTAINER_RUNNING {
		if p, err := s.tasks.State(ctx, m.ID); err == nil {
			c.Pid = p.GetPid()
		}
	}
	return c
}

// nriSandbox is the pod of a container, described; an ID alone when its
// record is gone.
func (s *Server) nriSandbox(ctx context.Context, id string, full bool) *nri.Pod {
	if sb, err := s.store.Get(ctx, store.KindSandbox, id); err == nil {
		if m, err := store.DecodeSandbox(sb); err == nil {
			return s.nriPod(ctx, m, &sb, full)
		}
	}
	return &nri.Pod{ID: id}
}

// nriRunPod tells plugins of a pod whose pause task runs; their failure
// fails RunPodSandbox. It ends the pod's hiding while plugins cannot be
// synchronised, so that a connecting plugin sees the pod either in its
// synchronisation or here.
func (s *Server) nriRunPod(ctx context.Context, m *store.Sandbox, rec containers.Container) error {
	if s.nri == nil {
		return nil
	}
	defer s.nri.BlockSync()()
	if err := s.nri.RunPodSandbox(ctx, s.nriPod(ctx, m, &rec, s.nri.Active())); err != nil {
		return err
	}
	s.pods.Unhide(m.ID)
	return nil
}

// nriStopPod tells plugins of a pod whose containers and pause task are
// stopped; their failure is only logged, as in containerd.
func (s *Server) nriStopPod(ctx context.Context, m *store.Sandbox) {
	if s.nri == nil {
		return
	}
	defer s.nri.BlockSync()()
	if err := s.nri.StopPodSandbox(ctx, s.nriPod(ctx, m, nil, s.nri.Active())); err != nil {
		logging.G(ctx).Warn("NRI StopPodSandbox", "sandbox", m.ID, "error", err)
	}
}

// nriUpdatePod asks plugins about a pod's new resources.
func (s *Server) nriUpdatePod(ctx context.Context, m *store.Sandbox, overhead, resources *runtime.LinuxContainerResources) error {
	if s.nri == nil {
		return nil
	}
	defer s.nri.BlockSync()()
	return s.nri.UpdatePodSandbox(ctx, s.nriPod(ctx, m, nil, s.nri.Active()), overhead, resources)
}

// nriPostUpdatePod tells plugins a pod's resources changed.
func (s *Server) nriPostUpdatePod(ctx context.Context, m *store.Sandbox) {
	if s.nri == nil {
		return
	}
	defer s.nri.BlockSync()()
	if err := s.nri.PostUpdatePodSandbox(ctx, s.nriPod(ctx, m, nil, s.nri.Active())); err != nil {
		logging.G(ctx).Warn("NRI PostUpdatePodSandbox", "sandbox", m.ID, "error", err)
	}
}

// nriRemovePod tells plugins of a pod about to be removed.
func (s *Server) nriRemovePod(ctx context.Context, m *store.Sandbox) {
	if s.nri == nil {
		return
	}
	defer s.nri.BlockSync()()
	if err := s.nri.RemovePodSandbox(ctx, s.nriPod(ctx, m, nil, s.nri.Active())); err != nil {
		logging.G(ctx).Warn("NRI RemovePodSandbox", "sandbox", m.ID, "error", err)
	}
}

// nriCreate is a container's creation as NRI sees it: Adjust is given to
// NewContainer last but for the record copy, Finish runs when
// CreateContainer returns. Plugins cannot be synchronised in between, so
// a connecting plugin sees the container in its synchronisation or in
// CreateContainer.
type nriCreate struct {
	s       *Server
	sb      *store.Sandbox
	m       *store.Container
	unblock func()
	// asked is the container as plugins were asked about it; nil
	// until they are.
	asked *nri.Container
	pod   *nri.Pod
}

func (s *Server) nriCreateHook(sb *store.Sandbox, m *store.Container) *nriCreate {
	h := &nriCreate{s: s, sb: sb, m: m, unblock: func() {}}
	if s.nri != nil {
		h.unblock = s.nri.BlockSync()
	}
	return h
}

// Adjust asks plugins about the container, its spec made, and applies
// their adjustment to the spec.
func (h *nriCreate) Adjust() client.NewContainerOpts {
	return func(ctx context.Context, _ *client.Client, c *containers.Container) error {
		if h.s.nri == nil {
			return nil
		}
		full := h.s.nri.Active()
		h.pod = h.s.nriPod(ctx, h.sb, nil, full)
		ctr := h.s.nriContainer(ctx, h.m, nil, full)
		var spec specs.Spec
		if err := json.Unmarshal(c.Spec.GetValue(), &spec); err != nil {
			return fmt.Errorf("spec of container %s for NRI: %w", c.ID, err)
		}
		if full {
			ctr.Labels, ctr.Spec = c.Labels, &spec
		}
		h.asked = ctr
		adj, err := h.s.nri.CreateContainer(ctx, h.pod, ctr)
		if err != nil {
			return err
		}
		if adj == nil {
			return nil
		}
		if err := nri.AdjustSpec(&spec, adj, h.s.cdi.Injector(ctx)); err != nil {
			return err
		}
		c.Spec, err = typeurl.MarshalAny(&spec)
		return err
	}
}

// Finish tells plugins the container was created, or, when creation
// failed after they were asked, that it is gone.
func (h *nriCreate) Finish(ctx context.Context, rec *containers.Container, retErr *error) {
	defer h.unblock()
	if h.asked == nil {
		return
	}
	if *retErr != nil {
		h.s.nri.UndoCreateContainer(context.WithoutCancel(ctx), h.pod, h.asked)
		return
	}
	if err := h.s.nri.PostCreateContainer(ctx, h.pod, h.s.nriContainer(ctx, h.m, rec, h.s.nri.Active())); err != nil {
		logging.G(ctx).Warn("NRI PostCreateContainer", "container", h.m.ID, "error", err)
	}
}

// nriStartContainer tells plugins a container is about to start; their
// failure fails the start.
func (s *Server) nriStartContainer(ctx context.Context, m *store.Container, rec containers.Container) error {
	if s.nri == nil {
		return nil
	}
	defer s.nri.BlockSync()()
	full := s.nri.Active()
	return s.nri.StartContainer(ctx, s.nriSandbox(ctx, m.SandboxID, full), s.nriContainer(ctx, m, &rec, full))
}

// nriPostStartContainer tells plugins a container started.
func (s *Server) nriPostStartContainer(ctx context.Context, m *store.Container, rec containers.Container) {
	if s.nri == nil {
		return
	}
	defer s.nri.BlockSync()()
	full := s.nri.Active()
	if err := s.nri.PostStartContainer(ctx, s.nriSandbox(ctx, m.SandboxID, full), s.nriContainer(ctx, m, &rec, full)); err != nil {
		logging.G(ctx).Warn("NRI PostStartContainer", "container", m.ID, "error", err)
	}
}

// nriStopContainer tells plugins a container stopped (once, however
// many ways it is told).
func (s *Server) nriStopContainer(ctx context.Context, id string) {
	s.nriContainerEvent(ctx, id, "StopContainer", func(n *nri.API) func(context.Context, *nri.Pod, *nri.Container) error { return n.StopContainer })
}

// nriContainerExited tells plugins, in the background, of a container
// that exited by itself.
func (s *Server) nriContainerExited(ctx context.Context, id string) {
	if s.nri == nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	s.nri.ContainerExited(ctx, func() (*nri.Pod, *nri.Container) {
		m, rec, err := s.store.Container(ctx, id)
		if err != nil {
			return &nri.Pod{}, &nri.Container{ID: id}
		}
		full := s.nri.Active()
		return s.nriSandbox(ctx, m.SandboxID, full), s.nriContainer(ctx, m, &rec, full)
	})
}

// nriRemoveContainer tells plugins a container is about to be removed.
func (s *Server) nriRemoveContainer(ctx context.Context, id string) {
	s.nriContainerEvent(ctx, id, "RemoveContainer", func(n *nri.API) func(context.Context, *nri.Pod, *nri.Container) error { return n.RemoveContainer })
}

// nriContainerEvent tells plugins of an event of a recorded container,
// holding off a plugin's synchronisation meanwhile; a plugin's error is
// logged, the event having happened anyway.
func (s *Server) nriContainerEvent(ctx context.Context, id, event string, tell func(*nri.API) func(context.Context, *nri.Pod, *nri.Container) error) {
	if s.nri == nil {
		return
	}
	defer s.nri.BlockSync()()
	m, rec, err := s.store.Container(ctx, id)
	if err != nil {
		return
	}
	full := s.nri.Active()
	if err := tell(s.nri)(ctx, s.nriSandbox(ctx, m.SandboxID, full), s.nriContainer(ctx, m, &rec, full)); err != nil {
		logging.G(ctx).Warn("NRI "+event, "container", id, "error", err)
	}
}

// nriUpdateContainer asks plugins about new resources for a container
// and returns those to apply; their failure fails the update.
func (s *Server) nriUpdateContainer(ctx context.Context, id string, r *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error) {
	if s.nri == nil {
		return r, nil
	}
	defer s.nri.BlockSync()()
	m, rec, err := s.store.Container(ctx, id)
	if err != nil {
		return nil, err
	}
	full := s.nri.Active()
	got, err := s.nri.UpdateContainer(ctx, s.nriSandbox(ctx, m.SandboxID, full), s.nriContainer(ctx, m, &rec, full), r)
	if err != nil {
		return nil, err
	}
	if got == nil {
		return r, nil
	}
	// What plugins leave unset stays as asked (NRI carries no swap
	// or OOM score in an update).
	if got.OomScoreAdj == 0 {
		got.OomScoreAdj = r.GetOomScoreAdj()
	}
	return got, nil
}

// nriPostUpdateContainer tells plugins a container's resources changed.
func (s *Server) nriPostUpdateContainer(ctx context.Context, id string) {
	s.nriContainerEvent(ctx, id, "PostUpdateContainer", func(n *nri.API) func(context.Context, *nri.Pod, *nri.Container) error { return n.PostUpdateContainer })
}

// nriRuntime is the server as NRI plugins reach it.
type nriRuntime struct{ s *Server }

// NRIRuntime is what NRI needs of the server (nri.New's Runtime).
func (s *Server) NRIRuntime() nri.Runtime { return nriRuntime{s} }

func (r nriRuntime) Pods(ctx context.Context) ([]*nri.Pod, error) {
	ctx = withNamespace(ctx)
	recs, err := r.s.store.List(ctx, store.KindSandbox)
	if err != nil {
		return nil, err
	}
	var out []*nri.Pod
	for i := range recs {
		if r.s.pods.IsStarting(recs[i].ID) {
			continue
		}
		m, err := store.DecodeSandbox(recs[i])
		if err != nil {
			continue
		}
		if ok, _ := r.s.pods.Ready(ctx, m.ID); ok {
			out = append(out, r.s.nriPod(ctx, m, &recs[i], true))
		}
	}
	return out, nil
}

func (r nriRuntime) Containers(ctx context.Context) ([]*nri.Container, error) {
	ctx = withNamespace(ctx)
	recs, err := r.s.store.List(ctx, store.KindContainer)
	if err != nil {
		return nil, err
	}
	var out []*nri.Container
	for i := range recs {
		m, err := store.DecodeContainer(recs[i])
		if err != nil || r.s.pods.IsStarting(m.SandboxID) {
			continue
		}
		state, _, _ := r.s.containers.State(ctx, m)
		if state != runtime.ContainerState_CONTAINER_CREATED && state != runtime.ContainerState_CONTAINER_RUNNING {
			continue
		}
		c := r.s.nriContainer(ctx, m, &recs[i], true)
		c.State = nriState(state)
		out = append(out, c)
	}
	return out, nil
}

// UpdateContainer applies a plugin's resources. The container's lock may
// be held by a lifecycle call waiting for NRI, so the update waits for it
// only so long, then fails rather than deadlock.
func (r nriRuntime) UpdateContainer(ctx context.Context, id string, res *runtime.LinuxContainerResources) error {
	ctx = withNamespace(ctx)
	if res == nil {
		return nil
	}
	unlock, ok := r.s.store.TryLock(id, 5*time.Second)
	if !ok {
		return fmt.Errorf("container %s is busy in a lifecycle call: %w", id, errdefs.ErrUnavailable)
	}
	unlock()
	return r.s.containers.UpdateResources(ctx, id, res)
}

// EvictContainer stops a container at once, as a plugin asks.
func (r nriRuntime) EvictContainer(ctx context.Context, id string) error {
	ctx = withNamespace(ctx)
	unlock, ok := r.s.store.TryLock(id, 5*time.Second)
	if !ok {
		return fmt.Errorf("container %s is busy in a lifecycle call: %w", id, errdefs.ErrUnavailable)
	}
	unlock()
	return r.s.containers.Stop(ctx, id, 0)
}
