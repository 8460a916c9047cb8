package shim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// detachCgroupsEnv is set by flotillad's supervisor (supervisor.DetachCgroupsEnv)
// when the tasks service runs in a cgroup of its own: a JSON list of [own
// cgroup, shims' cgroup] directories, one pair per hierarchy.
const detachCgroupsEnv = "FLOTILLA_DETACH_CGROUPS"

// detachShims moves every process in the tasks service's cgroup but itself
// (the shims it started) to the shims' cgroup: running containers belong to
// their shims, which must not count against the tasks service's memory
// limit, nor die with it when it is killed for exceeding it. A shim's
// `start` command forks the long-lived shim and exits, so once it returned
// the shim is there to move, before it is given a container.
func detachShims() {
	var pairs [][2]string
	if err := json.Unmarshal([]byte(os.Getenv(detachCgroupsEnv)), &pairs); err != nil {
		return
	}
	self := strconv.Itoa(os.Getpid())
	for _, p := range pairs {
		b, err := os.ReadFile(filepath.Join(p[0], "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(b)) {
			if pid != self {
				// A process gone meanwhile is no error.
				_ = os.WriteFile(filepath.Join(p[1], "cgroup.procs"), []byte(pid), 0)
			}
		}
	}
}
