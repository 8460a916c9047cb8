// Package snapshotter is Flotilla's snapshotter service: containerd's
// raw (unnamespaced) Snapshots API over one driver under the service root.
// The gateway routes no client API here; the metadata service serves the
// namespaced Snapshots API over every snapshotter by name. Because the API is
// a containerd proxy snapshotter's, containerd can use this process as a
// proxy_plugins entry too.
//
// Options (from flotillad's config, or --option key=value by hand):
// driver ("overlayfs", the default, or "native"; [snapshotters.<name>]
// driver in the config) and Options ([snapshotters.<name>.options]); name,
// the name clients know the snapshotter by (Introspection lists it under
// that id); serve_diff (see below).
package snapshotter

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/blobfd"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/pkg/snapshotserver"
	"github.com/flotilla-project/flotilla/services/snapshotter/diff"
	"github.com/flotilla-project/flotilla/services/snapshotter/native"
	"github.com/flotilla-project/flotilla/services/snapshotter/overlay"
)

// Options are what a snapshotter's configuration says of it under
// [snapshotters.<name>.options].
type Options struct {
	MountOptions []string `toml:"mount_options" json:"mount_options" comment:"overlayfs: mount options added to every overlay mount (\"volatile\", say)."`
}

// DefaultOptions are the options a snapshotter runs with unless told.
func DefaultOptions() *Options { return &Options{} }

// options are everything a snapshotter process is told: its Options and
// what flotillad decides for it.
type options struct {
	Options
	Driver string `json:"driver"`
	// Name is the snapshotter's name for clients (flotillad sets it).
	Name string `json:"name"`
	// ServeDiff makes this process serve layer apply and compare (the Diff
	// API) for clients; flotillad asks one snapshotter process to.
	ServeDiff bool `json:"serve_diff"`
}

// New builds the snapshotter service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	opts := options{Options: *DefaultOptions(), Driver: "overlayfs"}
	if err := p.DecodeOptions(ctx, &opts); err != nil {
		return nil, err
	}
	exports := map[string]string{"driver": opts.Driver}
	if opts.Name != "" {
		exports["snapshotter"] = opts.Name
	}
	var (
		sn           snapshots.Snapshotter
		capabilities []string
	)
	switch opts.Driver {
	case "overlayfs", "overlay":
		o, err := overlay.New(ctx, p.Env.Root, overlay.Options{MountOptions: opts.MountOptions})
		if err != nil {
			return nil, err
		}
		exports["driver"] = "overlayfs"
		exports["mount_options"] = strings.Join(o.MountOptions(), ",")
		// An overlay layer does not depend on its parent's files: it can
		// be applied into a snapshot of its own and given its parent at
		// commit (containerd's snapshots.RebaseCap), so a pull unpacks
		// layers in parallel.
		capabilities = append(capabilities, snapshots.RebaseCap)
		sn = o
	case "native":
		n, err := native.New(ctx, p.Env.Root)
		if err != nil {
			return nil, err
		}
		sn = n
	default:
		return nil, fmt.Errorf("snapshotter driver %q: want overlayfs or native: %w", opts.Driver, errdefs.ErrInvalidArgument)
	}
	// Every snapshotter process applies layers streamed to it (the
	// Layers API): a pull unpacks a layer as it downloads.
	snapshotsAPI, layersAPI := snapshotserver.New(sn).Register, diff.NewStreamServer().Register
	inst := &service.Instance{
		Type:         "io.containerd.snapshotter.v1",
		Exports:      exports,
		Capabilities: capabilities,
		Register: func(srv grpc.ServiceRegistrar) {
			snapshotsAPI(srv)
			layersAPI(srv)
		},
		Close: func(context.Context) error { return sn.Close() },
	}
	if opts.ServeDiff {
		// Layers are read from, and diffs written to, the namespaced
		// content store metadata serves, in the caller's namespace and
		// lease; a layer's bytes come from the content process itself.
		if _, ok := p.Env.Deps["metadata"]; !ok {
			return nil, fmt.Errorf("layer apply (serve_diff) writes to metadata's content store: pass --dep metadata=<socket>")
		}
		graph, err := p.Graph()
		if err != nil {
			return nil, err
		}
		fd := ""
		if sock, ok := p.Env.Deps["content"]; ok {
			fd = blobfd.SocketFor(sock)
		}
		differ := diff.New(newNamespacedContent(graph, fd))
		snapshots := inst.Register
		inst.Register = func(srv grpc.ServiceRegistrar) {
			snapshots(srv)
			differ.Register(srv)
		}
		inst.Routes = []string{"containerd.services.diff.v1.Diff"}
		inst.Capabilities = append(inst.Capabilities, "diff")
		exports["diff"] = "walking"
		inst.Close = func(context.Context) error {
			graph.Close()
			return sn.Close()
		}
	}
	return inst, nil
}
