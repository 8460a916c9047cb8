package integration

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
)

// TestKubeletCRIClientReachesCRIThroughTheGateway points the kubelet's own
// CRI client at the gateway socket, as a kubelet would be, and expects the
// cri service process to answer both CRI services there.
func TestKubeletCRIClientReachesCRIThroughTheGateway(t *testing.T) {
	d := newDaemon(t).start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	rt, err := remote.NewRemoteRuntimeService(ctx, "unix://"+d.address, 10*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rt.Version(ctx, "v1")
	if err != nil {
		t.Fatalf("CRI Version through the gateway: %v", err)
	}
	if v.RuntimeName != "flotilla" || v.RuntimeApiVersion != "v1" {
		t.Fatalf("CRI Version answered %+v", v)
	}
	st, err := rt.Status(ctx, false)
	if err != nil {
		t.Fatalf("CRI Status through the gateway: %v", err)
	}
	for _, c := range st.GetStatus().GetConditions() {
		if c.Type == runtimeapi.RuntimeReady && !c.Status {
			t.Fatalf("runtime not ready: %+v", c)
		}
	}

	img, err := remote.NewRemoteImageService(ctx, "unix://"+d.address, 10*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.ListImages(ctx, nil); err != nil {
		t.Fatalf("CRI ListImages through the gateway: %v", err)
	}
	if _, err := img.ImageFsInfo(ctx); err != nil {
		t.Fatalf("CRI ImageFsInfo through the gateway: %v", err)
	}
}
