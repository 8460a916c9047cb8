package server

import (
	"path/filepath"

	"github.com/flotilla-project/flotilla/services/cri/sandbox"
	"github.com/flotilla-project/flotilla/services/cri/store"
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

func (s *Server) netnsDir() string { return filepath.Join(s.cfg.StateDir, "netns") }
func (s *Server) sandboxDir(id string) string {
	return filepath.Join(s.cfg.StateDir, "sandboxes", id)
}
func (s *Server) fifoDir() string { return filepath.Join(s.cfg.StateDir, "io") }

// sandboxShm is the pod's /dev/shm; see sandbox.ShmPath.
func (s *Server) sandboxShm(sb *store.Sandbox) string {
	return sandbox.ShmPath(s.sandboxDir(sb.ID), sb.Config)
}
