package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/container/spec"
)

// WriteFiles writes into dir the hostname, hosts and resolv.conf files
// the pod's containers mount, and returns the hostname.
func WriteFiles(dir string, cfg *runtime.PodSandboxConfig) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create sandbox directory: %w", err)
	}
	hostname := cfg.GetHostname()
	if hostname == "" || spec.HostNetwork(cfg) {
		h, err := os.Hostname()
		if err != nil {
			return "", err
		}
		if hostname == "" {
			hostname = h
		}
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
	if spec.HostNetwork(cfg) {
		if b, err := os.ReadFile("/etc/hosts"); err == nil {
			hosts = string(b)
		}
	}
	var resolv string
	if dns := cfg.GetDnsConfig(); dns != nil && (len(dns.GetServers()) > 0 || len(dns.GetSearches()) > 0 || len(dns.GetOptions()) > 0) {
		var b strings.Builder
		if len(dns.GetSearches()) > 0 {
			fmt.Fprintf(&b, "search %s\n", strings.Join(dns.GetSearches(), " "))
		}
		for _, ns := range dns.GetServers() {
			fmt.Fprintf(&b, "nameserver %s\n", ns)
		}
		if len(dns.GetOptions()) > 0 {
			fmt.Fprintf(&b, "options %s\n", strings.Join(dns.GetOptions(), " "))
		}
		resolv = b.String()
	} else if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		resolv = string(b)
	}
	for name, content := range map[string]string{"hostname": hostname + "\n", "hosts": hosts, "resolv.conf": resolv} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("write sandbox %s: %w", name, err)
		}
	}
	return hostname, nil
}
