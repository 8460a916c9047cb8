package imagetransfer

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	layerspb "github.com/flotilla-project/flotilla/proto/layers/v1"
)

// GraphStores are the stores of a graph of processes, as a process of it
// reaches them: content, images, leases, snapshots and Diff through a
// containerd client of their owners' sockets (pkg/graphclient), and the
// Layers API, which only the snapshotter processes serve (each for its own
// snapshots), on each snapshotter's socket. Both the transfer service and
// cri run their pulls over them.
type GraphStores struct {
	client *containerd.Client
	// sockets are the snapshotters' by name (flotillad's).
	sockets map[string]string

	mu     sync.Mutex
	layers map[string]*grpc.ClientConn
	infos  map[string]snapshotterInfo
}

type snapshotterInfo struct {
	capabilities []string
	remote       bool
	annotate     bool
	at           time.Time
}

// infoTTL is how long what Introspection says of a snapshotter is taken
// as true: a snapshotter can be swapped while flotillad runs.
const infoTTL = 10 * time.Second

// NewGraphStores returns the stores client reaches, with the Layers API of
// the snapshotters whose sockets are given. The client stays the caller's
// to close.
func NewGraphStores(client *containerd.Client, snapshotters map[string]string) *GraphStores {
	return &GraphStores{client: client, sockets: snapshotters,
		layers: map[string]*grpc.ClientConn{}, infos: map[string]snapshotterInfo{}}
}

// Stores are the stores an Engine works on.
func (g *GraphStores) Stores() Stores {
	return Stores{
		Content:      g.client.ContentStore(),
		Images:       g.client.ImageService(),
		Leases:       g.client.LeasesService(),
		Snapshotter:  func(name string) snapshots.Snapshotter { return g.client.SnapshotService(name) },
		Applier:      g.client.DiffService(),
		Streamer:     g.streamer,
		Capabilities: g.capabilities,
		RemoteSnapshotAnnotations: func(ctx context.Context, name string) bool {
			in, err := g.info(ctx, name)
			return err == nil && in.annotate
		},
	}
}

// Close closes the connections to the Layers APIs.
func (g *GraphStores) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.layers {
		c.Close()
	}
	g.layers = map[string]*grpc.ClientConn{}
}

// info is what Introspection says of the snapshotter name.
func (g *GraphStores) info(ctx context.Context, name string) (snapshotterInfo, error) {
	g.mu.Lock()
	in, ok := g.infos[name]
	g.mu.Unlock()
	if ok && time.Since(in.at) < infoTTL {
		return in, nil
	}
	resp, err := g.client.IntrospectionService().Plugins(ctx, `type=="io.containerd.snapshotter.v1"`)
	if err != nil {
		return snapshotterInfo{}, err
	}
	now := time.Now()
	found := false
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range resp.Plugins {
		id := p.ID
		if sn := p.Exports["snapshotter"]; sn != "" {
			id = sn
		}
		i := snapshotterInfo{
			capabilities: p.Capabilities,
			remote:       p.Exports["remote"] == "true",
			// containerd labels for a snapshotter configured to
			// export enable_remote_snapshot_annotations; every
			// snapshotter Flotilla does not run is labelled too, so
			// a lazy one works without that line of config.
			annotate: p.Exports["enable_remote_snapshot_annotations"] == "true" || p.Exports["remote"] == "true",
			at:       now,
		}
		g.infos[id] = i
		if id == name {
			in, found = i, true
		}
	}
	if !found {
		return snapshotterInfo{}, fmt.Errorf("introspection lists no snapshotter %q", name)
	}
	return in, nil
}

func (g *GraphStores) capabilities(ctx context.Context, name string) ([]string, error) {
	in, err := g.info(ctx, name)
	return in.capabilities, err
}

// streamer is the Layers API of the snapshotter name, when it is one
// Flotilla runs.
func (g *GraphStores) streamer(ctx context.Context, name string) StreamApplier {
	sock, ok := g.sockets[name]
	if !ok {
		return nil
	}
	if in, err := g.info(ctx, name); err != nil || in.remote {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	conn, ok := g.layers[name]
	if !ok {
		var err error
		if conn, err = rpc.DialTimeout(sock, 0); err != nil {
			return nil
		}
		g.layers[name] = conn
	}
	return &layersClient{client: layerspb.NewLayersClient(conn)}
}

// layersClient applies layers over a snapshotter's Layers API.
type layersClient struct {
	client layerspb.LayersClient
}

func (l *layersClient) Open(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount) (LayerWriter, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := l.client.Apply(ctx)
	if err != nil {
		cancel()
		return nil, errgrpc.ToNative(err)
	}
	w := &layerWriter{stream: stream, cancel: cancel}
	if err := stream.Send(&layerspb.ApplyRequest{Layer: oci.DescriptorToProto(desc), Mounts: mount.ToProto(mounts)}); err != nil {
		return nil, w.failed(err)
	}
	return w, nil
}

type layerWriter struct {
	stream layerspb.Layers_ApplyClient
	cancel context.CancelFunc
}

func (w *layerWriter) Write(p []byte) (int, error) {
	if err := w.stream.Send(&layerspb.ApplyRequest{Data: p}); err != nil {
		return 0, w.failed(err)
	}
	return len(p), nil
}

// failed turns a failed send into the snapshotter's answer: a send fails
// with a bare EOF when the other side ended the call, with its reason in
// the status.
func (w *layerWriter) failed(err error) error {
	if err == io.EOF {
		if _, err = w.stream.CloseAndRecv(); err == nil {
			err = fmt.Errorf("snapshotter ended the apply before the layer was sent: %w", errdefs.ErrFailedPrecondition)
		}
	}
	w.cancel()
	return errgrpc.ToNative(err)
}

func (w *layerWriter) Commit() (ocispec.Descriptor, error) {
	defer w.cancel()
	resp, err := w.stream.CloseAndRecv()
	if err != nil {
		return ocispec.Descriptor{}, errgrpc.ToNative(err)
	}
	return oci.DescriptorFromProto(resp.GetApplied()), nil
}

func (w *layerWriter) Abort() { w.cancel() }
