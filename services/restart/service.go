// Package restart is Flotilla's restart monitor service: containerd's
// restart monitor plugin (io.containerd.monitor.container.v1 restart) as a
// process of its own, a client of the daemon through the gateway (container
// records from metadata, tasks from tasks). It serves no API. See package
// monitor for what it does with the containerd.io/restart.* labels.
//
// Options: interval, how often the containers are checked (a Go duration,
// default "10s" as containerd's). Started by hand, it is told the gateway's
// socket with --gateway.
package restart

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/graphclient"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/restart/monitor"
)

// Options are the restart monitor's options ([services.restart.options]).
type Options struct {
	Interval string `toml:"interval" json:"interval" comment:"How often containers labelled containerd.io/restart.* are checked (containerd's default is 10s)."`
}

// DefaultOptions are the options the restart monitor runs with unless told.
func DefaultOptions() *Options { return &Options{Interval: "10s"} }

// New builds the restart monitor in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	opts := DefaultOptions()
	if err := p.DecodeOptions(ctx, opts); err != nil {
		return nil, err
	}
	interval := monitor.DefaultInterval
	if opts.Interval != "" {
		d, err := time.ParseDuration(opts.Interval)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("option interval %q: want a duration such as \"10s\"", opts.Interval)
		}
		interval = d
	}
	for _, dep := range []string{"metadata", "tasks"} {
		if _, ok := p.Env.Deps[dep]; !ok {
			return nil, fmt.Errorf("the restart monitor calls %s on its socket: run it under flotillad or pass --dep %s=<socket>", dep, dep)
		}
	}
	graph, err := p.Graph()
	if err != nil {
		return nil, err
	}
	client, err := graphclient.New(graph, p.Env.Snapshotters, "overlayfs", "")
	if err != nil {
		graph.Close()
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		monitor.New(client, interval, p.Env.State).Run(runCtx)
	}()
	return &service.Instance{
		Type:         "io.containerd.monitor.container.v1",
		Requires:     []string{"io.containerd.runtime.v2"},
		Exports:      map[string]string{"interval": interval.String()},
		Capabilities: monitor.Policies,
		Register:     func(grpc.ServiceRegistrar) {},
		Close: func(ctx context.Context) error {
			stop()
			select {
			case <-done:
			case <-ctx.Done():
			}
			client.Close()
			return graph.Close()
		},
	}, nil
}
