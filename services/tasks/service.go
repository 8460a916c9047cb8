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
// Options: socket_dir, where shims put their sockets (default <state>/.s,
// or the shim's own default when that path is too long for a socket);
// runc_root, runc's state directory when a container's runc options name
// none (default <state>/.runc, apart from containerd's /run/containerd/runc);
// shim_debug, debug logs from shims.
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

type options struct {
	SocketDir string `json:"socket_dir"`
	RuncRoot  string `json:"runc_root"`
	ShimDebug bool   `json:"shim_debug"`
}

// maxSocketDir leaves room for the shim's socket name (64 hex digits and a
// slash) within the 108 bytes of a unix socket path.
const maxSocketDir = 107 - 65

// New builds the tasks service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	var opts options
	if err := p.Env.DecodeOptions(&opts); err != nil {
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
	shims := shim.NewManager(shim.Config{
		Root:         p.Env.Root,
		State:        p.Env.State,
		Address:      p.Env.Gateway,
		TTRPCAddress: ttrpcAddress,
		SocketDir:    opts.SocketDir,
		RuncRoot:     opts.RuncRoot,
		Debug:        opts.ShimDebug,
		Logger:       p.Logger,
	}, server.Publisher(events, p.Logger))
	if err := shims.Load(ctx); err != nil {
		graph.Close()
		return nil, err
	}
	metrics.GaugeFunc("tasks", "Tasks the tasks service holds (created, running or stopped and not yet deleted).", func() float64 {
		n := 0
		for _, ns := range shims.Namespaces() {
			n += len(shims.List(ns))
		}
		return float64(n)
	})
	return &service.Instance{
		Type:     "io.containerd.runtime.v2.task",
		Routes:   []string{"containerd.services.tasks.v1.Tasks"},
		Exports:  map[string]string{"socket_dir": opts.SocketDir, "runc_root": opts.RuncRoot},
		Register: server.New(shims, containers, p.Logger).Register,
		Close: func(context.Context) error {
			shims.Close()
			return graph.Close()
		},
	}, nil
}
