package gateway

import (
	"context"
	"net"

	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// Runtime v2 shims publish their task events over ttrpc to the address the
// shim protocol gives them as TTRPC_ADDRESS, which containerd serves at
// "<client socket>.ttrpc". The gateway serves the same there, so any shim,
// and the containerd Go client's ttrpc connection, finds it.

// TTRPCAddress is where the gateway on address serves ttrpc.
func TTRPCAddress(address string) string { return address + ".ttrpc" }

type ttrpcEvents struct{ g *Gateway }

func (t ttrpcEvents) Forward(ctx context.Context, req *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	if err := t.g.events.Forward(ctx, req.GetEnvelope()); err != nil {
		return nil, rpc.Errors(err)
	}
	return &emptypb.Empty{}, nil
}

// ServeTTRPC serves the ttrpc events endpoint on l until Stop.
func (g *Gateway) ServeTTRPC(l net.Listener) error {
	s, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	ttrpcevents.RegisterTTRPCEventsService(s, ttrpcEvents{g: g})
	g.mu.Lock()
	g.ttrpc = s
	g.mu.Unlock()
	return s.Serve(context.Background(), l)
}
