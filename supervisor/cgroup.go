package supervisor

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Each service process runs in a cgroup of its own, so that a runaway
// service is contained by the limits its configuration sets and an OOM kill
// can be told from a crash. The layout, under the cgroup flotillad runs in
// (P), with one directory per flotillad instance (its state directory):
//
//	P/<instance>/<name>.service   one service process; memory and CPU limits
//	P/<instance>/shims            what a service starts to outlive it: the
//	                              tasks service's shims (running containers
//	                              belong to them, not to tasks, and must not
//	                              count against tasks' limit or die with it)
//
// (The suffix keeps a service's name from meeting cgroup v1's own files: a
// service is called "tasks".)
//
// On the unified hierarchy (cgroup v2) a cgroup with controllers enabled for
// its children may hold no processes itself (except the root). So when P is
// not the root, flotillad first moves itself into the leaf P/flotillad; if P
// holds other processes too (flotillad was not given a cgroup of its own),
// cgroups are not used. On cgroup v1 (and the hybrid layout, where the
// controllers are v1's) the same tree is made in the memory and cpu
// hierarchies, each under flotillad's cgroup there.
//
// Where cgroups cannot be used (no permission, controllers missing),
// flotillad says so once and runs its services without limits.

// Limits bound one service process; zero values mean no limit.
type Limits struct {
	MemoryMax int64   // bytes
	CPUMax    float64 // CPUs
}

// DetachCgroupsEnv tells a service where to move the processes it starts
// to outlive it (the tasks service's shims): a JSON list of [from, to]
// cgroup directories, one pair per hierarchy. The service moves every other
// process in "from" (its own cgroup) to "to".
const DetachCgroupsEnv = "FLOTILLA_DETACH_CGROUPS"

const (
	cgroupRoot = "/sys/fs/cgroup"
	cpuPeriod  = 100000 // µs, the kernel's default CFS period
)

// Cgroups places service processes in cgroups. The zero value and nil place
// none.
type Cgroups struct {
	logger *slog.Logger
	v2     bool
	// base is P/<instance> in each hierarchy used: one on v2; the memory
	// hierarchy's, then the cpu hierarchy's (if any) on v1.
	base []string
	// cpu tells whether the cpu controller is in use (memory always is).
	cpu bool
}

// CgroupName is the instance directory for a flotillad on state: the
// default state directory's is plain "flotilla", another one's carries a
// hash of its path, so that daemons on one machine never share a cgroup.
func CgroupName(state string) string {
	if abs, err := filepath.Abs(state); err == nil {
		state = abs
	}
	if state == "/run/flotilla" {
		return "flotilla"
	}
	sum := sha256.Sum256([]byte(state))
	return "flotilla-" + hex.EncodeToString(sum[:4])
}

// NewCgroups prepares the cgroup tree for instance (see CgroupName). When
// cgroups cannot be used it logs why, once, and returns nil, which runs
// services without limits.
func NewCgroups(logger *slog.Logger, instance string) *Cgroups {
	c, err := newCgroups(logger, instance)
	if err != nil {
		logger.Warn("cgroups unavailable; services run without memory or CPU limits", "reason", err)
		return nil
	}
	for _, b := range c.base {
		sweepStale(filepath.Dir(b), filepath.Base(b))
	}
	logger.Info("services run in cgroups", "cgroup", c.base[0], "cgroup_v2", c.v2, "cpu", c.cpu)
	return c
}

func newCgroups(logger *slog.Logger, instance string) (*Cgroups, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", cgroupRoot, err)
	}
	self, err := readProcCgroups("self")
	if err != nil {
		return nil, err
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return newCgroupsV2(logger, instance, self[""])
	}
	return newCgroupsV1(logger, instance, self)
}

// readProcCgroups maps each controller of /proc/<pid>/cgroup to its cgroup
// path; "" is the unified hierarchy's.
func readProcCgroups(pid string) (map[string]string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return nil, err
	}
	return parseProcCgroups(string(b)), nil
}

func parseProcCgroups(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		// hierarchy-id:controller,controller:path
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[1] == "" {
			out[""] = f[2]
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			out[c] = f[2]
		}
	}
	return out
}

func newCgroupsV2(logger *slog.Logger, instance, self string) (*Cgroups, error) {
	if self == "" {
		return nil, errors.New("no cgroup v2 path in /proc/self/cgroup")
	}
	own := filepath.Join(cgroupRoot, self)
	parent := own
	// The root alone may hold processes beside children with controllers.
	if _, err := os.Stat(filepath.Join(own, "cgroup.type")); err == nil {
		if filepath.Base(own) == "flotillad" && hasWord(readString(filepath.Join(filepath.Dir(own), "cgroup.subtree_control")), "memory") {
			// A previous flotillad made this leaf and put us here
			// (we were started from it): the tree is its parent's.
			parent = filepath.Dir(own)
		} else if err := enterLeaf(own); err != nil {
			return nil, err
		}
	}
	avail := strings.Fields(readString(filepath.Join(parent, "cgroup.controllers")))
	if !contains(avail, "memory") {
		return nil, fmt.Errorf("the memory controller is not available in %s (cgroup.controllers: %q)", parent, strings.Join(avail, " "))
	}
	c := &Cgroups{logger: logger, v2: true, cpu: contains(avail, "cpu")}
	enable := "+memory"
	if c.cpu {
		enable += " +cpu"
	}
	base := filepath.Join(parent, instance)
	for _, dir := range []string{parent, base} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), enable); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(base, "shims"), 0o755); err != nil {
		return nil, err
	}
	c.base = []string{base}
	return c, nil
}

// enterLeaf moves flotillad from own into own/flotillad, so that own may
// have controllers enabled for its children, and enables them; it moves
// back if own holds other processes too.
func enterLeaf(own string) error {
	leaf := filepath.Join(own, "flotillad")
	if err := os.MkdirAll(leaf, 0o755); err != nil {
		return err
	}
	pid := strconv.Itoa(os.Getpid())
	if err := writeFile(filepath.Join(leaf, "cgroup.procs"), pid); err != nil {
		_ = os.Remove(leaf)
		return err
	}
	avail := strings.Fields(readString(filepath.Join(own, "cgroup.controllers")))
	enable := "+memory"
	if contains(avail, "cpu") {
		enable += " +cpu"
	}
	if err := writeFile(filepath.Join(own, "cgroup.subtree_control"), enable); err != nil {
		_ = writeFile(filepath.Join(own, "cgroup.procs"), pid)
		_ = os.Remove(leaf)
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("cgroup %s holds other processes besides flotillad; give flotillad a cgroup of its own (systemd: Delegate=yes): %w", own, err)
		}
		return err
	}
	return nil
}

func newCgroupsV1(logger *slog.Logger, instance string, self map[string]string) (*Cgroups, error) {
	mounts, err := v1Mounts()
	if err != nil {
		return nil, err
	}
	c := &Cgroups{logger: logger}
	for _, ctl := range []string{"memory", "cpu"} {
		mnt, ok := mounts[ctl]
		if !ok || self[ctl] == "" {
			if ctl == "memory" {
				return nil, errors.New("no cgroup v1 memory hierarchy is mounted and /sys/fs/cgroup is not cgroup v2")
			}
			continue
		}
		base := filepath.Join(mnt, self[ctl], instance)
		if err := os.MkdirAll(filepath.Join(base, "shims"), 0o755); err != nil {
			return nil, err
		}
		c.base = append(c.base, base)
		c.cpu = ctl == "cpu"
	}
	return c, nil
}

// v1Mounts maps the cgroup v1 controllers to where their hierarchies are
// mounted (seen from this process's mount and cgroup namespaces, whose
// roots /proc/self/cgroup's paths are relative to).
func v1Mounts() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 || qf[0] != "cgroup" || pf[3] != "/" {
			continue
		}
		for _, opt := range strings.Split(qf[2], ",") {
			if opt == "memory" || opt == "cpu" {
				if _, dup := out[opt]; !dup {
					out[opt] = pf[4]
				}
			}
		}
	}
	return out, sc.Err()
}

// serviceCgroup is one service's cgroup, a directory per hierarchy.
type serviceCgroup struct {
	c    *Cgroups
	name string
	dirs []string // memory's first
}

// service returns the named service's cgroup, made if missing, with limits
// applied; nil when cgroups are not in use.
func (c *Cgroups) service(name string, l Limits) (*serviceCgroup, error) {
	if c == nil {
		return nil, nil
	}
	sc := &serviceCgroup{c: c, name: name}
	for _, b := range c.base {
		// Made again should another flotillad's sweep have caught it empty.
		_ = os.MkdirAll(filepath.Join(b, "shims"), 0o755)
		dir := filepath.Join(b, name+".service")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup of %s: %w", name, err)
		}
		sc.dirs = append(sc.dirs, dir)
	}
	if err := sc.apply(l); err != nil {
		return nil, fmt.Errorf("cgroup limits of %s: %w", name, err)
	}
	return sc, nil
}

// apply writes the limits (again: whatever another hand wrote there is
// undone at each start).
func (sc *serviceCgroup) apply(l Limits) error {
	mem, cpu := sc.dirs[0], sc.dirs[len(sc.dirs)-1]
	if sc.c.v2 {
		max := "max"
		if l.MemoryMax > 0 {
			max = strconv.FormatInt(l.MemoryMax, 10)
		}
		if err := writeFile(filepath.Join(mem, "memory.max"), max); err != nil {
			return err
		}
		// Without this a limited service would swap instead of being
		// stopped; the file exists only with swap accounting.
		swap := "max"
		if l.MemoryMax > 0 {
			swap = "0"
		}
		if err := writeFile(filepath.Join(mem, "memory.swap.max"), swap); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// A service killed for memory is killed whole (its helpers too),
		// to be restarted whole.
		if err := writeFile(filepath.Join(mem, "memory.oom.group"), "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if sc.c.cpu {
			quota := "max"
			if l.CPUMax > 0 {
				quota = strconv.FormatInt(cpuQuota(l.CPUMax), 10)
			}
			return writeFile(filepath.Join(cpu, "cpu.max"), quota+" "+strconv.Itoa(cpuPeriod))
		}
	} else {
		limit := "-1"
		if l.MemoryMax > 0 {
			limit = strconv.FormatInt(l.MemoryMax, 10)
		}
		if err := writeFile(filepath.Join(mem, "memory.limit_in_bytes"), limit); err != nil {
			return err
		}
		if sc.c.cpu {
			quota := "-1"
			if l.CPUMax > 0 {
				quota = strconv.FormatInt(cpuQuota(l.CPUMax), 10)
			}
			if err := writeFile(filepath.Join(cpu, "cpu.cfs_period_us"), strconv.Itoa(cpuPeriod)); err != nil {
				return err
			}
			return writeFile(filepath.Join(cpu, "cpu.cfs_quota_us"), quota)
		}
	}
	if l.CPUMax > 0 {
		sc.c.logger.Warn("the cpu controller is not available; cpu_limit is not applied", "name", sc.name)
	}
	return nil
}

// cpuQuota is the CFS quota per period for cpus CPUs (the kernel's minimum
// is 1ms).
func cpuQuota(cpus float64) int64 {
	return max(int64(cpus*cpuPeriod), 1000)
}

// Path is the cgroup as /proc/<pid>/cgroup shows it (the memory
// hierarchy's on v1).
func (sc *serviceCgroup) Path() string {
	if sc == nil {
		return ""
	}
	return sc.dirs[0]
}

// wrap makes cmd start in the cgroup: on v2 the kernel clones the process
// into it; on v1, a shell writes its own pid into each hierarchy before it
// execs the service, so the service never runs outside its limits.
func (sc *serviceCgroup) wrap(cmd *exec.Cmd) (cleanup func(), err error) {
	if sc == nil {
		return func() {}, nil
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if sc.c.v2 {
		fd, err := unix.Open(sc.dirs[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup %s: %w", sc.dirs[0], err)
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
		return func() { _ = unix.Close(fd) }, nil
	}
	const script = `for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"`
	shell, prog := "/bin/sh", script
	argv0 := cmd.Args[0]
	if _, err := os.Stat("/bin/bash"); err == nil && argv0 != cmd.Path {
		// bash's exec keeps the argv[0] the service is told apart by
		// (one executable runs every service); a plain sh's cannot, and
		// the service then goes by its environment alone.
		shell, prog = "/bin/bash", `a0=$1; shift; `+strings.Replace(script, `exec "$@"`, `exec -a "$a0" "$@"`, 1)
	}
	args := []string{filepath.Base(shell), "-c", prog, "sh"}
	if shell == "/bin/bash" {
		args = append(args, argv0)
	}
	for _, d := range sc.dirs {
		args = append(args, filepath.Join(d, "cgroup.procs"))
	}
	args = append(append(args, "--", cmd.Path), cmd.Args[1:]...)
	cmd.Path, cmd.Args = shell, args
	return func() {}, nil
}

// attach moves a running process (one a previous flotillad started) into
// the cgroup.
func (sc *serviceCgroup) attach(pid int) error {
	if sc == nil {
		return nil
	}
	for _, d := range sc.dirs {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// oomKills is how many processes the kernel killed in the cgroup for
// exceeding its memory limit, since it was made.
func (sc *serviceCgroup) oomKills() uint64 {
	if sc == nil {
		return 0
	}
	file := "memory.oom_control"
	if sc.c.v2 {
		file = "memory.events"
	}
	for _, line := range strings.Split(readString(filepath.Join(sc.dirs[0], file)), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// detachEnv is DetachCgroupsEnv's value for the service.
func (sc *serviceCgroup) detachEnv() string {
	if sc == nil {
		return ""
	}
	var pairs [][2]string
	for i, d := range sc.dirs {
		pairs = append(pairs, [2]string{d, filepath.Join(sc.c.base[i], "shims")})
	}
	b, _ := json.Marshal(pairs)
	return string(b)
}

// remove deletes the cgroup once its process has gone (which may take a
// moment after it was killed).
func (sc *serviceCgroup) remove() {
	if sc == nil {
		return
	}
	for _, d := range sc.dirs {
		var err error
		for i := 0; i < 50; i++ {
			if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			sc.c.logger.Warn("cannot remove a service's cgroup", "name", sc.name, "cgroup", d, "error", err)
		}
	}
}

// cleanup removes what is left of the tree once every service stopped:
// the shims' cgroup stays while shims (running containers) live in it.
func (c *Cgroups) cleanup() {
	if c == nil {
		return
	}
	for _, b := range c.base {
		_ = os.Remove(filepath.Join(b, "shims"))
		_ = os.Remove(b)
	}
}

// sweepStale removes what flotillads that are gone left in parent: the
// shims' cgroup of one stopped with containers running, once those ended.
// The kernel refuses to remove a cgroup with processes, and an instance
// whose daemon runs has service cgroups, which are never touched.
func sweepStale(parent, self string) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if !e.IsDir() || e.Name() == self || !strings.HasPrefix(e.Name(), "flotilla") || e.Name() == "flotillad" {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		if _, err := os.Stat(filepath.Join(dir, "shims")); err != nil {
			continue // not one of ours
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "*.service")); len(m) > 0 {
			continue
		}
		if os.Remove(filepath.Join(dir, "shims")) == nil {
			_ = os.Remove(dir)
		}
	}
}

func writeFile(path, v string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", v, path, err)
	}
	return nil
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func hasWord(s, w string) bool { return contains(strings.Fields(s), w) }
