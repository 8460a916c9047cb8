// Package server is the Kubernetes CRI v1 (runtime.v1.ImageService and
// runtime.v1.RuntimeService) served by the cri process. Like containerd's CRI
// plugin it is a smart client: images, content, snapshots and leases live in
// the other services, reached on their own sockets with the containerd Go
// client in the "k8s.io" namespace. What this package keeps in memory is
// derived from those records and rebuilt on demand, so a restart of the
// process loses nothing.
//
// The work is its packages': image (ImageService), sandbox (the pods'
// lifecycle), container (the containers'), streaming, stats, nri. This
// one ties them together: the CRI methods as thin calls, NRI's glue,
// container events, list streams, Version and Status, stats and metrics,
// the Sandbox API (containerd's sandbox store and controller).
package server

import (
	"context"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/container"
	"github.com/flotilla-project/flotilla/services/cri/container/imagevolume"
	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/container/watch"
	"github.com/flotilla-project/flotilla/services/cri/image"
	"github.com/flotilla-project/flotilla/services/cri/network"
	"github.com/flotilla-project/flotilla/services/cri/nri"
	"github.com/flotilla-project/flotilla/services/cri/runtimes"
	"github.com/flotilla-project/flotilla/services/cri/sandbox"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/streaming"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// Namespace is the containerd namespace every CRI object lives in.
const Namespace = store.Namespace

// Config is the service's configuration (its options in flotillad's config).
type Config struct {
	// Snapshotter unpacks pulled images (default "overlayfs").
	Snapshotter string
	// InsecureRegistries are registry hosts ("host" or "host:port") pulled
	// from over plain HTTP, or HTTPS without certificate verification.
	InsecureRegistries []string
	// ConfigPath is a directory of containerd-format registry host
	// configurations (<ConfigPath>/<host>/hosts.toml); empty means none.
	ConfigPath string
	// ImageFSPath is reported as the mount point of the image filesystem.
	ImageFSPath string
	// DiscardUnpackedLayers: see image.Config.
	DiscardUnpackedLayers bool
	// CNIConfDir is where a CNI network configuration makes the network
	// ready (default /etc/cni/net.d).
	CNIConfDir string
	// SandboxImage runs every pod's sandbox (pause) container (default
	// registry.k8s.io/pause:3.10); pulled when missing.
	SandboxImage string
	// CNIBinDirs are searched for CNI plugins (default /opt/cni/bin and
	// Debian's /usr/lib/cni).
	CNIBinDirs []string
	// StateDir holds what lives as long as the machine runs: network
	// namespaces (netns/), per-sandbox files (sandboxes/), stdio FIFOs
	// (io/) and libcni's cache (cni/).
	StateDir string
	// RestrictOOMScoreAdj clamps a requested oom_score_adj to the
	// daemon's own, as containerd's restrict_oom_score_adj; it is on
	// anyway when the process lacks CAP_SYS_RESOURCE.
	RestrictOOMScoreAdj bool
	// Runtimes are the runtime handlers pods may ask for (see
	// package runtimes); nil: runc alone, as the default.
	Runtimes *RuntimeHandlers
	// EnableCDI lets containers ask for CDI devices, defined by the spec
	// files in CDISpecDirs (see spec.CDI).
	EnableCDI   bool
	CDISpecDirs []string
}

// Server implements runtime.v1.ImageService and runtime.v1.RuntimeService.
type Server struct {
	runtime.UnimplementedImageServiceServer
	runtime.UnimplementedRuntimeServiceServer

	client *containerd.Client
	// daemon reaches the services of the daemon as a whole, which the
	// gateway owns: events and the version.
	daemon grpc.ClientConnInterface
	cfg    Config

	// images resolves, pulls and lists the CRI images; see package
	// image.
	images *image.Service
	// pods runs the pods' lifecycle, containers the containers'; see
	// packages sandbox and container.
	pods       *sandbox.Service
	containers *container.Service
	// imageVolumes mounts the containers' image volumes; see package
	// imagevolume.
	imageVolumes *imagevolume.Volumes
	// tasks prepares root filesystems and creates the tasks of
	// sandboxes and containers; see package task.
	tasks *task.Service

	// store holds the sandbox and container records; exits the exit
	// watchers and log writers of running containers (package watch).
	store *store.Store
	exits *watch.Watchers
	// bg bounds the background work (exit watchers, the image index's
	// subscription, the streaming server) and carries the process's
	// logger; stop ends it when the process stops.
	bg   context.Context
	stop context.CancelFunc

	// streams is the streaming server (Exec, Attach, PortForward) and
	// the containers' attach points; see package streaming.
	streams *streaming.Server

	// cni adds pods to their network; see package network.
	cni *network.CNI

	cdi *spec.CDI
	// nri relays the pod and container lifecycle to NRI plugins (nil:
	// NRI is off); see nri.go.
	nri *nri.API
}

// The runtime handlers are package runtimes'; these are their names for
// the service's configuration.
const (
	DefaultRuntimeName = runtimes.DefaultName
	RuncRuntimeType    = runtimes.RuncType
)

type (
	RuntimeConfig   = runtimes.Config
	RuntimeHandlers = runtimes.Handlers
)

// NewRuntimeHandlers: see runtimes.New.
func NewRuntimeHandlers(def string, cfgs map[string]RuntimeConfig) (*RuntimeHandlers, error) {
	return runtimes.New(def, cfgs)
}

// Transferrer runs image transfers: the transfer engine
// (pkg/imagetransfer) over the graph's stores.
type Transferrer = image.Transferrer

// New builds the server over a containerd client of the other services, a
// connection to the gateway's own (daemon: events, the version) and the
// transfer engine its pulls run on. Its background work (exit watchers, the image index's subscription, the
// streaming server) logs through ctx.
func New(ctx context.Context, client *containerd.Client, daemon grpc.ClientConnInterface, transfers Transferrer, cfg Config) *Server {
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	if cfg.CNIConfDir == "" {
		cfg.CNIConfDir = "/etc/cni/net.d"
	}
	cfg = withPodDefaults(cfg)
	if cfg.Runtimes == nil {
		cfg.Runtimes, _ = NewRuntimeHandlers("", nil) // the default cannot fail
	}
	s := &Server{
		client: client,
		daemon: daemon,
		cfg:    cfg,
		images: image.New(client, daemon, transfers, image.Config{
			Snapshotter:           cfg.Snapshotter,
			InsecureRegistries:    cfg.InsecureRegistries,
			ConfigPath:            cfg.ConfigPath,
			ImageFSPath:           cfg.ImageFSPath,
			DiscardUnpackedLayers: cfg.DiscardUnpackedLayers,
		}),
		tasks: task.New(client, cfg.Snapshotter, filepath.Join(cfg.StateDir, "idmap")),
		store: store.New(client.ContainerService()),
		cni:   network.NewCNI(cfg.CNIConfDir, cfg.CNIBinDirs, filepath.Join(cfg.StateDir, "cni")),
		cdi:   spec.NewCDI(cfg.EnableCDI, cfg.CDISpecDirs),
	}
	s.bg, s.stop = context.WithCancel(namespaces.WithNamespace(context.WithoutCancel(ctx), Namespace))
	s.exits = watch.New(s.bg, client, exitHooks{s})
	s.imageVolumes = imagevolume.New(client, s.images, cfg.Snapshotter, filepath.Join(cfg.StateDir, "image-volumes"))
	s.streams = streaming.New(client, streamContainers{s}, streaming.Config{Namespace: Namespace, FIFODir: s.fifoDir()})
	s.containers = container.New(container.Config{
		Client: client, Store: s.store, Tasks: s.tasks, Images: s.images, ImageVolumes: s.imageVolumes,
		CDI: s.cdi, Runtimes: cfg.Runtimes, Exits: s.exits,
		Pods: containerPods{s}, Hooks: containerHooks{s},
		Background: s.bg, FIFODir: s.fifoDir(), RestrictOOMScoreAdj: cfg.RestrictOOMScoreAdj,
	})
	s.pods = sandbox.New(sandbox.Config{
		Client: client, Store: s.store, Tasks: s.tasks, Images: s.images, CNI: s.cni, Runtimes: cfg.Runtimes,
		Containers: s.containers, Hooks: podHooks{s},
		StateDir: cfg.StateDir, SandboxImage: cfg.SandboxImage, RestrictOOMScoreAdj: cfg.RestrictOOMScoreAdj,
	})
	return s
}

// Register adds both CRI services to s.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	runtime.RegisterImageServiceServer(r, s)
	runtime.RegisterRuntimeServiceServer(r, s)
}

// withNamespace puts every call in the CRI namespace, whatever namespace
// header the caller sent.
func withNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, Namespace)
}
