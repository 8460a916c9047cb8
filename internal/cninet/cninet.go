// Package cninet writes the CNI network configurations that tests and
// benchmarks run pods on: a Linux bridge with host-local addresses, the
// usual minimal pod network, from Debian's containernetworking-plugins.
package cninet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DebianBinDir is where Debian's containernetworking-plugins installs the
// plugin binaries.
const DebianBinDir = "/usr/lib/cni"

// BridgePlugins are the plugins a Bridge network runs: the bridge, its
// IPAM, and the loopback every pod gets besides.
var BridgePlugins = []string{"bridge", "host-local", "loopback"}

// Bridge is a bridge network with host-local IPAM and a default route
// through the bridge. Networks that run side by side need distinct
// Bridge devices and Subnets.
type Bridge struct {
	// Name is the network's name (host-local keeps its leases in
	// IPAMDir/Name); it also names the conflist file.
	Name string
	// Bridge is the Linux bridge device, created on first use.
	Bridge string
	// Subnet is the pods' address range, CIDR notation.
	Subnet string
	// Gateway is the bridge's address; host-local's default (the
	// subnet's first address) when empty.
	Gateway string
	// IPAMDir is host-local's data directory.
	IPAMDir string
	// PortMap adds the portmap plugin, for pods with host ports.
	PortMap bool
}

// FileName is the conflist's name in a CNI conf dir.
func (b Bridge) FileName() string { return "10-" + b.Name + ".conflist" }

// Conflist is the network's configuration list, as JSON.
func (b Bridge) Conflist() ([]byte, error) {
	if b.Name == "" || b.Bridge == "" || b.Subnet == "" || b.IPAMDir == "" {
		return nil, fmt.Errorf("cninet: bridge network %+v: Name, Bridge, Subnet and IPAMDir are required", b)
	}
	type ipRange struct {
		Subnet  string `json:"subnet"`
		Gateway string `json:"gateway,omitempty"`
	}
	type route struct {
		Dst string `json:"dst"`
	}
	type ipam struct {
		Type    string      `json:"type"`
		DataDir string      `json:"dataDir"`
		Ranges  [][]ipRange `json:"ranges"`
		Routes  []route     `json:"routes"`
	}
	type bridge struct {
		Type      string `json:"type"`
		Bridge    string `json:"bridge"`
		IsGateway bool   `json:"isGateway"`
		IPMasq    bool   `json:"ipMasq"`
		IPAM      ipam   `json:"ipam"`
	}
	type portmap struct {
		Type         string          `json:"type"`
		Capabilities map[string]bool `json:"capabilities"`
	}
	plugins := []any{bridge{
		Type:      "bridge",
		Bridge:    b.Bridge,
		IsGateway: true,
		IPAM: ipam{
			Type:    "host-local",
			DataDir: b.IPAMDir,
			Ranges:  [][]ipRange{{{Subnet: b.Subnet, Gateway: b.Gateway}}},
			Routes:  []route{{Dst: "0.0.0.0/0"}},
		},
	}}
	if b.PortMap {
		plugins = append(plugins, portmap{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}})
	}
	return json.MarshalIndent(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []any  `json:"plugins"`
	}{"1.0.0", b.Name, plugins}, "", "  ")
}

// Write writes the network's conflist into the CNI conf dir dir, creating
// it, and returns the file's path.
func (b Bridge) Write(dir string) (string, error) {
	conf, err := b.Conflist()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cninet: %w", err)
	}
	path := filepath.Join(dir, b.FileName())
	if err := os.WriteFile(path, append(conf, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("cninet: %w", err)
	}
	return path, nil
}

// Plugins checks that binDir has every named plugin, saying which package
// provides them when one is missing.
func Plugins(binDir string, plugins ...string) error {
	var errs []error
	for _, p := range plugins {
		if _, err := os.Stat(filepath.Join(binDir, p)); err != nil {
			errs = append(errs, fmt.Errorf("CNI plugin %s not in %s: install Debian's containernetworking-plugins", p, binDir))
		}
	}
	return errors.Join(errs...)
}
