// Package cri is Flotilla's cri service: the Kubernetes CRI v1
// (runtime.v1.ImageService and runtime.v1.RuntimeService), which the
// gateway routes to it. It is a client of the other services through the
// gateway, in the "k8s.io" namespace, as containerd's CRI plugin is a client
// of containerd.
//
// Options: snapshotter (default "overlayfs"); insecure_registries, hosts
// pulled from over plain HTTP (after HTTPS without verification);
// config_path, a directory of containerd-format hosts.toml files
// (<config_path>/<host>/hosts.toml: mirrors, certificates); image_fs_path,
// the image filesystem ImageFsInfo reports (default the snapshotter's
// root beside this service's); cni_conf_dir (default /etc/cni/net.d);
// max_concurrent_downloads (default 3); sandbox_image (default
// registry.k8s.io/pause:3.10); cni_bin_dirs (default /opt/cni/bin and
// /usr/lib/cni); restrict_oom_score_adj; stream_server_address and
// stream_server_port, where the Exec/Attach/PortForward streaming server
// listens (default 127.0.0.1, port "0": a free one); gateway, the gateway
// socket when started by hand (flotillad tells it otherwise; --gateway says
// the same).
package cri

import (
	"context"
	"fmt"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/cri/server"
)

type options struct {
	Snapshotter            string   `json:"snapshotter"`
	InsecureRegistries     []string `json:"insecure_registries"`
	ConfigPath             string   `json:"config_path"`
	ImageFSPath            string   `json:"image_fs_path"`
	CNIConfDir             string   `json:"cni_conf_dir"`
	MaxConcurrentDownloads int      `json:"max_concurrent_downloads"`
	SandboxImage           string   `json:"sandbox_image"`
	CNIBinDirs             []string `json:"cni_bin_dirs"`
	RestrictOOMScoreAdj    bool     `json:"restrict_oom_score_adj"`
	StreamServerAddress    string   `json:"stream_server_address"`
	StreamServerPort       string   `json:"stream_server_port"`
	Gateway                string   `json:"gateway"`
}

// New builds the cri service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	var opts options
	if err := p.Env.DecodeOptions(&opts); err != nil {
		return nil, err
	}
	gateway := p.Env.Gateway
	if gateway == "" {
		gateway = opts.Gateway
	}
	if gateway == "" {
		return nil, fmt.Errorf("cri reaches images and containers through the gateway: run it under flotillad or pass --option gateway=<flotilla.sock>")
	}
	if opts.Snapshotter == "" {
		opts.Snapshotter = "overlayfs"
	}
	if opts.ImageFSPath == "" {
		// flotillad gives each service <root>/<name>.
		opts.ImageFSPath = filepath.Join(filepath.Dir(p.Env.Root), "snapshotter-"+opts.Snapshotter)
	}
	// No per-call deadline: unpacking a large layer is one Diff call
	// that can take minutes. Every CRI call but PullImage comes with
	// the kubelet's own deadline.
	conn, err := rpc.DialTimeout(gateway, 0)
	if err != nil {
		return nil, err
	}
	client, err := containerd.NewWithConn(conn, containerd.WithDefaultNamespace(server.Namespace))
	if err != nil {
		conn.Close()
		return nil, err
	}
	srv := server.New(client, server.Config{
		Snapshotter:            opts.Snapshotter,
		InsecureRegistries:     opts.InsecureRegistries,
		ConfigPath:             opts.ConfigPath,
		ImageFSPath:            opts.ImageFSPath,
		CNIConfDir:             opts.CNIConfDir,
		MaxConcurrentDownloads: opts.MaxConcurrentDownloads,
		SandboxImage:           opts.SandboxImage,
		CNIBinDirs:             opts.CNIBinDirs,
		StateDir:               p.Env.State,
		RestrictOOMScoreAdj:    opts.RestrictOOMScoreAdj,
	}, p.Logger)
	if err := srv.StartStreaming(opts.StreamServerAddress, opts.StreamServerPort); err != nil {
		srv.Close()
		client.Close()
		return nil, err
	}
	// Pods and containers started before a restart get their exit
	// watchers and log writers back; it needs the gateway, so it
	// runs beside serving rather than before it.
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
			return client.Close()
		},
	}, nil
}
