package supervisor

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcCgroupsMapsControllersAndUnified(t *testing.T) {
	got := parseProcCgroups(`12:cpu,cpuacct:/a/b
4:memory:/process_api/x
1:name=systemd:/
0::/system.slice/flotilla.service
`)
	want := map[string]string{"cpu": "/a/b", "cpuacct": "/a/b", "memory": "/process_api/x", "name=systemd": "/", "": "/system.slice/flotilla.service"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%q: got %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
}

func TestCgroupNameIsPlainForTheDefaultStateAndUniqueOtherwise(t *testing.T) {
	if n := CgroupName("/run/flotilla"); n != "flotilla" {
		t.Errorf("default state: %q, want flotilla", n)
	}
	a, b := CgroupName("/tmp/a/state"), CgroupName("/tmp/b/state")
	if a == b || !strings.HasPrefix(a, "flotilla-") {
		t.Errorf("two state directories share cgroup names %q and %q", a, b)
	}
}

func TestCPUQuotaHasTheKernelsMinimum(t *testing.T) {
	if q := cpuQuota(0.5); q != 50000 {
		t.Errorf("0.5 CPU: quota %d, want 50000", q)
	}
	if q := cpuQuota(0.001); q != 1000 {
		t.Errorf("0.001 CPU: quota %d, want the minimum 1000", q)
	}
}

// testCgroups prepares a cgroup tree of the test's own, or skips the test
// saying why cgroups cannot be used here.
func testCgroups(t *testing.T, logger *slog.Logger) *Cgroups {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root")
	}
	c, err := newCgroups(logger, "flotilla-test-"+strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Skipf("cgroups unavailable: %v", err)
	}
	t.Cleanup(func() {
		for _, b := range c.base {
			_ = os.Remove(filepath.Join(b, "fake.service"))
		}
		c.cleanup()
	})
	return c
}

func TestServiceRunsInItsCgroupAndIsRestartedAfterAnOOMKill(t *testing.T) {
	f := newFixture(t)
	out := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(out, testWriter{t}), nil))
	cg := testCgroups(t, logger)
	spec := f.spec(nil)
	spec.Limits = Limits{MemoryMax: 64 << 20, CPUMax: 0.5}
	s, err := New(Options{Logger: logger, Output: out, StartTimeout: 10 * time.Second, Cgroups: cg}, []Spec{spec})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			s.Stop()
		}
	})
	st := running(t, s)
	dir := filepath.Join(cg.base[0], "fake.service")
	if st.Cgroup != dir {
		t.Errorf("status cgroup %q, want %q", st.Cgroup, dir)
	}
	procs := readString(filepath.Join(dir, "cgroup.procs"))
	if !hasWord(procs, strconv.Itoa(st.Pid)) {
		t.Fatalf("service pid %d is not in its cgroup %s (cgroup.procs: %q)", st.Pid, dir, procs)
	}
	limitFile := "memory.limit_in_bytes"
	if cg.v2 {
		limitFile = "memory.max"
	}
	if got := readString(filepath.Join(dir, limitFile)); got != strconv.Itoa(64<<20) {
		t.Errorf("%s = %q, want %d", limitFile, got, 64<<20)
	}
	if env := readString("/proc/" + strconv.Itoa(st.Pid) + "/environ"); !strings.Contains(env, DetachCgroupsEnv+"=") {
		t.Errorf("service was not told where to move the processes it detaches (%s)", DetachCgroupsEnv)
	}

	// The fake service hogs memory on SIGUSR1 until the kernel kills it.
	if err := syscall.Kill(st.Pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		now := s.Statuses()[0]
		if now.State == Running && now.Pid != st.Pid {
			st = now
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service not restarted after hogging memory: %+v\n%s", now, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.OOMKills != 1 || st.LastExit != "oom-killed" || st.Restarts != 1 {
		t.Errorf("after an OOM kill: oom kills %d, last exit %q, restarts %d; want 1, oom-killed, 1", st.OOMKills, st.LastExit, st.Restarts)
	}
	if !strings.Contains(out.String(), "service fake was killed for exceeding its memory limit") {
		t.Errorf("the OOM kill was not logged:\n%s", out.String())
	}
	if procs := readString(filepath.Join(dir, "cgroup.procs")); !hasWord(procs, strconv.Itoa(st.Pid)) {
		t.Errorf("restarted service pid %d is not in its cgroup (cgroup.procs: %q)", st.Pid, procs)
	}

	// A crash that is no OOM kill is told apart.
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a restart after kill -9", func() bool { now := s.Statuses()[0]; return now.State == Running && now.Pid != st.Pid })
	if now := s.Statuses()[0]; now.OOMKills != 1 || now.LastExit != "exited" {
		t.Errorf("after a kill -9: oom kills %d, last exit %q; want 1, exited", now.OOMKills, now.LastExit)
	}

	s.Stop()
	stopped = true
	for _, b := range cg.base {
		if _, err := os.Stat(b); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left behind after Stop (%v)", b, err)
		}
	}
}

// The kernel places a process started by a v2 serviceCgroup in its cgroup
// at clone: the service never runs outside it.
func TestV2ServiceProcessIsBornInItsCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root")
	}
	mnt := ""
	for _, m := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
		var st syscall.Statfs_t
		if syscall.Statfs(m, &st) == nil && st.Type == 0x63677270 { // CGROUP2_SUPER_MAGIC
			mnt = m
			break
		}
	}
	self, err := readProcCgroups("self")
	if mnt == "" || err != nil {
		t.Skipf("no cgroup v2 hierarchy mounted (%v)", err)
	}
	rel := filepath.Join(self[""], "flotilla-clone-test-"+strconv.Itoa(os.Getpid()))
	dir := filepath.Join(mnt, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a cgroup: %v", err)
	}
	defer os.Remove(dir)
	sc := &serviceCgroup{c: &Cgroups{v2: true}, name: "cat", dirs: []string{dir}}
	cmd := exec.Command("cat", "/proc/self/cgroup")
	done, err := sc.wrap(cmd)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cmd.Output()
	done()
	if err != nil {
		t.Fatal(err)
	}
	if got := parseProcCgroups(string(b))[""]; got != rel {
		t.Errorf("process started in cgroup %q, want %q", got, rel)
	}
}
