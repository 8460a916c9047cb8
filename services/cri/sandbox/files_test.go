package sandbox

import (
	"os"
	"path/filepath"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestWriteFilesFromThePodsConfig: the pod's hostname, and a resolv.conf
// made of its DNS config (search, nameservers, options), are what its
// containers will mount.
func TestWriteFilesFromThePodsConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sb1")
	hostname, err := WriteFiles(dir, &runtime.PodSandboxConfig{
		Hostname:  "web-0",
		DnsConfig: &runtime.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc.cluster.local"}, Options: []string{"ndots:5"}},
	})
	if err != nil || hostname != "web-0" {
		t.Fatalf("WriteFiles: %q, %v", hostname, err)
	}
	for name, want := range map[string]string{
		"hostname":    "web-0\n",
		"resolv.conf": "search ns.svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n",
	} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", name, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "hosts")); err != nil {
		t.Errorf("hosts: %v", err)
	}
}
