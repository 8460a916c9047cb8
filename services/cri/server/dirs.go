package server

import (
	"path/filepath"
)

// withPodDefaults fills in the pause image, CNI plugin dirs and state
// directory a pod needs.
func withPodDefaults(cfg Config) Config {
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = "registry.k8s.io/pause:3.10"
	}
	if len(cfg.CNIBinDirs) == 0 {
		cfg.CNIBinDirs = []string{"/opt/cni/bin", "/usr/lib/cni"}
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/run/flotilla/cri"
	}
	return cfg
}

// Where pods' state lives under the state directory.

func (s *Server) fifoDir() string { return filepath.Join(s.cfg.StateDir, "io") }
