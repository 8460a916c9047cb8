// Package cri is Flotilla's cri service: the Kubernetes CRI v1
// (runtime.v1.ImageService and runtime.v1.RuntimeService), which the
// gateway routes to it. It is a client of the other services on their own
// sockets — metadata, tasks, content, the snapshotter that applies layers —
// in the "k8s.io" namespace, as containerd's CRI plugin is a client of
// containerd; of the gateway it asks only what the gateway owns (events,
// the daemon's version).
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
// the same). Started by hand it is given the other services' sockets with
// --dep (metadata, tasks, content) and --snapshotter.
package cri

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	eventsproxy "github.com/containerd/containerd/v2/core/events/proxy"
	introspectionproxy "github.com/containerd/containerd/v2/core/introspection/proxy"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"

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
	client, err := containerd.New("", containerd.WithDefaultNamespace(server.Namespace), containerd.WithServices(clientServices(graph, p.Env.Snapshotters, opts.Snapshotter)...))
	if err != nil {
		graph.Close()
		return nil, err
	}
	srv := server.New(client, graph, server.Config{
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
		Requires: []string{"io.containerd.metadata.v1", "io.containerd.runtime.v2.task"},
		Exports:  map[string]string{"default_snapshotter": opts.Snapshotter, "namespace": server.Namespace},
		Register: srv.Register,
		Close: func(context.Context) error {
			srv.Close()
			return graph.Close()
		},
	}, nil
}

// clientServices are the containerd client's services, each on the graph:
// a call goes to the process that owns it. Snapshotters are metadata's
// namespaced ones, by name.
func clientServices(graph *rpc.Graph, snapshotters map[string]string, def string) []containerd.ServicesOpt {
	sns := map[string]snapshots.Snapshotter{}
	for _, name := range append(slices.Collect(maps.Keys(snapshotters)), def) {
		sns[name] = snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(graph), name)
	}
	return []containerd.ServicesOpt{
		containerd.WithContentStore(contentproxy.NewContentStore(contentapi.NewContentClient(graph))),
		containerd.WithImageClient(imagesapi.NewImagesClient(graph)),
		containerd.WithContainerClient(containersapi.NewContainersClient(graph)),
		containerd.WithTaskClient(tasksapi.NewTasksClient(graph)),
		containerd.WithSnapshotters(sns),
		containerd.WithLeasesService(leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(graph))),
		containerd.WithDiffClient(diffapi.NewDiffClient(graph)),
		containerd.WithNamespaceClient(namespacesapi.NewNamespacesClient(graph)),
		containerd.WithIntrospectionService(introspectionproxy.NewIntrospectionProxy(graph)),
		containerd.WithEventService(eventsproxy.NewRemoteEvents(graph)),
	}
}
