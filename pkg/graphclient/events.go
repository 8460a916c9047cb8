package graphclient

import (
	"fmt"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
)

// AwaitSubscribed returns once the gateway's exchange has registered
// stream's subscription, which it says by sending the stream's header:
// every event published after reaches it.
func AwaitSubscribed(stream grpc.ClientStream) error {
	if _, err := stream.Header(); err != nil {
		return fmt.Errorf("event subscription: %w", errgrpc.ToNative(err))
	}
	return nil
}
