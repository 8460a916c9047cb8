package idle

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
)

func TestTrimsOnceAfterABurstAndNotWhileACallRuns(t *testing.T) {
	tr := &Tracker{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Trim(ctx, 20*time.Millisecond)

	release := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = tr.UnaryServerInterceptor()(ctx, nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) {
			<-release
			return nil, nil
		})
	}()
	time.Sleep(100 * time.Millisecond)
	if !tr.busy.Load() {
		t.Fatal("trimmed while a call was in flight")
	}
	close(release)
	<-done
	deadline := time.Now().Add(2 * time.Second)
	for tr.busy.Load() {
		if time.Now().After(deadline) {
			t.Fatal("no trim after the call ended and the process went quiet")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
