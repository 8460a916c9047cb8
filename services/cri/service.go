// Package cri is Flotilla's cri service: the Kubernetes CRI v1
// (runtime.v1.ImageService and runtime.v1.RuntimeService), which the
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

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/flotilla-project/flotilla/pkg/graphclient"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/cri/server"
)

// Options are the cri service's options, with their defaults from
// DefaultOptions.
type Options struct {
	SandboxImage           string   `toml:"sandbox_image" json:"sandbox_image" comment:"Image of every pod's sandbox (pause) container; pulled when missing."`
	Snapshotter            string   `toml:"snapshotter" json:"snapshotter" comment:"Snapshotter that unpacks images and holds containers' root filesystems."`
	MaxConcurrentDownloads int      `toml:"max_concurrent_downloads" json:"max_concurrent_downloads" comment:"Layers one pull fetches at once."`
	InsecureRegistries     []string `toml:"insecure_registries" json:"insecure_registries" comment:"Registries (host or host:port) pulled from over HTTPS without verifying certificates, then plain HTTP."`
	ImageFSPath            string   `toml:"image_fs_path" json:"image_fs_path" comment:"Filesystem ImageFsInfo reports to the kubelet; empty: the snapshotter's root."`
	RestrictOOMScoreAdj    bool     `toml:"restrict_oom_score_adj" json:"restrict_oom_score_adj" comment:"Clamp a container's oom_score_adj to this service's own (done anyway without CAP_SYS_RESOURCE)."`
	StreamServerAddress    string   `toml:"stream_server_address" json:"stream_server_address" comment:"Address the exec, attach and port-forward streaming server listens on."`
	StreamServerPort       string   `toml:"stream_server_port" json:"stream_server_port" comment:"Its port; \"0\" picks a free one."`
	RuncBinary             string   `toml:"runc_binary" json:"runc_binary" comment:"runc binary the runc shim runs pods with (its BinaryName option); empty: runc in the shim's PATH. User namespaces need runc 1.2 or later."`
	CNI                    CNI      `toml:"cni" json:"cni" comment:"Pods' networks (containerd's [plugins.'io.containerd.cri.v1.runtime'.cni])."`
	Registry               Registry `toml:"registry" json:"registry" comment:"Registry hosts (containerd's [plugins.'io.containerd.cri.v1.images'.registry])."`
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

// DefaultOptions are the options the cri service runs with unless told.
func DefaultOptions() *Options {
	return &Options{
		SandboxImage:           "registry.k8s.io/pause:3.10",
		Snapshotter:            "overlayfs",
		MaxConcurrentDownloads: 3,
		StreamServerAddress:    "127.0.0.1",
		StreamServerPort:       "0",
		CNI: CNI{
			BinDirs: []string{"/opt/cni/bin", "/usr/lib/cni"},
			ConfDir: "/etc/cni/net.d",
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
	srv := server.New(ctx, client, graph, server.Config{
		Snapshotter:            opts.Snapshotter,
		InsecureRegistries:     opts.InsecureRegistries,
		ConfigPath:             opts.Registry.ConfigPath,
		ImageFSPath:            opts.ImageFSPath,
		CNIConfDir:             opts.CNI.ConfDir,
		MaxConcurrentDownloads: opts.MaxConcurrentDownloads,
		SandboxImage:           opts.SandboxImage,
		CNIBinDirs:             opts.CNI.BinDirs,
		StateDir:               p.Env.State,
		RestrictOOMScoreAdj:    opts.RestrictOOMScoreAdj,
		RuncBinary:             opts.RuncBinary,
	})
	if err := srv.StartStreaming(opts.StreamServerAddress, opts.StreamServerPort); err != nil {
		srv.Close()
		graph.Close()
		return nil, err
	}
	// Pods and containers started before a restart get their exit
	// watchers and log writers back; it needs metadata and tasks, so
	// it runs beside serving rather than before it.
	go srv.Recover(context.WithoutCancel(ctx))
	// Image references resolve from a listing kept current by
	// image events; until the subscription is up, they list.
	go srv.WatchImages()
	return &service.Instance{
		Type:     "io.containerd.grpc.v1",
		Routes:   []string{"runtime.v1.ImageService", "runtime.v1.RuntimeService"},
		Requires: []string{"io.containerd.metadata.v1", "io.containerd.runtime.v2"},
		Exports:  map[string]string{"default_snapshotter": opts.Snapshotter, "namespace": server.Namespace},
		Register: srv.Register,
		Close: func(context.Context) error {
			srv.Close()
			return graph.Close()
		},
	}, nil
}
