// Package container is the CRI's container lifecycle, as containerd's CRI
// runs it: CreateContainer (the record, its image volumes, CDI devices
// and OCI spec, NRI's adjustment), StartContainer (its task, log and exit
// watcher), StopContainer, RemoveContainer, ContainerStatus and
// ListContainers, ExecSync, UpdateContainerResources and
// ReopenContainerLog, and Recover after a restart. What it needs of the
// pods (package sandbox) and of NRI and the streaming server comes
// through Pods and Hooks, which the CRI server provides.
package container

import (
	"context"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/container/imagevolume"
	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/container/watch"
	"github.com/flotilla-project/flotilla/services/cri/image"
	"github.com/flotilla-project/flotilla/services/cri/runtimes"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/streaming"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// Pods are the pods containers are created in.
type Pods interface {
	// CreatedSandbox is the pod's record, from this process's cache
	// when it just ran the pod.
	CreatedSandbox(ctx context.Context, id string) (*store.Sandbox, error)
	// SandboxReady says whether the pod's pause task runs, and its pid.
	SandboxReady(ctx context.Context, id string) (bool, uint32)
	// SandboxDir holds the pod's files; SandboxShm is its /dev/shm.
	SandboxDir(id string) string
	SandboxShm(sb *store.Sandbox) string
}

// CreateHook is NRI's part in one container's creation: Adjust is given
// to NewContainer last but for the record copy, Finish runs when
// CreateContainer returns.
type CreateHook interface {
	Adjust() containerd.NewContainerOpts
	Finish(ctx context.Context, rec *containers.Container, retErr *error)
}

// Hooks are NRI's hooks in the lifecycle, each at its place in
// containerd's order, and what the rest of the server keeps per container.
type Hooks interface {
	CreateHook(sb *store.Sandbox, m *store.Container) CreateHook
	// StartContainer's failure fails the start.
	StartContainer(ctx context.Context, m *store.Container, rec containers.Container) error
	PostStartContainer(ctx context.Context, m *store.Container, rec containers.Container)
	StopContainer(ctx context.Context, id string)
	RemoveContainer(ctx context.Context, id string)
	// UpdateContainer returns the resources to apply; its failure
	// fails the update.
	UpdateContainer(ctx context.Context, id string, r *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error)
	PostUpdateContainer(ctx context.Context, id string)

	// AttachPoint is where the container's output meets attached
	// clients.
	AttachPoint(m *store.Container) *streaming.AttachPoint
	// Forget drops all that is kept of a removed container.
	Forget(id string)
}

// Service runs the containers of the CRI's pods.
type Service struct {
	client       *containerd.Client
	store        *store.Store
	tasks        *task.Service
	images       *image.Service
	imageVolumes *imagevolume.Volumes
	cdi          *spec.CDI
	runtimes     *runtimes.Handlers
	exits        *watch.Watchers
	pods         Pods
	hooks        Hooks

	// bg bounds the exit watchers; fifoDir holds the containers' stdio
	// FIFOs.
	bg                  context.Context
	fifoDir             string
	restrictOOMScoreAdj bool
}

// Config is what a Service is made of.
type Config struct {
	Client       *containerd.Client
	Store        *store.Store
	Tasks        *task.Service
	Images       *image.Service
	ImageVolumes *imagevolume.Volumes
	CDI          *spec.CDI
	Runtimes     *runtimes.Handlers
	Exits        *watch.Watchers
	Pods         Pods
	Hooks        Hooks
	// Background bounds the exit watchers and carries the process's
	// logger.
	Background context.Context
	FIFODir    string
	// RestrictOOMScoreAdj: see spec.Request.
	RestrictOOMScoreAdj bool
}

// New is the containers' service.
func New(c Config) *Service {
	return &Service{
		client: c.Client, store: c.Store, tasks: c.Tasks, images: c.Images, imageVolumes: c.ImageVolumes,
		cdi: c.CDI, runtimes: c.Runtimes, exits: c.Exits, pods: c.Pods, hooks: c.Hooks,
		bg: c.Background, fifoDir: c.FIFODir, restrictOOMScoreAdj: c.RestrictOOMScoreAdj,
	}
}

// State is a container's state with its exit code and time (when
// exited), from its record and task; see containerState.
func (s *Service) State(ctx context.Context, m *store.Container) (runtime.ContainerState, int32, int64) {
	return s.containerState(ctx, m)
}

// Stop stops a container as StopContainer does, without telling NRI.
func (s *Service) Stop(ctx context.Context, id string, timeout time.Duration) error {
	return s.stopContainer(ctx, id, timeout)
}

// Remove removes a stopped container as RemoveContainer does, without
// telling NRI.
func (s *Service) Remove(ctx context.Context, id string) error {
	return s.removeContainer(ctx, id)
}

// RecordExit records how a container ended; see recordExit.
func (s *Service) RecordExit(ctx context.Context, id string, code int32, at time.Time, oom bool) {
	s.recordExit(ctx, id, code, at, oom)
}

// UpdateResources is UpdateContainerResources without NRI.
func (s *Service) UpdateResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error {
	return s.updateContainerResources(ctx, id, r)
}

// withNamespace puts every call in the CRI namespace, whatever namespace
// header the caller sent.
func withNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, store.Namespace)
}
