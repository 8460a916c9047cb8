package stats

import (
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// CgroupRoot is where the cgroup hierarchy is mounted (the unified one on
// a cgroup v2 host).
const CgroupRoot = "/sys/fs/cgroup"

// ReadCgroup reads a cgroup's stats with the cgroupfs layout runc uses
// for an absolute cgroupsPath: /sys/fs/cgroup/<controller>/<path> on
// cgroup v1 (and hybrid) hosts, /sys/fs/cgroup/<path> on cgroup v2 hosts.
func ReadCgroup(path string) (Sample, error) {
	if cgroups.Mode() == cgroups.Unified {
		return ReadCgroup2(CgroupRoot, path)
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return Sample{}, err
	}
	st, err := cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return Sample{}, err
	}
	return FromMetrics(st, time.Now())
}

// ReadCgroup2 reads the cgroup v2 group path of the hierarchy mounted at
// root.
func ReadCgroup2(root, path string) (Sample, error) {
	m, err := cgroup2.Load(path, cgroup2.WithMountpoint(root))
	if err != nil {
		return Sample{}, err
	}
	st, err := m.Stat()
	if err != nil {
		return Sample{}, err
	}
	return FromMetrics(st, time.Now())
}
