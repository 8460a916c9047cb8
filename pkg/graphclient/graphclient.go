// Package graphclient is containerd's Go client over the graph: every
// service it calls on the process that owns it (pkg/rpc's Graph), so a
// service that is a client of the others, as containerd's CRI plugin is of
// containerd, never hairpins through the gateway.
package graphclient

import (
	"maps"
	"slices"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	eventsproxy "github.com/containerd/containerd/v2/core/events/proxy"
	introspectionproxy "github.com/containerd/containerd/v2/core/introspection/proxy"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	sandboxproxy "github.com/containerd/containerd/v2/core/sandbox/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// Services are the containerd client's services, each on the graph.
// Snapshotters are metadata's namespaced ones, by name: those the process
// was told of and the default.
func Services(graph *rpc.Graph, snapshotters map[string]string, def string) []containerd.ServicesOpt {
	sns := map[string]snapshots.Snapshotter{}
	for _, name := range append(slices.Collect(maps.Keys(snapshotters)), def) {
		sns[name] = snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(graph), name)
	}
	return []containerd.ServicesOpt{
		containerd.WithContentStore(contentproxy.NewContentStore(contentapi.NewContentClient(graph))),
		containerd.WithImageClient(imagesapi.NewImagesClient(graph)),
		containerd.WithContainerClient(containersapi.NewContainersClient(graph)),
		containerd.WithTaskClient(tasksapi.NewTasksClient(graph)),
		containerd.WithSnapshotters(sns),
		containerd.WithLeasesService(leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(graph))),
		containerd.WithDiffClient(diffapi.NewDiffClient(graph)),
		containerd.WithNamespaceClient(namespacesapi.NewNamespacesClient(graph)),
		containerd.WithIntrospectionService(introspectionproxy.NewIntrospectionProxy(graph)),
		containerd.WithEventService(eventsproxy.NewRemoteEvents(graph)),
		containerd.WithSandboxStore(sandboxproxy.NewSandboxStore(sandboxapi.NewStoreClient(graph))),
	}
}

// New is a containerd client over the graph, in namespace ns by default.
func New(graph *rpc.Graph, snapshotters map[string]string, def, ns string) (*containerd.Client, error) {
	opts := []containerd.Opt{containerd.WithServices(Services(graph, snapshotters, def)...)}
	if ns != "" {
		opts = append(opts, containerd.WithDefaultNamespace(ns))
	}
	return containerd.New("", opts...)
}
