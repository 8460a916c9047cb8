package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
)

// serviceNames lists the service processes a daemon runs, by the state
// directories that hold their pid files.
func (d *daemon) serviceNames() []string {
	d.t.Helper()
	files, _ := filepath.Glob(filepath.Join(d.state, "*", "*.pid"))
	var names []string
	for _, f := range files {
		name := filepath.Base(filepath.Dir(f))
		if filepath.Base(f) == name+".pid" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		d.t.Fatalf("no service pid files under %s", d.state)
	}
	return names
}

// servicePids maps each service to the pid in its pid file, which
// Introspection must report too (a snapshotter process is listed under its
// snapshotter's name, cri as a grpc.v1 plugin, the others by their names).
func (d *daemon) servicePids() map[string]int {
	d.t.Helper()
	c, err := containerd.New(d.address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		d.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx)
	if err != nil {
		d.t.Fatal(err)
	}
	listed := map[int]bool{}
	for _, p := range resp.Plugins {
		if pid, err := strconv.Atoi(p.Exports["pid"]); err == nil {
			listed[pid] = true
		}
	}
	pids := map[string]int{}
	for _, name := range d.serviceNames() {
		b, err := os.ReadFile(filepath.Join(d.state, name, name+".pid"))
		if err != nil {
			d.t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || !listed[pid] {
			d.t.Fatalf("service %s has pid file %q, which introspection does not list", name, b)
		}
		pids[name] = pid
	}
	return pids
}

// kill9 kills flotillad alone, as a crash would.
func (d *daemon) kill9() {
	d.t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		d.t.Fatal(err)
	}
	_ = d.wait(10 * time.Second)
}

// requireStopsCleanly sends SIGTERM and expects exit 0 with every service
// process of pids gone and no reattach records left.
func (d *daemon) requireStopsCleanly(pids map[string]int) {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.wait(30 * time.Second); err != nil {
		d.t.Fatalf("flotillad on SIGTERM: %v", err)
	}
	for name, pid := range pids {
		waitFor(d.t, 5*time.Second, name+" (pid "+strconv.Itoa(pid)+") to exit after SIGTERM", func() bool { return processGone(pid) })
	}
	if left, _ := filepath.Glob(filepath.Join(d.state, "*", "reattach.json")); len(left) > 0 {
		d.t.Errorf("reattach records left after a clean stop: %v", left)
	}
}

func TestKilledDaemonsSuccessorReattachesToRunningServices(t *testing.T) {
	first := startTasksDaemon(t)
	first.mustCtr("run", "-d", busyboxRef, "alive", "sleep", "300")
	first.mustCtr("run", "-d", busyboxRef, "exits", "sh", "-c", "sleep 1; exit 5")
	alivePid, exitsPid := first.initPid("alive"), first.initPid("exits")
	first.mustCtr("namespaces", "create", "before-kill")
	content := first.mustCtr("content", "ls", "-q")
	pids := first.servicePids()

	first.kill9()
	// The exit happens while no flotillad runs: tasks sees it (and logs,
	// which must not hurt it now that its first stderr reader is gone).
	waitFor(t, 15*time.Second, "the exiting container to exit", func() bool { return processGone(exitsPid) })
	time.Sleep(200 * time.Millisecond)
	for name, pid := range pids {
		if processGone(pid) {
			t.Fatalf("service %s (pid %d) died after flotillad was killed", name, pid)
		}
	}

	second := newDaemon(t, sameDirsAs(first)).start()
	t.Cleanup(second.reapLeftovers)
	now := second.servicePids()
	for name, pid := range pids {
		if got := now[name]; got != pid {
			t.Errorf("after the restart %s has pid %d, want the reattached %d", name, got, pid)
		}
		if !regexp.MustCompile(`msg="service reattached" .*\bname=` + name + ` `).MatchString(second.out.String()) {
			t.Errorf("the new flotillad does not log reattaching to %s", name)
		}
	}
	if got := second.mustCtr("content", "ls", "-q"); got != content {
		t.Errorf("ctr content ls after the reattach:\n%s\nwant:\n%s", got, content)
	}
	if ns := second.mustCtr("namespaces", "ls", "-q"); !strings.Contains(ns, "before-kill") {
		t.Errorf("namespace created before the kill is missing:\n%s", ns)
	}
	second.mustCtr("namespaces", "create", "after-reattach")
	checkSurvivors(t, second, "alive", "exits", alivePid)
	// What the reattached services log reaches the new flotillad (tasks
	// and metadata have something to say about a task's end and removal).
	waitFor(t, 5*time.Second, "output of a reattached service in the new flotillad's log", func() bool {
		for _, l := range strings.Split(second.out.String(), "\n") {
			if strings.Contains(l, " service=") && !strings.Contains(l, "service=flotillad") && !strings.Contains(l, "service=gateway") {
				return true
			}
		}
		return false
	})
	second.requireStopsCleanly(pids)
}

func TestServiceKilledWhileNoDaemonRanIsStartedAfreshNotReattached(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	first := newDaemon(t).start()
	t.Cleanup(first.reapLeftovers)
	first.mustCtr("namespaces", "create", "kept")
	pids := first.servicePids()
	first.kill9()
	if err := syscall.Kill(pids["content"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "content to die", func() bool { return processGone(pids["content"]) })

	second := newDaemon(t, sameDirsAs(first)).start()
	t.Cleanup(second.reapLeftovers)
	now := second.servicePids()
	if now["content"] == pids["content"] {
		t.Errorf("the new flotillad reports the dead content process %d", pids["content"])
	}
	for name, pid := range pids {
		if name != "content" && now[name] != pid {
			t.Errorf("%s has pid %d, want the reattached %d", name, now[name], pid)
		}
	}
	// metadata, reattached, reaches the new content process.
	second.mustCtr("content", "ls")
	if ns := second.mustCtr("namespaces", "ls", "-q"); !strings.Contains(ns, "kept") {
		t.Errorf("namespace created before the kill is missing:\n%s", ns)
	}
	second.requireStopsCleanly(now)
}

func TestUpgradeSignalLeavesServicesRunningToReattach(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	first := newDaemon(t).start()
	t.Cleanup(first.reapLeftovers)
	pids := first.servicePids()
	_ = first.cmd.Process.Signal(syscall.SIGUSR2)
	if err := first.wait(20 * time.Second); err != nil {
		t.Fatalf("flotillad on SIGUSR2: %v", err)
	}
	for name, pid := range pids {
		if processGone(pid) {
			t.Errorf("service %s (pid %d) stopped on SIGUSR2", name, pid)
		}
	}
	if _, err := os.Stat(first.address); !os.IsNotExist(err) {
		t.Errorf("client socket left behind: %v", err)
	}

	second := newDaemon(t, sameDirsAs(first)).start()
	t.Cleanup(second.reapLeftovers)
	now := second.servicePids()
	for name, pid := range pids {
		if got := now[name]; got != pid {
			t.Errorf("after the upgrade %s has pid %d, want the reattached %d", name, got, pid)
		}
	}
	second.mustCtr("namespaces", "create", "after-upgrade")
	second.requireStopsCleanly(pids)
}
