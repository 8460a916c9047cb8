// Package server is the metadata service's gRPC face: containerd's
// namespaced Namespaces, Images, Leases, Content, Containers and Sandbox
// Store APIs over meta.db, and the publisher that sends their events to the
// gateway's exchange.
package server

import (
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/snapshotserver"
	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Routes are the gRPC services this process serves for clients (the
// content process serves Content's Read and Write streams).
var Routes = []string{
	"containerd.services.namespaces.v1.Namespaces",
	"containerd.services.images.v1.Images",
	"containerd.services.leases.v1.Leases",
	"containerd.services.content.v1.Content",
	"containerd.services.snapshots.v1.Snapshots",
	"containerd.services.containers.v1.Containers",
	"containerd.services.sandbox.v1.Store",
}

// Register returns a function that adds every API over db to a server.
func Register(db *metadb.DB, pub *Publisher) func(grpc.ServiceRegistrar) {
	return func(srv grpc.ServiceRegistrar) {
		(&Namespaces{db: db, pub: pub}).Register(srv)
		(&Images{db: db, pub: pub}).Register(srv)
		(&Leases{db: db}).Register(srv)
		(&Containers{db: db, pub: pub}).Register(srv)
		(&Sandboxes{db: db}).Register(srv)
		newContent(db, pub).Register(srv)
		(&Ingests{store: db.Content(), pub: pub}).Register(srv)
		snapshotserver.NewPicking(pickSnapshotter(db, pub)).Register(srv)
	}
}
