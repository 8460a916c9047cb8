// Package transfer is Flotilla's transfer service: containerd's Transfer
// and Streaming APIs (containerd.services.transfer.v1.Transfer,
// containerd.services.streaming.v1.Streaming), which containerd 2.x's ctr
// and Go client use to pull, push, import, export and tag images. Pulls
// run here, next to the stores: layers are fetched in parallel and unpacked
// as they download (pkg/imagetransfer). The streams a client opens for a transfer
// (an archive's bytes, progress, registry credentials) are held here too
// (streams), since the transfer that uses them runs here.
//
// Its options ([services.transfer.options], or --option key=value by
// hand) are Options; their names follow containerd 2.x's transfer plugin
// ([plugins.'io.containerd.transfer.v1.local']).
package transfer

import (
	"context"
	"fmt"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/imagetransfer"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/transfer/server"
	"github.com/flotilla-project/flotilla/services/transfer/streams"
)

// Options are the transfer service's options, with their defaults from
// DefaultOptions.
type Options struct {
	MaxConcurrentDownloads      int      `toml:"max_concurrent_downloads" json:"max_concurrent_downloads" comment:"Blobs downloaded at once, across every pull."`
	MaxConcurrentUploadedLayers int      `toml:"max_concurrent_uploaded_layers" json:"max_concurrent_uploaded_layers" comment:"Blobs uploaded at once, across every push."`
	MaxConcurrentUnpacks        int      `toml:"max_concurrent_unpacks" json:"max_concurrent_unpacks" comment:"Layers one pull unpacks at once on a snapshotter that can rebase a layer onto its parent at commit (overlayfs); 1 unpacks them in order."`
	ConfigPath                  string   `toml:"config_path" json:"config_path" comment:"Directory of containerd-format hosts.toml files (<config_path>/<host>/hosts.toml: mirrors, certificates), used when a client names none."`
	Snapshotter                 string   `toml:"snapshotter" json:"snapshotter" comment:"Snapshotter that unpacks images when a client names none."`
	Platforms                   []string `toml:"platforms" json:"platforms" comment:"Platforms images are unpacked for (an image of another operating system is only fetched); empty: the host's."`
	// Gateway is flotillad's socket for a transfer service run by hand
	// (flotillad tells the one it starts, and the config has no say).
	Gateway string `toml:"-" json:"gateway"`
}

// DefaultOptions are the options the transfer service runs with unless
// told.
func DefaultOptions() *Options {
	return &Options{
		MaxConcurrentDownloads:      3,
		MaxConcurrentUploadedLayers: 3,
		MaxConcurrentUnpacks:        4,
		Snapshotter:                 "overlayfs",
	}
}

// New builds the transfer service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	opts := DefaultOptions()
	if err := p.DecodeOptions(ctx, opts); err != nil {
		return nil, err
	}
	if p.Env.Gateway == "" {
		p.Env.Gateway = opts.Gateway
	}
	for _, dep := range []string{"metadata", "content"} {
		if _, ok := p.Env.Deps[dep]; !ok {
			return nil, fmt.Errorf("transfer calls %s on its socket: run it under flotillad or pass --dep %s=<socket>", dep, dep)
		}
	}
	var unpackFor []ocispec.Platform
	for _, s := range opts.Platforms {
		pl, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("option platforms: %w", err)
		}
		unpackFor = append(unpackFor, pl)
	}
	peers, err := p.Graph()
	if err != nil {
		return nil, err
	}
	g, err := dialGraph(peers, p.Env.Snapshotters, opts.Snapshotter)
	if err != nil {
		peers.Close()
		return nil, err
	}
	eng := imagetransfer.New(g.stores.Stores(), imagetransfer.Config{
		MaxConcurrentDownloads: opts.MaxConcurrentDownloads,
		MaxConcurrentUploads:   opts.MaxConcurrentUploadedLayers,
		MaxConcurrentUnpacks:   opts.MaxConcurrentUnpacks,
		Snapshotter:            opts.Snapshotter,
		Platforms:              unpackFor,
	})
	sm := streams.NewManager()
	api := server.New(eng, sm, server.Config{HostDir: opts.ConfigPath})
	return &service.Instance{
		Type: "io.containerd.transfer.v1",
		Routes: []string{
			"containerd.services.transfer.v1.Transfer",
			"containerd.services.streaming.v1.Streaming",
		},
		Requires: []string{"io.containerd.metadata.v1", "io.containerd.content.v1", "io.containerd.snapshotter.v1", "io.containerd.differ.v1"},
		Exports:  map[string]string{"default_snapshotter": opts.Snapshotter},
		Register: func(srv grpc.ServiceRegistrar) {
			api.Register(srv)
			sm.Register(srv)
		},
		Close: func(context.Context) error {
			g.close()
			return nil
		},
	}, nil
}
