// Package content is Flotilla's content service: containerd's raw
// (unnamespaced) Content API over a blob store under the service root, and
// the namespaced Content API's Read and Write streams, whose bytes move here
// while metadata (namespaces, ingests, records, leases) decides for them. The
// gateway routes those two methods here and every other Content method to
// metadata.
package content

import (
	"context"
	"os"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/blobfd"
	"github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/content/blobs"
	"github.com/flotilla-project/flotilla/services/content/namespaced"
)

// NamespacedService is the name this process serves the namespaced Read and
// Write streams under, apart from the raw Content API of the same methods.
const NamespacedService = "flotilla.content.v1.Namespaced"

// New builds the content service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	store, err := blobs.Open(p.Env.Root)
	if err != nil {
		return nil, err
	}
	inst := &service.Instance{
		Type:     "io.containerd.content.v1",
		Exports:  map[string]string{"root": p.Env.Root},
		Register: contentserver.New(store).Register,
		Close:    func(context.Context) error { return store.Close() },
	}
	if _, ok := p.Env.Deps["metadata"]; !ok {
		// Run alone (a remote content store, a proxy plugin of
		// containerd's): the raw API only.
		return inst, nil
	}
	graph, err := p.Graph()
	if err != nil {
		store.Close()
		return nil, err
	}
	metadata, err := graph.Process("metadata")
	if err != nil {
		graph.Close()
		store.Close()
		return nil, err
	}
	ns := namespaced.New(store, metadata)
	view := contentserver.New(ns)
	raw := inst.Register
	inst.Register = func(srv grpc.ServiceRegistrar) {
		raw(srv)
		srv.RegisterService(namespacedDesc(), view)
	}
	inst.MethodRoutes = map[string]string{}
	for _, m := range []string{"Read", "Write"} {
		inst.MethodRoutes["/"+contentapi.Content_ServiceDesc.ServiceName+"/"+m] = "/" + NamespacedService + "/" + m
	}
	// Whoever moves a blob's bytes (the gateway for a client's Read, the
	// applier for a layer) may take its file instead, once this process
	// has asked metadata whether the namespace holds it.
	fdSocket := blobfd.SocketFor(p.Env.Socket)
	fl, err := rpc.Listen(fdSocket)
	if err != nil {
		graph.Close()
		store.Close()
		return nil, err
	}
	fdCtx, stopFD := context.WithCancel(ctx)
	go func() {
		if err := blobfd.Serve(fdCtx, fl, ns.OpenFile); err != nil {
			logging.G(ctx).Error("blob file socket stopped", "error", err)
		}
	}()
	inst.Exports["blobfd"] = fdSocket
	inst.Close = func(context.Context) error {
		stopFD()
		_ = os.Remove(fdSocket)
		graph.Close()
		return store.Close()
	}
	return inst, nil
}

// namespacedDesc is containerd's Content service description renamed, with
// only the streams that move bytes.
func namespacedDesc() *grpc.ServiceDesc {
	desc := contentapi.Content_ServiceDesc
	desc.ServiceName = NamespacedService
	desc.Methods = nil
	desc.Streams = nil
	for _, s := range contentapi.Content_ServiceDesc.Streams {
		if s.StreamName == "Read" || s.StreamName == "Write" {
			desc.Streams = append(desc.Streams, s)
		}
	}
	return &desc
}
