package server

import (
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/typeurl/v2"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"google.golang.org/protobuf/types/known/anypb"
)

// A pod's Sandbox Store record is what containerd 2.x's CRI records:
// sandboxer podsandbox, the pause container's runtime, spec and labels
// with oci_runtime_type; and the pod's own record as an extension.
func TestPodRecordIsContainerdsPodsandboxRecord(t *testing.T) {
	rec := containers.Container{
		ID:      "abc",
		Labels:  map[string]string{store.KindLabel: store.KindSandbox, "app": "web"},
		Runtime: containers.RuntimeInfo{Name: "io.containerd.runc.v2", Options: &anypb.Any{TypeUrl: "opts"}},
		Spec:    &anypb.Any{TypeUrl: "spec", Value: []byte("{}")},
		Extensions: map[string]typeurl.Any{
			store.SandboxExtension: &anypb.Any{TypeUrl: store.SandboxExtension, Value: []byte(`{"id":"abc"}`)},
			"other":                &anypb.Any{TypeUrl: "other"},
		},
	}
	sb := podRecord(rec)
	if sb.ID != "abc" || sb.Sandboxer != "podsandbox" || sb.Runtime.Name != "io.containerd.runc.v2" || sb.Runtime.Options.GetTypeUrl() != "opts" || sb.Spec.GetTypeUrl() != "spec" {
		t.Errorf("record %+v", sb)
	}
	if sb.Labels["app"] != "web" || sb.Labels[store.KindLabel] != store.KindSandbox || sb.Labels["oci_runtime_type"] != "io.containerd.runc.v2" {
		t.Errorf("labels %v", sb.Labels)
	}
	if len(sb.Extensions) != 1 || sb.Extensions[store.SandboxExtension] == nil {
		t.Errorf("extensions %v; want the pod's record only", sb.Extensions)
	}
	if _, ok := rec.Labels["oci_runtime_type"]; ok {
		t.Error("podRecord changed the container record's labels")
	}
}
