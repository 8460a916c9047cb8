package server

import (
	"context"
	"fmt"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// pickSnapshotter returns the namespaced snapshotter of a request's name,
// publishing its events, as containerd's snapshots service does.
func pickSnapshotter(db *metadb.DB, pub *Publisher) func(string) (snapshots.Snapshotter, error) {
	return func(name string) (snapshots.Snapshotter, error) {
		sn, err := db.Snapshotter(name)
		if err != nil {
			return nil, err
		}
		return &publishing{Snapshotter: sn, name: name, pub: pub}, nil
	}
}

type publishing struct {
	snapshots.Snapshotter
	name string
	pub  *Publisher
}

func (p *publishing) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := p.Snapshotter.Prepare(ctx, key, parent, opts...)
	if err == nil {
		p.pub.Publish(ctx, "/snapshot/prepare", &eventstypes.SnapshotPrepare{Key: key, Parent: parent, Snapshotter: p.name}, "")
	}
	return m, err
}

func (p *publishing) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := p.Snapshotter.View(ctx, key, parent, opts...)
	if err == nil {
		p.pub.Publish(ctx, "/snapshot/prepare", &eventstypes.SnapshotPrepare{Key: key, Parent: parent, Snapshotter: p.name}, "")
	}
	return m, err
}

func (p *publishing) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	err := p.Snapshotter.Commit(ctx, name, key, opts...)
	if err == nil {
		p.pub.Publish(ctx, "/snapshot/commit", &eventstypes.SnapshotCommit{Key: key, Name: name, Snapshotter: p.name}, "")
	}
	return err
}

func (p *publishing) Remove(ctx context.Context, key string) error {
	err := p.Snapshotter.Remove(ctx, key)
	if err == nil {
		p.pub.Publish(ctx, "/snapshot/remove", &eventstypes.SnapshotRemove{Key: key, Snapshotter: p.name}, "")
	}
	return err
}

// Cleanup passes through to the namespaced snapshotter's: the wrapper must
// not hide it, or the Snapshots API answers NotImplemented for every
// snapshotter (containerd serves it for any snapshots.Cleaner).
func (p *publishing) Cleanup(ctx context.Context) error {
	c, ok := p.Snapshotter.(snapshots.Cleaner)
	if !ok {
		return fmt.Errorf("snapshotter %s has no cleanup: %w", p.name, errdefs.ErrNotImplemented)
	}
	return c.Cleanup(ctx)
}
