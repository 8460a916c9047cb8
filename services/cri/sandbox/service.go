// Package sandbox is the CRI's pod sandbox lifecycle, as containerd's CRI
// runs it: RunPodSandbox (the pod's network namespace, inside its user
// namespace when it has one, set up by CNI; its directory of files its
// containers mount, hostname, hosts and resolv.conf; its shared /dev/shm;
// its pause container), StopPodSandbox, RemovePodSandbox,
// PodSandboxStatus, ListPodSandbox and UpdatePodSandboxResources (the
// pod's cgroup). What it needs of the pod's containers, of NRI and of the
// Sandbox Store comes through Containers and Hooks.
package sandbox

import (
	"context"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/image"
	"github.com/flotilla-project/flotilla/services/cri/network"
	"github.com/flotilla-project/flotilla/services/cri/runtimes"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// Containers are the pod's containers, which a pod's stop and removal
// stop and remove first.
type Containers interface {
	Stop(ctx context.Context, id string, timeout time.Duration) error
	Remove(ctx context.Context, id string) error
}

// Hooks are NRI's hooks in the pod's lifecycle and the pod's record in
// the Sandbox Store, each at its place in containerd's order, and what
// the rest of the server keeps per pod.
type Hooks interface {
	// RunPod's failure fails RunPodSandbox; it may end the pod's
	// hiding (Unhide).
	RunPod(ctx context.Context, m *store.Sandbox, rec containers.Container) error
	StopPod(ctx context.Context, m *store.Sandbox)
	// UpdatePod's failure fails UpdatePodSandboxResources before anything
	// is recorded; PostUpdatePod follows a resize done.
	UpdatePod(ctx context.Context, m *store.Sandbox, overhead, resources *runtime.LinuxContainerResources) error
	PostUpdatePod(ctx context.Context, m *store.Sandbox)
	RemovePod(ctx context.Context, m *store.Sandbox)

	CreatePodRecord(ctx context.Context, rec containers.Container) error
	RefreshPodRecord(ctx context.Context, id string) error
	DeletePodRecord(ctx context.Context, id string) error

	// Forget drops all that is kept of a removed pod.
	Forget(id string)
}

// Service runs the CRI's pod sandboxes.
type Service struct {
	client     *containerd.Client
	store      *store.Store
	tasks      *task.Service
	images     *image.Service
	cni        *network.CNI
	runtimes   *runtimes.Handlers
	containers Containers
	hooks      Hooks

	stateDir            string
	sandboxImage        string
	restrictOOMScoreAdj bool

	// starting holds the pods hidden until their RunPodSandbox returns.
	starting sync.Map
}

// Config is what a Service is made of.
type Config struct {
	Client     *containerd.Client
	Store      *store.Store
	Tasks      *task.Service
	Images     *image.Service
	CNI        *network.CNI
	Runtimes   *runtimes.Handlers
	Containers Containers
	Hooks      Hooks
	// StateDir holds the pods' network namespaces (netns/), files
	// (sandboxes/) and pinned user namespaces (userns/).
	StateDir string
	// SandboxImage runs every pod's pause container.
	SandboxImage string
	// RestrictOOMScoreAdj: see spec.SandboxRequest.
	RestrictOOMScoreAdj bool
}

// New is the pods' service.
func New(c Config) *Service {
	return &Service{
		client: c.Client, store: c.Store, tasks: c.Tasks, images: c.Images, cni: c.CNI, runtimes: c.Runtimes,
		containers: c.Containers, hooks: c.Hooks,
		stateDir: c.StateDir, sandboxImage: c.SandboxImage, restrictOOMScoreAdj: c.RestrictOOMScoreAdj,
	}
}

// Get is the sandbox record by ID or unique prefix; a pod still being
// run is not found yet.
func (s *Service) Get(ctx context.Context, id string) (*store.Sandbox, error) {
	return s.getSandbox(ctx, id)
}

// Created is Get answered from the record this process created when it
// has it.
func (s *Service) Created(ctx context.Context, id string) (*store.Sandbox, error) {
	return s.createdSandbox(ctx, id)
}

// Ready says whether the pod's pause task runs, and its pid.
func (s *Service) Ready(ctx context.Context, id string) (bool, uint32) {
	return s.sandboxReady(ctx, id)
}

// Dir holds the pod's files; Shm is its /dev/shm.
func (s *Service) Dir(id string) string         { return s.sandboxDir(id) }
func (s *Service) Shm(sb *store.Sandbox) string { return s.sandboxShm(sb) }

// IsStarting says whether the pod is still hidden, its RunPodSandbox
// under way.
func (s *Service) IsStarting(id string) bool { return s.isStarting(id) }

// Unhide ends a starting pod's hiding.
func (s *Service) Unhide(id string) { s.starting.Delete(id) }

// withNamespace puts every call in the CRI namespace, whatever namespace
// header the caller sent.
func withNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, store.Namespace)
}
