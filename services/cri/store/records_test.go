package store

import (
	"encoding/json"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The records are what survives a restart, so their JSON keys are a
// format: the encoded config stays under "config".
func TestSandboxRecordRoundTrip(t *testing.T) {
	cfg := &runtime.PodSandboxConfig{Metadata: &runtime.PodSandboxMetadata{Name: "web", Namespace: "ns", Uid: "u"}, Labels: map[string]string{"app": "web"}}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := EncodeExtension(SandboxExtension, &Sandbox{ID: "abc", Name: "web_ns_u_0", RawConfig: raw, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(ext.GetValue(), &keys); err != nil {
		t.Fatal(err)
	}
	if _, ok := keys["config"]; !ok || len(keys) != 4 {
		t.Fatalf("record keys = %v, want id, name, config, createdAt", keys)
	}
	m, err := DecodeSandbox(containers.Container{ID: "abc", Extensions: map[string]typeurl.Any{SandboxExtension: ext}})
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "web_ns_u_0" || m.Config.GetMetadata().GetName() != "web" || !MatchLabels(m.Config.GetLabels(), map[string]string{"app": "web"}) {
		t.Fatalf("decoded %+v", m)
	}
	if MatchLabels(m.Config.GetLabels(), map[string]string{"app": "db"}) {
		t.Fatal("selector app=db matched app=web")
	}
	if _, err := DecodeContainer(containers.Container{ID: "abc", Extensions: map[string]typeurl.Any{SandboxExtension: ext}}); err == nil {
		t.Fatal("a sandbox record decoded as a container")
	}
}
