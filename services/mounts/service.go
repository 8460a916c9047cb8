// Package mounts is Flotilla's mounts service: containerd 2.2's mount
// manager and its Mounts API (containerd.services.mounts.v1.Mounts), which
// the gateway routes here. It keeps its records in <state>/mounts.db (the
// state directory, as mounts do not survive a reboot) and performs the
// mounts it activates under <state>/t, in the host's mount namespace, where
// shims and clients on the host see them.
//
// Options: none. mkdir and mkfs transforms act under its own state and
// under Flotilla's root (the parent of its root directory).
package mounts

import (
	"context"
	"path/filepath"

	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/mounts/manager"
)

// New builds the mounts service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	m, err := manager.Open(p.Env.State, filepath.Dir(p.Env.Root))
	if err != nil {
		return nil, err
	}
	// What a crash left mounted or half-recorded goes before anyone asks.
	if err := m.Recover(ctx); err != nil {
		p.Logger.Warn("cleaning up after an earlier run", "error", err)
	}
	return &service.Instance{
		Type:     "io.containerd.mount-manager.v1",
		Routes:   []string{"containerd.services.mounts.v1.Mounts"},
		Exports:  map[string]string{"targets": filepath.Join(p.Env.State, "t")},
		Register: manager.NewServer(m).Register,
		Close:    func(context.Context) error { return m.Close() },
	}, nil
}
