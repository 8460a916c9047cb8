package transfer

import (
	containerd "github.com/containerd/containerd/v2/client"

	"github.com/flotilla-project/flotilla/pkg/graphclient"
	"github.com/flotilla-project/flotilla/pkg/imagetransfer"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// graph is how the transfer service reaches the rest of the graph, in one
// place: the stores on their owners' sockets through the process's graph
// client, as containerd's client reaches them, and the snapshotters'
// Layers APIs (imagetransfer.GraphStores).
type graph struct {
	peers  *rpc.Graph
	client *containerd.Client
	stores *imagetransfer.GraphStores
}

func dialGraph(peers *rpc.Graph, snapshotters map[string]string, def string) (*graph, error) {
	client, err := graphclient.New(peers, snapshotters, def, "")
	if err != nil {
		return nil, err
	}
	return &graph{peers: peers, client: client, stores: imagetransfer.NewGraphStores(client, snapshotters)}, nil
}

func (g *graph) close() {
	g.stores.Close()
	g.client.Close()
	g.peers.Close()
}
