// Package mounts is Flotilla's mounts service: containerd 2.2's mount
// manager and its Mounts API (containerd.services.mounts.v1.Mounts), which
// the gateway routes here. It keeps its records in <state>/mounts.db (the
// state directory, as mounts do not survive a reboot) and performs the
// mounts it activates under <state>/t, in the host's mount namespace, where
// shims and clients on the host see them.
//
// An activation goes when nothing holds it any more, as containerd's
// collector removes it: its lease deleted, or everything it back-references
// (containerd.io/gc.bref.*) gone (package refs asks the daemon, through the
// gateway, every collect_interval and after each deletion it publishes).
//
// Options: collect_interval (a Go duration, default "1m"). mkdir and mkfs
// transforms act under its own state and under Flotilla's root (the parent
// of its root directory).
package mounts

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/mounts/manager"
	"github.com/flotilla-project/flotilla/services/mounts/refs"
)

// Options are the mounts service's options ([services.mounts.options]).
type Options struct {
	CollectInterval string `toml:"collect_interval" json:"collect_interval" comment:"How often activations are checked for a lease or back-reference that still holds them (also after each deletion the daemon publishes)."`
}

// DefaultOptions are the options the mounts service runs with unless told.
func DefaultOptions() *Options { return &Options{CollectInterval: "1m"} }

// New builds the mounts service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	opts := DefaultOptions()
	if err := p.DecodeOptions(ctx, opts); err != nil {
		return nil, err
	}
	every, err := time.ParseDuration(opts.CollectInterval)
	if err != nil || every <= 0 {
		return nil, fmt.Errorf("option collect_interval %q: want a duration such as \"1m\"", opts.CollectInterval)
	}
	m, err := manager.Open(p.Env.State, filepath.Dir(p.Env.Root))
	if err != nil {
		return nil, err
	}
	// What a crash left mounted or half-recorded goes before anyone asks.
	if err := m.Recover(ctx); err != nil {
		logging.G(ctx).Warn("cleaning up after an earlier run", "error", err)
	}
	stop := func() {}
	if _, ok := p.Env.Deps["metadata"]; ok && p.Env.Gateway != "" {
		// Leases and records are metadata's, deletion events the
		// gateway's: each asked on its owner's socket.
		graph, err := p.Graph()
		if err != nil {
			m.Close()
			return nil, err
		}
		runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); refs.New(graph).Run(runCtx, every, m) }()
		stop = func() { cancel(); <-done; graph.Close() }
	} else {
		logging.G(ctx).Warn("no metadata and gateway (--dep metadata=..., --gateway): activations are kept until deactivated, whatever holds them")
	}
	return &service.Instance{
		Type:     "io.containerd.mount-manager.v1",
		Routes:   []string{"containerd.services.mounts.v1.Mounts"},
		Exports:  map[string]string{"targets": filepath.Join(p.Env.State, "t")},
		Register: manager.NewServer(m).Register,
		Close: func(context.Context) error {
			stop()
			return m.Close()
		},
	}, nil
}
