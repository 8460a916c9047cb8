package cninet

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestBridgeConflistIsABridgeWithHostLocalIPAM(t *testing.T) {
	dir := t.TempDir()
	b := Bridge{Name: "flotilla-test", Bridge: "fltest0", Subnet: "10.199.99.0/24", Gateway: "10.199.99.1", IPAMDir: "/tmp/ipam", PortMap: true}
	path, err := b.Write(filepath.Join(dir, "net.d"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "net.d", "10-flotilla-test.conflist"); path != want {
		t.Fatalf("Write wrote %s, want %s", path, want)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("conflist is not JSON: %v\n%s", err, raw)
	}
	var want any
	if err := json.Unmarshal([]byte(`{
  "cniVersion": "1.0.0",
  "name": "flotilla-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "fltest0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "/tmp/ipam",
        "ranges": [[{"subnet": "10.199.99.0/24", "gateway": "10.199.99.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("conflist:\n%s", raw)
	}
}

func TestBridgeConflistLeavesGatewayAndPortMapOutUnlessAsked(t *testing.T) {
	raw, err := Bridge{Name: "n", Bridge: "br", Subnet: "10.0.0.0/24", IPAMDir: "/d"}.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	if s := string(raw); strings.Contains(s, "gateway") || strings.Contains(s, "portmap") {
		t.Fatalf("conflist has a gateway or portmap nobody asked for:\n%s", s)
	}
}

func TestBridgeConflistNeedsItsNames(t *testing.T) {
	if _, err := (Bridge{Name: "n", Subnet: "10.0.0.0/24", IPAMDir: "/d"}).Conflist(); err == nil {
		t.Fatal("a network without a bridge device was accepted")
	}
}

func TestPluginsNamesTheMissingOne(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bridge"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Plugins(dir, "bridge"); err != nil {
		t.Fatalf("Plugins with the plugin present: %v", err)
	}
	err := Plugins(dir, "bridge", "host-local")
	if err == nil || !strings.Contains(err.Error(), "host-local") || strings.Contains(err.Error(), "plugin bridge") {
		t.Fatalf("Plugins with host-local missing: %v", err)
	}
}
