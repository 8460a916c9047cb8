// Package tasks is Flotilla's tasks service: containerd's Tasks API
// as a runtime v2 host. It starts a shim per task with containerd's shim
// protocol (containerd-shim-runc-v2 for io.containerd.runc.v2, found beside
// this binary or in PATH) and drives it over ttrpc. Running containers
// belong to their shims: this process can restart at any time and
// reconnects to them from the bundles in its state directory.
//
// Shims are told the gateway's socket as the daemon's address and publish
// their events to the gateway's ttrpc endpoint (<gateway socket>.ttrpc),
// the exchange the gateway owns; container records are read from metadata.
//
// Its options ([services.tasks.options], or --option key=value by hand)
// are Options.
package tasks

import (
	"context"
	"path/filepath"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"

	"github.com/flotilla-project/flotilla/pkg/metrics"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/tasks/server"
	"github.com/flotilla-project/flotilla/services/tasks/shim"
)

// Options are the tasks service's options; empty means the default each
// says.
type Options struct {
	SocketDir string `toml:"socket_dir" json:"socket_dir" comment:"Where shims put their sockets; empty: <state>/tasks/.s, or the shim's own default when that path is too long for a socket."`
	RuncRoot  string `toml:"runc_root" json:"runc_root" comment:"runc's state directory when a container's runc options name none; empty: <state>/tasks/.runc (apart from containerd's /run/containerd/runc)."`
	ShimDebug bool   `toml:"shim_debug" json:"shim_debug" comment:"Debug logs from the shims."`
}

// DefaultOptions are the options the tasks service runs with unless told.
func DefaultOptions() *Options { return &Options{} }

// maxSocketDir leaves room for the shim's socket name (64 hex digits and a
// slash) within the 108 bytes of a unix socket path.
const maxSocketDir = 107 - 65

// New builds the tasks service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	opts := DefaultOptions()
	if err := p.DecodeOptions(ctx, opts); err != nil {
		return nil, err
	}
	if opts.SocketDir == "" {
		// Hidden, so that no namespace can be named like it.
		if d := filepath.Join(p.Env.State, ".s"); len(d) <= maxSocketDir {
			opts.SocketDir = d
		}
	}
	if opts.RuncRoot == "" {
		opts.RuncRoot = filepath.Join(p.Env.State, ".runc")
	}
	graph, err := p.Graph()
	if err != nil {
		return nil, err
	}
	var (
		containers containersapi.ContainersClient
		events     eventsapi.EventsClient
	)
	if _, ok := p.Env.Deps["metadata"]; ok {
		containers = containersapi.NewContainersClient(graph)
	}
	if p.Env.Gateway != "" {
		events = eventsapi.NewEventsClient(graph)
	}
	ttrpcAddress := ""
	if p.Env.Gateway != "" {
		ttrpcAddress = p.Env.Gateway + ".ttrpc"
	}
	shims := shim.NewManager(ctx, shim.Config{
		Root:         p.Env.Root,
		State:        p.Env.State,
		Address:      p.Env.Gateway,
		TTRPCAddress: ttrpcAddress,
		SocketDir:    opts.SocketDir,
		RuncRoot:     opts.RuncRoot,
		Debug:        opts.ShimDebug,
	}, server.Publisher(events))
	// What the default runtime's shim says of itself, for Introspection,
	// is asked while the shims are loaded.
	runtimeExports := make(chan map[string]string, 1)
	go func() { runtimeExports <- server.RuntimeExports(ctx, shims) }()
	if err := shims.Load(ctx); err != nil {
		graph.Close()
		return nil, err
	}
	exports := <-runtimeExports
	exports["socket_dir"], exports["runc_root"] = opts.SocketDir, opts.RuncRoot
	metrics.GaugeFunc("tasks", "Tasks the tasks service holds (created, running or stopped and not yet deleted).", func() float64 {
		n := 0
		for _, ns := range shims.Namespaces() {
			n += len(shims.List(ns))
		}
		return float64(n)
	})
	return &service.Instance{
		Type:     server.RuntimePluginType,
		Routes:   []string{"containerd.services.tasks.v1.Tasks"},
		Exports:  exports,
		Register: server.New(shims, containers).Register,
		Close: func(context.Context) error {
			shims.Close()
			return graph.Close()
		},
	}, nil
}
