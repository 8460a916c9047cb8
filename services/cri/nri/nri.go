// Package nri is the cri service's side of the Node Resource Interface
// (github.com/containerd/nri): plugins connect to its socket (or are
// started from its plugin directory), are told of every pod and container
// lifecycle step, adjust containers as they are created, and update or
// evict containers. It does what containerd's internal/nri and its CRI
// adaptation do, kept apart from the CRI server: the server describes its
// pods and containers as Pod and Container and answers Runtime.
//
// A nil *API is NRI disabled: every method is then a no-op.
package nri

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/version"
)

// Config is how NRI runs.
type Config struct {
	// SocketPath is where external plugins connect; empty: none can.
	SocketPath string
	// PluginPath holds plugins started with the service (name
	// NN-name, NN their order).
	PluginPath string
	// PluginConfigPath holds configuration for those plugins.
	PluginConfigPath string
	// RegistrationTimeout bounds a plugin's registration, and
	// RequestTimeout each call to a plugin; zero: NRI's defaults.
	RegistrationTimeout time.Duration
	RequestTimeout      time.Duration
}

// Runtime is what NRI asks of the CRI server outside its lifecycle calls:
// what a connecting plugin is synchronised with, and the changes plugins
// ask for on their own. Its methods must not call back into the API.
type Runtime interface {
	// Pods are the ready pods; Containers those created or running.
	Pods(ctx context.Context) ([]*Pod, error)
	Containers(ctx context.Context) ([]*Container, error)
	// UpdateContainer applies resources to a container.
	UpdateContainer(ctx context.Context, id string, r *runtime.LinuxContainerResources) error
	// EvictContainer stops a container at once.
	EvictContainer(ctx context.Context, id string) error
}

// state is how far NRI has seen an object go, so that each plugin hears of
// a stop or a removal once (containerd keeps the same).
type state int

const (
	created state = iota + 1
	running
	stopped
)

// API relays the CRI server's pod and container lifecycle to NRI plugins.
type API struct {
	nri *adaptation.Adaptation
	rt  Runtime
	// plugins is the number of plugins synchronised: with none, a
	// lifecycle call need not describe its objects (Active).
	plugins atomic.Int32

	// mu serialises what plugins see, as one event stream.
	mu    sync.Mutex
	state map[string]state
}

// New builds the NRI adaptation; it listens once Start is called.
func New(cfg Config, rt Runtime) (*API, error) {
	a := &API{rt: rt, state: map[string]state{}}
	nrilog.Set(logger{})
	if cfg.RegistrationTimeout > 0 {
		adaptation.SetPluginRegistrationTimeout(cfg.RegistrationTimeout)
	}
	if cfg.RequestTimeout > 0 {
		adaptation.SetPluginRequestTimeout(cfg.RequestTimeout)
	}
	opts := []adaptation.Option{
		adaptation.WithPluginPath(cfg.PluginPath),
		adaptation.WithPluginConfigPath(cfg.PluginConfigPath),
		adaptation.WithMetrics(pluginCounter{a}),
	}
	if cfg.SocketPath != "" {
		opts = append(opts, adaptation.WithSocketPath(cfg.SocketPath))
	} else {
		opts = append(opts, adaptation.WithDisabledExternalConnections())
	}
	var err error
	a.nri, err = adaptation.New("flotilla", version.Version, a.synchronize, a.updateFromPlugin, opts...)
	if err != nil {
		return nil, fmt.Errorf("create NRI adaptation: %w", err)
	}
	return a, nil
}

// Start starts the pre-installed plugins and listens for others.
func (a *API) Start() error {
	if a == nil {
		return nil
	}
	if err := a.nri.Start(); err != nil {
		return fmt.Errorf("start NRI: %w", err)
	}
	return nil
}

// Stop disconnects the plugins and stops listening.
func (a *API) Stop() {
	if a == nil {
		return
	}
	a.nri.Stop()
}

// Seed records the state of objects that existed before this process
// started, so that their stop and removal reach the plugins; what a
// lifecycle call recorded meanwhile is kept.
func (a *API) Seed(pods []string, ctrs map[string]api.ContainerState) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range pods {
		if _, ok := a.state[id]; !ok {
			a.state[id] = running
		}
	}
	for id, st := range ctrs {
		if _, ok := a.state[id]; !ok {
			a.setContainerState(id, st)
		}
	}
}

// Active says whether any plugin listens: without one, callers may pass
// objects with their IDs only.
func (a *API) Active() bool {
	return a != nil && a.plugins.Load() > 0
}

// BlockSync holds off the synchronisation of a connecting plugin until the
// returned function is called, so that a plugin sees an object either in
// its synchronisation or in the lifecycle call that makes it.
func (a *API) BlockSync() func() {
	if a == nil {
		return func() {}
	}
	return a.nri.BlockPluginSync().Unblock
}

// RunPodSandbox tells plugins of a pod that runs. When one fails it, the
// others hear the pod stop and go, and the caller undoes the pod.
func (a *API) RunPodSandbox(ctx context.Context, pod *Pod) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := pod.toNRI()
	err := a.nri.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: p})
	a.state[pod.ID] = running
	if err != nil {
		a.stopPod(ctx, p)
		a.removePod(ctx, p)
		return fmt.Errorf("NRI RunPodSandbox: %w", err)
	}
	return nil
}

// StopPodSandbox tells plugins of a pod stopped, once.
func (a *API) StopPodSandbox(ctx context.Context, pod *Pod) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopPod(ctx, pod.toNRI())
}

func (a *API) stopPod(ctx context.Context, p *api.PodSandbox) error {
	if s := a.state[p.Id]; s != created && s != running {
		return nil
	}
	err := a.nri.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: p})
	a.state[p.Id] = stopped
	return err
}

// RemovePodSandbox tells plugins of a pod removed, once.
func (a *API) RemovePodSandbox(ctx context.Context, pod *Pod) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.removePod(ctx, pod.toNRI())
}

func (a *API) removePod(ctx context.Context, p *api.PodSandbox) error {
	if _, ok := a.state[p.Id]; !ok {
		return nil
	}
	err := a.nri.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: p})
	delete(a.state, p.Id)
	return err
}

// CreateContainer asks plugins how to adjust a container about to be
// created (ctr.Spec is its spec so far); updates and evictions of other
// containers they ask for are applied before it returns.
func (a *API) CreateContainer(ctx context.Context, pod *Pod, ctr *Container) (*api.ContainerAdjustment, error) {
	if a == nil {
		return nil, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	resp, err := a.nri.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod.toNRI(), Container: ctr.toNRI()})
	a.state[ctr.ID] = created
	if err != nil {
		return nil, fmt.Errorf("NRI CreateContainer: %w", err)
	}
	// As containerd: what a plugin asks of other containers is done as
	// far as it goes; a failure there does not fail this container.
	if err := a.evict(ctx, resp.GetEvict()); err != nil {
		logging.G(ctx).Warn("NRI eviction before create", "error", err)
	}
	if _, err := a.apply(ctx, resp.GetUpdate()); err != nil {
		logging.G(ctx).Warn("NRI update before create", "error", err)
	}
	return resp.GetAdjust(), nil
}

// UndoCreateContainer tells plugins a container whose CreateContainer
// they saw was not created after all.
func (a *API) UndoCreateContainer(ctx context.Context, pod *Pod, ctr *Container) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, c := pod.toNRI(), ctr.toNRI()
	if err := a.stopContainer(ctx, p, c); err != nil {
		logging.G(ctx).Warn("NRI undo create (stop)", "container", ctr.ID, "error", err)
	}
	if err := a.removeContainer(ctx, p, c); err != nil {
		logging.G(ctx).Warn("NRI undo create (remove)", "container", ctr.ID, "error", err)
	}
}

// PostCreateContainer tells plugins a container was created.
func (a *API) PostCreateContainer(ctx context.Context, pod *Pod, ctr *Container) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nri.PostCreateContainer(ctx, &api.PostCreateContainerRequest{Pod: pod.toNRI(), Container: ctr.toNRI()})
}

// StartContainer tells plugins a container is about to start; a plugin's
// failure fails the start.
func (a *API) StartContainer(ctx context.Context, pod *Pod, ctr *Container) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.nri.StartContainer(ctx, &api.StartContainerRequest{Pod: pod.toNRI(), Container: ctr.toNRI()})
	a.state[ctr.ID] = running
	if err != nil {
		return fmt.Errorf("NRI StartContainer: %w", err)
	}
	return nil
}

// PostStartContainer tells plugins a container started.
func (a *API) PostStartContainer(ctx context.Context, pod *Pod, ctr *Container) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nri.PostStartContainer(ctx, &api.PostStartContainerRequest{Pod: pod.toNRI(), Container: ctr.toNRI()})
}

// UpdateContainer asks plugins about new resources for a container; it
// returns the resources to apply instead (nil: req as asked).
func (a *API) UpdateContainer(ctx context.Context, pod *Pod, ctr *Container, req *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error) {
	if a == nil {
		return nil, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	resp, err := a.nri.UpdateContainer(ctx, &api.UpdateContainerRequest{
		Pod: pod.toNRI(), Container: ctr.toNRI(), LinuxResources: fromCRIResources(req),
	})
	if err != nil {
		return nil, fmt.Errorf("NRI UpdateContainer: %w", err)
	}
	if err := a.evict(ctx, resp.GetEvict()); err != nil {
		logging.G(ctx).Warn("NRI eviction before update", "error", err)
	}
	// The last update is the one for this container (NRI puts it
	// there); the others are for other containers.
	updates := resp.GetUpdate()
	if len(updates) == 0 {
		return nil, nil
	}
	if _, err := a.apply(ctx, updates[:len(updates)-1]); err != nil {
		logging.G(ctx).Warn("NRI update of other containers", "error", err)
	}
	return toCRIResources(updates[len(updates)-1].GetLinux().GetResources()), nil
}

// PostUpdateContainer tells plugins a container's resources changed.
func (a *API) PostUpdateContainer(ctx context.Context, pod *Pod, ctr *Container) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nri.PostUpdateContainer(ctx, &api.PostUpdateContainerRequest{Pod: pod.toNRI(), Container: ctr.toNRI()})
}

// UpdatePodSandbox tells plugins of a pod's new resources (an in-place
// resize) before they are recorded; a plugin's error fails the resize.
func (a *API) UpdatePodSandbox(ctx context.Context, pod *Pod, overhead, resources *runtime.LinuxContainerResources) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err := a.nri.UpdatePodSandbox(ctx, &api.UpdatePodSandboxRequest{
		Pod:                    pod.toNRI(),
		OverheadLinuxResources: fromCRIResources(overhead),
		LinuxResources:         fromCRIResources(resources),
	})
	return err
}

// PostUpdatePodSandbox tells plugins a pod's resources changed.
func (a *API) PostUpdatePodSandbox(ctx context.Context, pod *Pod) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nri.PostUpdatePodSandbox(ctx, &api.PostUpdatePodSandboxRequest{Pod: pod.toNRI()})
}

// StopContainer tells plugins a container stopped, once.
func (a *API) StopContainer(ctx context.Context, pod *Pod, ctr *Container) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopContainer(ctx, pod.toNRI(), ctr.toNRI())
}

// ContainerExited tells plugins of a container that exited on its own,
// in the background: the exit handler must not wait on plugins.
func (a *API) ContainerExited(ctx context.Context, describe func() (*Pod, *Container)) {
	if a == nil {
		return
	}
	go func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		pod, ctr := describe()
		if s := a.state[ctr.ID]; s != created && s != running {
			return
		}
		if err := a.stopContainer(ctx, pod.toNRI(), ctr.toNRI()); err != nil {
			logging.G(ctx).Warn("NRI stop of exited container", "container", ctr.ID, "error", err)
		}
	}()
}

func (a *API) stopContainer(ctx context.Context, p *api.PodSandbox, c *api.Container) error {
	if s := a.state[c.Id]; s != created && s != running {
		return nil
	}
	resp, err := a.nri.StopContainer(ctx, &api.StopContainerRequest{Pod: p, Container: c})
	a.state[c.Id] = stopped
	if err != nil {
		return err
	}
	if _, err := a.apply(ctx, resp.GetUpdate()); err != nil {
		logging.G(ctx).Warn("NRI update after stop", "error", err)
	}
	return nil
}

// RemoveContainer tells plugins a container is removed (stopped first if
// they have not heard so), once.
func (a *API) RemoveContainer(ctx context.Context, pod *Pod, ctr *Container) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.removeContainer(ctx, pod.toNRI(), ctr.toNRI())
}

func (a *API) removeContainer(ctx context.Context, p *api.PodSandbox, c *api.Container) error {
	if _, ok := a.state[c.Id]; !ok {
		return nil
	}
	if err := a.stopContainer(ctx, p, c); err != nil {
		logging.G(ctx).Warn("NRI stop before remove", "container", c.Id, "error", err)
	}
	err := a.nri.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: p, Container: c})
	delete(a.state, c.Id)
	return err
}

// synchronize gives a connecting plugin the pods and containers there
// are, and applies the updates it answers with.
func (a *API) synchronize(ctx context.Context, sync adaptation.SyncCB) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	pods, err := a.rt.Pods(ctx)
	if err != nil {
		return fmt.Errorf("list pods for NRI: %w", err)
	}
	ctrs, err := a.rt.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers for NRI: %w", err)
	}
	np := make([]*api.PodSandbox, 0, len(pods))
	for _, p := range pods {
		np = append(np, p.toNRI())
		if _, ok := a.state[p.ID]; !ok {
			a.state[p.ID] = running
		}
	}
	nc := make([]*api.Container, 0, len(ctrs))
	for _, c := range ctrs {
		n := c.toNRI()
		nc = append(nc, n)
		a.setContainerState(c.ID, n.State)
	}
	updates, err := sync(ctx, np, nc)
	if err != nil {
		return err
	}
	if _, err := a.apply(ctx, updates); err != nil {
		logging.G(ctx).Warn("NRI update after synchronisation", "error", err)
	}
	return nil
}

func (a *API) setContainerState(id string, st api.ContainerState) {
	switch st {
	case api.ContainerState_CONTAINER_CREATED:
		a.state[id] = created
	case api.ContainerState_CONTAINER_RUNNING, api.ContainerState_CONTAINER_PAUSED:
		a.state[id] = running
	case api.ContainerState_CONTAINER_STOPPED:
		a.state[id] = stopped
	}
}

// updateFromPlugin applies the updates a plugin asks for on its own.
func (a *API) updateFromPlugin(ctx context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.apply(ctx, updates)
}

// apply applies container updates; it returns those that failed and were
// not marked IgnoreFailure.
func (a *API) apply(ctx context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	var failed []*api.ContainerUpdate
	for _, u := range updates {
		err := a.rt.UpdateContainer(ctx, u.GetContainerId(), toCRIResources(u.GetLinux().GetResources()))
		if err != nil {
			logging.G(ctx).Warn("NRI container update", "container", u.GetContainerId(), "error", err)
			if !u.GetIgnoreFailure() {
				failed = append(failed, u)
			}
		}
	}
	if len(failed) > 0 {
		return failed, fmt.Errorf("NRI update of %d container(s) failed", len(failed))
	}
	return nil, nil
}

func (a *API) evict(ctx context.Context, evictions []*api.ContainerEviction) error {
	var n int
	for _, e := range evictions {
		logging.G(ctx).Info("NRI evicts container", "container", e.GetContainerId(), "reason", e.GetReason())
		if err := a.rt.EvictContainer(ctx, e.GetContainerId()); err != nil {
			logging.G(ctx).Warn("NRI eviction", "container", e.GetContainerId(), "error", err)
			n++
		}
	}
	if n > 0 {
		return fmt.Errorf("NRI eviction of %d container(s) failed", n)
	}
	return nil
}

// pluginCounter keeps the API's plugin count; NRI's metrics hooks are
// where it reports it.
type pluginCounter struct{ a *API }

func (c pluginCounter) RecordPluginInvocation(string, string, error)      {}
func (c pluginCounter) RecordPluginLatency(string, string, time.Duration) {}
func (c pluginCounter) UpdatePluginCount(n int)                           { c.a.plugins.Store(int32(n)) }
func (c pluginCounter) RecordPluginAdjustments(string, string, *api.ContainerAdjustment, int, int) {
}

// logger sends NRI's log lines to the process's logger.
type logger struct{}

func (logger) Debugf(ctx context.Context, f string, args ...any) { logf(ctx, slog.LevelDebug, f, args) }
func (logger) Infof(ctx context.Context, f string, args ...any)  { logf(ctx, slog.LevelInfo, f, args) }
func (logger) Warnf(ctx context.Context, f string, args ...any)  { logf(ctx, slog.LevelWarn, f, args) }
func (logger) Errorf(ctx context.Context, f string, args ...any) { logf(ctx, slog.LevelError, f, args) }

func logf(ctx context.Context, level slog.Level, f string, args []any) {
	if ctx == nil {
		ctx = context.Background()
	}
	logging.G(ctx).Log(ctx, level, "nri: "+fmt.Sprintf(f, args...))
}
