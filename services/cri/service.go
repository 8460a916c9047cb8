// Package cri is Flotilla's cri service: the Kubernetes CRI v1
// (runtime.v1.ImageService and runtime.v1.RuntimeService) and containerd's
// Sandbox Controller API for CRI pods (sandboxer "podsandbox"), which the
// gateway routes to it. It is a client of the other services on their own
// sockets — metadata, tasks, content, the snapshotter that applies layers —
// in the "k8s.io" namespace, as containerd's CRI plugin is a client of
// containerd; of the gateway it asks only what the gateway owns (events,
// the daemon's version).
//
// Its options ([services.cri.options], or --option key=value by hand) are
// Options; their names follow containerd 2.x's CRI plugins where it has the
// same setting (sandbox_image is containerd 1.x's name for 2.x's
// pinned_images.sandbox).
// Started by hand it is given the other services' sockets with --dep
// (metadata, tasks, content) and --snapshotter.
package cri

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/nri/pkg/adaptation"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/graphclient"
	"github.com/flotilla-project/flotilla/pkg/imagetransfer"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/cri/nri"
	"github.com/flotilla-project/flotilla/services/cri/server"
)

// Options are the cri service's options, with their defaults from
// DefaultOptions.
type Options struct {
	SandboxImage           string             `toml:"sandbox_image" json:"sandbox_image" comment:"Image of every pod's sandbox (pause) container; pulled when missing."`
	Snapshotter            string             `toml:"snapshotter" json:"snapshotter" comment:"Snapshotter that unpacks images and holds containers' root filesystems."`
	MaxConcurrentDownloads int                `toml:"max_concurrent_downloads" json:"max_concurrent_downloads" comment:"Blobs downloaded at once, across every pull."`
	MaxConcurrentUnpacks   int                `toml:"max_concurrent_unpacks" json:"max_concurrent_unpacks" comment:"Layers one pull unpacks at once on a snapshotter that can rebase a layer onto its parent at commit (overlayfs); 1 unpacks them in order."`
	InsecureRegistries     []string           `toml:"insecure_registries" json:"insecure_registries" comment:"Registries (host or host:port) pulled from over HTTPS without verifying certificates, then plain HTTP."`
	DiscardUnpackedLayers  bool               `toml:"discard_unpacked_layers" json:"discard_unpacked_layers" comment:"Let the collector remove a pulled layer's blob once it is unpacked (saves disk; the image can no longer be exported or pushed)."`
	ImageFSPath            string             `toml:"image_fs_path" json:"image_fs_path" comment:"Filesystem ImageFsInfo reports to the kubelet; empty: the snapshotter's root."`
	RestrictOOMScoreAdj    bool               `toml:"restrict_oom_score_adj" json:"restrict_oom_score_adj" comment:"Clamp a container's oom_score_adj to this service's own (done anyway without CAP_SYS_RESOURCE)."`
	StreamServerAddress    string             `toml:"stream_server_address" json:"stream_server_address" comment:"Address the exec, attach and port-forward streaming server listens on."`
	StreamServerPort       string             `toml:"stream_server_port" json:"stream_server_port" comment:"Its port; \"0\" picks a free one."`
	CNI                    CNI                `toml:"cni" json:"cni" comment:"Pods' networks (containerd's [plugins.'io.containerd.cri.v1.runtime'.cni])."`
	Registry               Registry           `toml:"registry" json:"registry" comment:"Registry hosts (containerd's [plugins.'io.containerd.cri.v1.images'.registry])."`
	DefaultRuntimeName     string             `toml:"default_runtime_name" json:"default_runtime_name" comment:"Runtime handler of pods that name none (RuntimeClass); one of runtimes."`
	Runtimes               map[string]Runtime `toml:"runtimes" json:"runtimes" comment:"Runtime handlers by name, as a RuntimeClass's handler names them (containerd's [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]); a pod's containers run on the pod's. Options of a handler go in [services.cri.options.runtimes.<name>.options]."`
	EnableCDI              bool               `toml:"enable_cdi" json:"enable_cdi" comment:"Let containers ask for Container Device Interface devices (CDIDevices, cdi.k8s.io/ annotations); off, asking for one fails."`
	CDISpecDirs            []string           `toml:"cdi_spec_dirs" json:"cdi_spec_dirs" comment:"Directories of CDI spec files, later ones taking precedence."`
	NRI                    NRI                `toml:"nri" json:"nri" comment:"Node Resource Interface plugins (containerd's [plugins.'io.containerd.nri.v1.nri'])."`
	// Gateway is flotillad's socket for a cri run by hand (flotillad
	// tells the one it starts, and the config has no say).
	Gateway string `toml:"-" json:"gateway"`
}

// CNI is where pods' network configuration and plugins are.
type CNI struct {
	BinDirs []string `toml:"bin_dirs" json:"bin_dirs" comment:"Directories searched for CNI plugins."`
	ConfDir string   `toml:"conf_dir" json:"conf_dir" comment:"Directory of CNI network configurations: the first by name is the pods' network; none: the network is not ready."`
}

// Registry configures how images are pulled.
type Registry struct {
	ConfigPath string `toml:"config_path" json:"config_path" comment:"Directory of containerd-format hosts.toml files (<config_path>/<host>/hosts.toml: mirrors, certificates); empty: none."`
}

// Runtime is a runtime handler: the shim its pods run on and how.
type Runtime struct {
	Type                 string         `toml:"runtime_type" json:"runtime_type" comment:"Runtime v2 shim type (io.containerd.runc.v2 runs containerd-shim-runc-v2), or a shim binary's path; empty: io.containerd.runc.v2."`
	Options              map[string]any `toml:"options,omitempty" json:"options,omitempty" comment:"The shim's options; for runc, containerd's runc options by name: BinaryName (another runc), Root, SystemdCgroup, NoPivotRoot..."`
	PodAnnotations       []string       `toml:"pod_annotations" json:"pod_annotations" comment:"Patterns of pod annotations passed into the OCI spec of the pod's sandbox and containers, for the runtime to read."`
	ContainerAnnotations []string       `toml:"container_annotations" json:"container_annotations" comment:"Patterns of container annotations passed into its OCI spec."`
}

// NRI is where NRI plugins connect, or are started from, and how long
// they may take; containerd's names and defaults.
type NRI struct {
	Disable                   bool   `toml:"disable" json:"disable" comment:"Turn NRI off: no socket, no plugins."`
	SocketPath                string `toml:"socket_path" json:"socket_path" comment:"Socket external NRI plugins connect to; empty: none can."`
	PluginPath                string `toml:"plugin_path" json:"plugin_path" comment:"Directory of NRI plugins started with the service (NN-name, run in NN order)."`
	PluginConfigPath          string `toml:"plugin_config_path" json:"plugin_config_path" comment:"Directory of those plugins' configuration."`
	PluginRegistrationTimeout string `toml:"plugin_registration_timeout" json:"plugin_registration_timeout" comment:"How long a plugin may take to register."`
	PluginRequestTimeout      string `toml:"plugin_request_timeout" json:"plugin_request_timeout" comment:"How long a plugin may take to answer one event."`
}

// DefaultOptions are the options the cri service runs with unless told.
func DefaultOptions() *Options {
	return &Options{
		SandboxImage:           "registry.k8s.io/pause:3.10",
		Snapshotter:            "overlayfs",
		MaxConcurrentDownloads: 3,
		MaxConcurrentUnpacks:   4,
		StreamServerAddress:    "127.0.0.1",
		StreamServerPort:       "0",
		CNI: CNI{
			BinDirs: []string{"/opt/cni/bin", "/usr/lib/cni"},
			ConfDir: "/etc/cni/net.d",
		},
		DefaultRuntimeName: server.DefaultRuntimeName,
		Runtimes: map[string]Runtime{
			server.DefaultRuntimeName: {Type: server.RuncRuntimeType},
		},
		EnableCDI:   true,
		CDISpecDirs: []string{"/etc/cdi", "/var/run/cdi"},
		NRI: NRI{
			SocketPath:                adaptation.DefaultSocketPath,
			PluginPath:                adaptation.DefaultPluginPath,
			PluginConfigPath:          adaptation.DefaultPluginConfigPath,
			PluginRegistrationTimeout: adaptation.DefaultPluginRegistrationTimeout.String(),
			PluginRequestTimeout:      adaptation.DefaultPluginRequestTimeout.String(),
		},
	}
}

// Aliases are the names the options had before they took containerd's.
func (*Options) Aliases() map[string]string {
	return map[string]string{
		"cni_conf_dir": "cni.conf_dir",
		"cni_bin_dirs": "cni.bin_dirs",
		"config_path":  "registry.config_path",
	}
}

// New builds the cri service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	opts := DefaultOptions()
	if err := p.DecodeOptions(ctx, opts); err != nil {
		return nil, err
	}
	if p.Env.Gateway == "" {
		p.Env.Gateway = opts.Gateway
	}
	for _, dep := range []string{"metadata", "tasks"} {
		if _, ok := p.Env.Deps[dep]; !ok {
			return nil, fmt.Errorf("cri calls %s on its socket: run it under flotillad or pass --dep %s=<socket>", dep, dep)
		}
	}
	if opts.Snapshotter == "" {
		opts.Snapshotter = "overlayfs"
	}
	if opts.ImageFSPath == "" {
		// flotillad gives each service <root>/<name>.
		opts.ImageFSPath = filepath.Join(filepath.Dir(p.Env.Root), service.SnapshotterProcess(opts.Snapshotter))
	}
	// No per-call deadline: unpacking a large layer is one Diff call
	// that can take minutes. Every CRI call but PullImage comes with
	// the kubelet's own deadline.
	o := p.GraphOptions()
	o.Timeout = 0
	graph, err := rpc.NewGraph(o)
	if err != nil {
		return nil, err
	}
	client, err := containerd.New("", containerd.WithDefaultNamespace(server.Namespace), containerd.WithServices(graphclient.Services(graph, p.Env.Snapshotters, opts.Snapshotter)...))
	if err != nil {
		graph.Close()
		return nil, err
	}
	runtimes := map[string]server.RuntimeConfig{}
	for name, r := range opts.Runtimes {
		runtimes[name] = server.RuntimeConfig{Type: r.Type, Options: r.Options, PodAnnotations: r.PodAnnotations, ContainerAnnotations: r.ContainerAnnotations}
	}
	handlers, err := server.NewRuntimeHandlers(opts.DefaultRuntimeName, runtimes)
	if err != nil {
		return nil, fmt.Errorf("options of service cri: %w", err)
	}
	// Pulls run here, on the transfer engine the transfer service runs
	// too: layers fetched in parallel and unpacked as they download.
	stores := imagetransfer.NewGraphStores(client, p.Env.Snapshotters)
	transfers := imagetransfer.New(stores.Stores(), imagetransfer.Config{
		MaxConcurrentDownloads: opts.MaxConcurrentDownloads,
		MaxConcurrentUnpacks:   opts.MaxConcurrentUnpacks,
		Snapshotter:            opts.Snapshotter,
	})
	srv := server.New(ctx, client, graph, transfers, server.Config{
		Snapshotter:           opts.Snapshotter,
		InsecureRegistries:    opts.InsecureRegistries,
		ConfigPath:            opts.Registry.ConfigPath,
		ImageFSPath:           opts.ImageFSPath,
		DiscardUnpackedLayers: opts.DiscardUnpackedLayers,
		CNIConfDir:            opts.CNI.ConfDir,
		SandboxImage:          opts.SandboxImage,
		CNIBinDirs:            opts.CNI.BinDirs,
		StateDir:              p.Env.State,
		RestrictOOMScoreAdj:   opts.RestrictOOMScoreAdj,
		Runtimes:              handlers,
		EnableCDI:             opts.EnableCDI,
		CDISpecDirs:           opts.CDISpecDirs,
	})
	if err := srv.StartStreaming(opts.StreamServerAddress, opts.StreamServerPort); err != nil {
		srv.Close()
		stores.Close()
		graph.Close()
		return nil, err
	}
	nriAPI, err := startNRI(ctx, opts.NRI, srv)
	if err != nil {
		srv.Close()
		graph.Close()
		return nil, err
	}
	// Pods and containers started before a restart get their exit
	// watchers and log writers back; it needs metadata and tasks, so
	// it runs beside serving rather than before it.
	go srv.Recover(context.WithoutCancel(ctx))
	// The Sandbox Store's records of pods are mended after a crash
	// between a pod's records (sandboxapi.go).
	go srv.RecoverSandboxes(context.WithoutCancel(ctx))
	// Image references resolve from a listing kept current by
	// image events; until the subscription is up, they list.
	go srv.WatchImages()
	return &service.Instance{
		Type:     "io.containerd.grpc.v1",
		Routes:   []string{"runtime.v1.ImageService", "runtime.v1.RuntimeService", "containerd.services.sandbox.v1.Controller"},
		Requires: []string{"io.containerd.metadata.v1", "io.containerd.runtime.v2"},
		Exports:  map[string]string{"default_snapshotter": opts.Snapshotter, "namespace": server.Namespace},
		Register: func(r grpc.ServiceRegistrar) {
			srv.Register(r)
			srv.RegisterSandboxController(r)
		},
		Close: func(context.Context) error {
			nriAPI.Stop()
			srv.Close()
			stores.Close()
			return graph.Close()
		},
	}, nil
}

// startNRI starts the NRI adaptation, unless disabled: plugins may
// connect from here on.
func startNRI(ctx context.Context, o NRI, srv *server.Server) (*nri.API, error) {
	if o.Disable {
		return nil, nil
	}
	cfg := nri.Config{SocketPath: o.SocketPath, PluginPath: o.PluginPath, PluginConfigPath: o.PluginConfigPath}
	var err error
	if cfg.RegistrationTimeout, err = optionalDuration("nri.plugin_registration_timeout", o.PluginRegistrationTimeout); err != nil {
		return nil, err
	}
	if cfg.RequestTimeout, err = optionalDuration("nri.plugin_request_timeout", o.PluginRequestTimeout); err != nil {
		return nil, err
	}
	a, err := nri.New(cfg, srv.NRIRuntime())
	if err != nil {
		return nil, err
	}
	srv.SetNRI(a)
	if err := a.Start(); err != nil {
		return nil, err
	}
	go srv.SeedNRI(context.WithoutCancel(ctx))
	return a, nil
}

func optionalDuration(name, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("option %s: %w", name, err)
	}
	return d, nil
}
