package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// busyboxRef is the name the test image is imported under: the name a new
// user would type.
const busyboxRef = "docker.io/library/busybox:latest"

// startTasksDaemon starts a daemon with the busybox image imported and
// unpacked by ctr. Whatever a failed test leaves running is ended when it
// finishes, so one failure does not leak into the next test.
func startTasksDaemon(t *testing.T, opts ...daemonOption) *daemon {
	t.Helper()
	requireTool(t, "ctr", "containerd")
	requireTool(t, "runc", "runc")
	d := newDaemon(t, opts...).start()
	t.Cleanup(d.reapLeftovers)
	_, archive := imageArchive(t, testimage.WithName(busyboxRef))
	d.mustCtr("images", "import", archive)
	return d
}

// sameDirsAs makes a daemon take over another one's root, state and socket,
// as a restarted flotillad would.
func sameDirsAs(first *daemon) daemonOption {
	return func(d *daemon, args *[]string) {
		set := map[string]string{"--root": first.root, "--state": first.state, "--address": first.address}
		for i := 0; i+1 < len(*args); i++ {
			if v, ok := set[(*args)[i]]; ok {
				(*args)[i+1] = v
			}
		}
		d.root, d.state, d.address = first.root, first.state, first.address
	}
}

// procInfo is what the leak checks need to know about a process.
type procInfo struct {
	pid, ppid int
	state     byte
	args      []string
}

func processes() []procInfo {
	entries, _ := os.ReadDir("/proc")
	var out []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold anything.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out = append(out, procInfo{pid: pid, ppid: ppid, state: f[0][0], args: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")})
	}
	return out
}

// shimPids are the live shim processes started for this daemon's address.
func (d *daemon) shimPids() []int {
	var pids []int
	for _, p := range processes() {
		if p.state == 'Z' || len(p.args) == 0 || !strings.HasPrefix(filepath.Base(p.args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(p.args); i++ {
			if (p.args[i] == "-address" || p.args[i] == "--address") && p.args[i+1] == d.address {
				pids = append(pids, p.pid)
			}
		}
	}
	return pids
}

// mountsUnder lists the mount points below the daemon's root and state.
func (d *daemon) mountsUnder() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		d.t.Fatal(err)
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (strings.HasPrefix(f[4], d.root+"/") || strings.HasPrefix(f[4], d.state+"/")) {
			points = append(points, f[4])
		}
	}
	return points
}

// dirEntries lists the names in dir, nil when it does not exist.
func dirEntries(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// taskLeftovers describes what the tasks of the given namespaces left
// behind: shim processes, mounts, bundles, work and runc state directories,
// shim sockets, container records, tasks and active snapshots. Empty means
// clean.
func (d *daemon) taskLeftovers(nss ...string) []string {
	var out []string
	if pids := d.shimPids(); len(pids) > 0 {
		out = append(out, fmt.Sprintf("shim processes for %s still running: %v", d.address, pids))
	}
	if m := d.mountsUnder(); len(m) > 0 {
		out = append(out, fmt.Sprintf("mounts left: %v", m))
	}
	state := filepath.Join(d.state, "tasks")
	for _, ns := range dirEntries(state) {
		if fi, err := os.Stat(filepath.Join(state, ns)); err != nil || !fi.IsDir() || strings.HasPrefix(ns, ".") {
			continue
		}
		if b := dirEntries(filepath.Join(state, ns)); len(b) > 0 {
			out = append(out, fmt.Sprintf("bundles left in %s: %v", filepath.Join(state, ns), b))
		}
	}
	for _, ns := range dirEntries(filepath.Join(d.root, "tasks")) {
		if w := dirEntries(filepath.Join(d.root, "tasks", ns)); len(w) > 0 {
			out = append(out, fmt.Sprintf("work directories left in %s: %v", filepath.Join(d.root, "tasks", ns), w))
		}
	}
	for _, ns := range dirEntries(filepath.Join(state, ".runc")) {
		if r := dirEntries(filepath.Join(state, ".runc", ns)); len(r) > 0 {
			out = append(out, fmt.Sprintf("runc state left in %s: %v", filepath.Join(state, ".runc", ns), r))
		}
	}
	if s := dirEntries(filepath.Join(state, ".s")); len(s) > 0 {
		out = append(out, fmt.Sprintf("shim sockets left in %s: %v", filepath.Join(state, ".s"), s))
	}
	for _, ns := range nss {
		if o, err := d.ctr("-n", ns, "containers", "ls", "-q"); err != nil || strings.TrimSpace(o) != "" {
			out = append(out, fmt.Sprintf("ctr -n %s containers ls: %v %q", ns, err, o))
		}
		if o, err := d.ctr("-n", ns, "tasks", "ls", "-q"); err != nil || strings.TrimSpace(o) != "" {
			out = append(out, fmt.Sprintf("ctr -n %s tasks ls: %v %q", ns, err, o))
		}
		o, err := d.ctr("-n", ns, "snapshots", "ls")
		if err != nil {
			out = append(out, fmt.Sprintf("ctr -n %s snapshots ls: %v %q", ns, err, o))
		}
		for _, line := range strings.Split(o, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "Active" {
				out = append(out, fmt.Sprintf("active snapshot left in %s: %s", ns, line))
			}
		}
	}
	return out
}

// requireNothingLeft waits a little for shims to shut down (that happens
// after Delete answers) and fails the test with whatever remains.
func (d *daemon) requireNothingLeft(nss ...string) {
	d.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := d.taskLeftovers(nss...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("left behind after every container was removed:\n  %s", strings.Join(left, "\n  "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reapLeftovers ends the shims of this daemon with their containers,
// service processes a killed flotillad left behind, and mounts, so that a
// failed test leaks nothing. Every process it ends was started by this
// test's daemon.
func (d *daemon) reapLeftovers() {
	procs := processes()
	children := map[int][]int{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	var kill func(pid int)
	kill = func(pid int) {
		for _, c := range children[pid] {
			kill(c)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	shims := d.shimPids()
	for _, pid := range shims {
		// A paused container ignores SIGKILL until thawed; the shim
		// dies anyway and the frozen cgroup is the only leftover.
		kill(pid)
	}
	select {
	case <-d.done:
		// flotillad is gone: its services may still run.
		pidFiles, _ := filepath.Glob(filepath.Join(d.state, "*", "*.pid"))
		for _, f := range pidFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 1 {
				continue
			}
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if err == nil && filepath.Dir(exe) == filepath.Clean(binDir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	default:
	}
	if len(shims) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
	unmountUnder(d.root)
	unmountUnder(d.state)
}

// taskRows parses `ctr tasks ls`: id -> [pid, status].
func taskRows(out string) map[string][2]string {
	rows := map[string][2]string{}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, line := range lines[1:] {
		if f := strings.Fields(line); len(f) == 3 {
			rows[f[0]] = [2]string{f[1], f[2]}
		}
	}
	return rows
}

// waitTaskStatus polls `ctr tasks ls` until task id shows status.
func (d *daemon) waitTaskStatus(id, status string) map[string][2]string {
	d.t.Helper()
	var rows map[string][2]string
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := d.mustCtr("tasks", "ls")
		rows = taskRows(out)
		if rows[id][1] == status {
			return rows
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("task %s is not %s after 15s; ctr tasks ls:\n%s", id, status, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exitCode is the exit status of a finished command.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestCtrRunRmPrintsOutputAndLeavesNothingBehind(t *testing.T) {
	d := startTasksDaemon(t)
	out, err := d.ctrBytes("run", "--rm", busyboxRef, "t1", "echo", "hello")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "hello\n" {
		t.Fatalf("ctr run --rm ... echo hello printed %q, want %q", out, "hello\n")
	}
	if out := d.mustCtr("containers", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("ctr containers ls after run --rm lists %q, want nothing", out)
	}
	if out := d.mustCtr("tasks", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("ctr tasks ls after run --rm lists %q, want nothing", out)
	}
	d.requireNothingLeft("default")
}

func TestCtrRunReturnsTheContainersExitCode(t *testing.T) {
	d := startTasksDaemon(t)
	out, err := d.ctr("run", "--rm", busyboxRef, "t2", "sh", "-c", "exit 7")
	if code := exitCode(err); code != 7 {
		t.Fatalf("ctr run --rm ... sh -c 'exit 7' exited with %d (%v), want 7\n%s", code, err, out)
	}
	d.requireNothingLeft("default")
}

func TestCtrTaskLifecycleExecPauseMetricsKillRemove(t *testing.T) {
	d := startTasksDaemon(t)
	d.mustCtr("run", "-d", busyboxRef, "t3", "sleep", "300")

	rows := d.waitTaskStatus("t3", "RUNNING")
	pid := rows["t3"][0]
	if n, err := strconv.Atoi(pid); err != nil || n <= 0 {
		t.Fatalf("ctr tasks ls shows pid %q for t3", pid)
	}
	if _, err := os.Stat("/proc/" + pid); err != nil {
		t.Errorf("the pid ctr tasks ls shows for t3 (%s) is not a live process: %v", pid, err)
	}

	ps := d.mustCtr("tasks", "ps", "t3")
	if !strings.Contains(ps, pid) {
		t.Errorf("ctr tasks ps t3 does not list the task's pid %s:\n%s", pid, ps)
	}

	ls := d.mustCtr("tasks", "exec", "--exec-id", "e1", "t3", "ls", "/")
	if !contains(strings.Fields(ls), "bin") {
		t.Errorf("ctr tasks exec ... ls / does not list bin:\n%s", ls)
	}
	// The exec id is free again once ctr deleted the exec.
	if out := d.mustCtr("tasks", "exec", "--exec-id", "e1", "t3", "true"); strings.TrimSpace(out) != "" {
		t.Errorf("second exec with the same id printed %q", out)
	}

	d.mustCtr("tasks", "pause", "t3")
	d.waitTaskStatus("t3", "PAUSED")
	d.mustCtr("tasks", "resume", "t3")
	d.waitTaskStatus("t3", "RUNNING")

	raw, err := d.ctrBytes("tasks", "metrics", "--format", "json", "t3")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Pids   *struct{ Current uint64 } `json:"pids"`
		Memory map[string]any            `json:"memory"`
		CPU    map[string]any            `json:"cpu"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("ctr tasks metrics --format json: %v\n%s", err, raw)
	}
	if m.Pids == nil || m.Pids.Current != 1 {
		t.Errorf("metrics of t3 (one sleep process): pids %+v, want current 1\n%s", m.Pids, raw)
	}
	if len(m.Memory) == 0 || len(m.CPU) == 0 {
		t.Errorf("metrics of t3 have no memory or cpu figures:\n%s", raw)
	}
	if table := d.mustCtr("tasks", "metrics", "t3"); !strings.Contains(table, "t3") || !strings.Contains(table, "pids.current") {
		t.Errorf("ctr tasks metrics t3 prints no table of t3's metrics:\n%s", table)
	}

	d.mustCtr("tasks", "kill", "-s", "SIGKILL", "t3")
	d.waitTaskStatus("t3", "STOPPED")
	if out := d.mustCtr("tasks", "rm", "t3"); !strings.Contains(out, "137") {
		t.Errorf("ctr tasks rm of a SIGKILLed task does not report exit code 137:\n%s", out)
	}
	d.mustCtr("containers", "rm", "t3")
	d.requireNothingLeft("default")
}

func TestCtrRunWithTerminalDrivenByTmux(t *testing.T) {
	tmux := requireTool(t, "tmux", "tmux")
	d := startTasksDaemon(t)
	// A tmux server of its own, so nothing of the user's tmux is touched.
	sock := filepath.Base(d.dir)
	tm := func(args ...string) (string, error) {
		out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { _, _ = tm("kill-server") })
	exitFile := filepath.Join(t.TempDir(), "exit")
	script := fmt.Sprintf("ctr --address %s run -t --rm %s t4 sh; echo \"exit=$?\" > %s", d.address, busyboxRef, exitFile)
	if out, err := tm("new-session", "-d", "-s", "t4", "-x", "120", "-y", "40", script); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	pane := func() string {
		out, _ := tm("capture-pane", "-p", "-t", "t4")
		return out
	}
	waitPane := func(what string, cond func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			p := pane()
			if cond(p) {
				return
			}
			if _, err := os.Stat(exitFile); err == nil || time.Now().After(deadline) {
				b, _ := os.ReadFile(exitFile)
				t.Fatalf("waiting for %s in the terminal; it shows:\n%s\n(exit file: %q)", what, p, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// busybox sh prompts with "/ # " as root.
	waitPane("the shell's prompt", func(p string) bool { return strings.Contains(p, "#") })
	if out, err := tm("send-keys", "-t", "t4", "-l", "echo $((6*7))"); err != nil {
		t.Fatalf("tmux send-keys: %v\n%s", err, out)
	}
	if out, err := tm("send-keys", "-t", "t4", "Enter"); err != nil {
		t.Fatalf("tmux send-keys: %v\n%s", err, out)
	}
	waitPane("42 on a line of its own", func(p string) bool {
		for _, l := range strings.Split(p, "\n") {
			if strings.TrimSpace(l) == "42" {
				return true
			}
		}
		return false
	})
	if out, err := tm("send-keys", "-t", "t4", "-l", "exit 3"); err != nil {
		t.Fatalf("tmux send-keys: %v\n%s", err, out)
	}
	if out, err := tm("send-keys", "-t", "t4", "Enter"); err != nil {
		t.Fatalf("tmux send-keys: %v\n%s", err, out)
	}
	var got []byte
	waitFor(t, 20*time.Second, "ctr run -t to exit after `exit 3`", func() bool {
		b, err := os.ReadFile(exitFile)
		got = b
		return err == nil && len(b) > 0
	})
	if strings.TrimSpace(string(got)) != "exit=3" {
		t.Fatalf("ctr run -t ... sh ended with %q after `exit 3`, want exit=3", got)
	}
	d.requireNothingLeft("default")
}

func TestGoClientRunsContainerAndReadsItsOutput(t *testing.T) {
	d := startTasksDaemon(t)
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "flotilla-go"), time.Minute)
	defer cancel()

	_, archive := imageArchive(t, testimage.WithName(busyboxRef))
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil {
		t.Fatalf("client.Import: %v", err)
	}
	if len(imgs) != 1 || imgs[0].Name != busyboxRef {
		t.Fatalf("client.Import returned %v, want the one image %s", imgs, busyboxRef)
	}
	image := containerd.NewImage(c, imgs[0])
	if err := image.Unpack(ctx, ""); err != nil {
		t.Fatalf("unpack: %v", err)
	}

	ctr, err := c.NewContainer(ctx, "go1",
		containerd.WithNewSnapshot("go1-snapshot", image),
		containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("echo", "from-go")))
	if err != nil {
		t.Fatalf("NewContainer: %v", err)
	}
	var buf syncBuffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &buf, &buf), cio.WithFIFODir(t.TempDir())))
	if err != nil {
		t.Fatalf("NewTask: %v", err)
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	started := time.Now()
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var st containerd.ExitStatus
	select {
	case st = <-exitCh:
	case <-ctx.Done():
		t.Fatal("the task never exited")
	}
	code, at, err := st.Result()
	if err != nil || code != 0 {
		t.Errorf("exit status %d (%v), want 0", code, err)
	}
	if at.Before(started.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("exit time %s is not between start (%s) and now", at, started)
	}
	del, err := task.Delete(ctx)
	if err != nil {
		t.Fatalf("task Delete: %v", err)
	}
	if del.ExitCode() != 0 {
		t.Errorf("Delete reports exit status %d, want 0", del.ExitCode())
	}
	if got := buf.String(); got != "from-go\n" {
		t.Errorf("task output %q, want %q", got, "from-go\n")
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatalf("container Delete: %v", err)
	}
	d.requireNothingLeft("flotilla-go")
}

// taskEvent is a task event reduced to what ordering checks compare.
type taskEvent struct {
	topic, container, process string
	status                    uint32
}

func (e taskEvent) String() string {
	s := e.topic
	if e.process != "" && e.process != e.container {
		s += "(" + e.process + ")"
	}
	if e.topic == "/tasks/exit" || e.topic == "/tasks/delete" {
		s += fmt.Sprintf("=%d", e.status)
	}
	return s
}

func reduceTaskEvent(t *testing.T, topic string, v any) taskEvent {
	switch e := v.(type) {
	case *eventstypes.TaskCreate:
		return taskEvent{topic: topic, container: e.ContainerID}
	case *eventstypes.TaskStart:
		return taskEvent{topic: topic, container: e.ContainerID}
	case *eventstypes.TaskExit:
		return taskEvent{topic: topic, container: e.ContainerID, process: e.ID, status: e.ExitStatus}
	case *eventstypes.TaskDelete:
		return taskEvent{topic: topic, container: e.ContainerID, process: e.ID, status: e.ExitStatus}
	case *eventstypes.TaskExecAdded:
		return taskEvent{topic: topic, container: e.ContainerID, process: e.ExecID}
	case *eventstypes.TaskExecStarted:
		return taskEvent{topic: topic, container: e.ContainerID, process: e.ExecID}
	case *eventstypes.TaskPaused:
		return taskEvent{topic: topic, container: e.ContainerID}
	case *eventstypes.TaskResumed:
		return taskEvent{topic: topic, container: e.ContainerID}
	case *eventstypes.TaskOOM:
		return taskEvent{topic: topic, container: e.ContainerID}
	}
	t.Errorf("event %s has unexpected type %T", topic, v)
	return taskEvent{topic: topic}
}

func TestTaskEventsReachSubscribersInOrder(t *testing.T) {
	d := startTasksDaemon(t)
	sub := subscribeSynced(t, d.client(), `topic~="^/tasks/"`)

	// ctr events, as a user would watch.
	ctrEvents := exec.Command("ctr", "--address", d.address, "events")
	var ctrOut syncBuffer
	ctrEvents.Stdout, ctrEvents.Stderr = &ctrOut, &ctrOut
	if err := ctrEvents.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ctrEvents.Process.Kill(); _ = ctrEvents.Wait() }()
	// ctr events has subscribed once it sees an event published after
	// it started.
	waitFor(t, 10*time.Second, "ctr events to subscribe", func() bool {
		d.mustCtr("namespaces", "label", "default", "probe="+strconv.FormatInt(time.Now().UnixNano(), 10))
		time.Sleep(100 * time.Millisecond)
		return strings.Contains(ctrOut.String(), "/namespaces/update")
	})

	d.mustCtr("run", "-d", busyboxRef, "ev1", "sleep", "300")
	d.mustCtr("tasks", "exec", "--exec-id", "e1", "ev1", "true")
	d.mustCtr("tasks", "pause", "ev1")
	d.mustCtr("tasks", "resume", "ev1")
	d.mustCtr("tasks", "kill", "-s", "SIGKILL", "ev1")
	d.waitTaskStatus("ev1", "STOPPED")
	d.mustCtr("tasks", "rm", "ev1")
	d.mustCtr("containers", "rm", "ev1")

	want := []string{
		"/tasks/create", "/tasks/start",
		"/tasks/exec-added(e1)", "/tasks/exec-started(e1)", "/tasks/exit(e1)=0",
		"/tasks/paused", "/tasks/resumed",
		"/tasks/exit=137", "/tasks/delete=137",
	}
	var got []string
	for len(got) < len(want) || got[len(got)-1] != "/tasks/delete=137" {
		env := sub.next(10 * time.Second)
		e := reduceTaskEvent(t, env.Topic, decodeEvent(t, env))
		if e.container != "ev1" {
			continue
		}
		if env.Namespace != "default" {
			t.Errorf("event %s carries namespace %q, want default", env.Topic, env.Namespace)
		}
		got = append(got, e.String())
		if len(got) > len(want)+5 {
			break
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("task events of ev1:\n got  %v\n want %v", got, want)
	}

	// ctr events prints each topic, in the same order.
	waitFor(t, 10*time.Second, "ctr events to print /tasks/delete", func() bool {
		return strings.Contains(ctrOut.String(), "/tasks/delete")
	})
	printed := ctrOut.String()
	last := -1
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/paused", "/tasks/resumed", "/tasks/delete"} {
		i := strings.Index(printed, topic)
		if i < 0 || i < last {
			t.Errorf("ctr events does not print %s after the events before it:\n%s", topic, printed)
			break
		}
		last = i
	}
	d.requireNothingLeft("default")
}

// initPid is the pid of a task's init process, from `ctr tasks ls`.
func (d *daemon) initPid(id string) int {
	d.t.Helper()
	out := d.mustCtr("tasks", "ls")
	pid, err := strconv.Atoi(taskRows(out)[id][0])
	if err != nil {
		d.t.Fatalf("no pid for task %s in ctr tasks ls:\n%s", id, out)
	}
	return pid
}

// processGone reports whether pid has exited (a zombie counts as gone).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// goWaitStatus waits for a task with containerd's Go client and returns
// its exit status.
func goWaitStatus(t *testing.T, c *containerd.Client, id string) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 20*time.Second)
	defer cancel()
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatalf("LoadContainer %s: %v", id, err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("Task of %s: %v", id, err)
	}
	ch, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait on %s: %v", id, err)
	}
	select {
	case st := <-ch:
		code, at, err := st.Result()
		if err != nil {
			t.Fatalf("Wait on %s: %v", id, err)
		}
		if at.IsZero() {
			t.Errorf("Wait on %s gives no exit time", id)
		}
		return code
	case <-ctx.Done():
		t.Fatalf("Wait on the stopped task %s did not return", id)
	}
	return 0
}

// checkSurvivors checks, after a restart, that "alive" still runs and is
// manageable and that "exited" kept its exit status 5, then removes both.
func checkSurvivors(t *testing.T, d *daemon, alive, exited string, alivePid int) {
	t.Helper()
	rows := d.waitTaskStatus(alive, "RUNNING")
	if rows[alive][0] != strconv.Itoa(alivePid) {
		t.Errorf("after the restart %s has pid %s, want its original %d", alive, rows[alive][0], alivePid)
	}
	d.waitTaskStatus(exited, "STOPPED")
	if code := goWaitStatus(t, d.client(), exited); code != 5 {
		t.Errorf("Wait on %s, which exited with 5 during the restart, gives %d", exited, code)
	}
	if out := d.mustCtr("tasks", "rm", exited); !strings.Contains(out, "exit code 5") {
		t.Errorf("ctr tasks rm %s does not report exit code 5:\n%s", exited, out)
	}
	if out := d.mustCtr("tasks", "exec", "--exec-id", "after-restart", alive, "echo", "still-here"); strings.TrimSpace(out) != "still-here" {
		t.Errorf("exec in %s after the restart printed %q", alive, out)
	}
	if ps := d.mustCtr("tasks", "ps", alive); !strings.Contains(ps, strconv.Itoa(alivePid)) {
		t.Errorf("ctr tasks ps %s after the restart does not list %d:\n%s", alive, alivePid, ps)
	}
	d.mustCtr("tasks", "kill", "-s", "SIGKILL", alive)
	d.waitTaskStatus(alive, "STOPPED")
	if code := goWaitStatus(t, d.client(), alive); code != 137 {
		t.Errorf("Wait on %s after SIGKILL gives %d, want 137", alive, code)
	}
	d.mustCtr("tasks", "rm", alive)
	d.mustCtr("containers", "rm", alive, exited)
	if !processGone(alivePid) {
		t.Errorf("the container process %d of %s still runs after kill and rm", alivePid, alive)
	}
	d.requireNothingLeft("default")
}

func TestRunningContainersSurviveTasksServiceKill(t *testing.T) {
	d := startTasksDaemon(t)
	d.mustCtr("run", "-d", busyboxRef, "alive", "sleep", "300")
	d.mustCtr("run", "-d", busyboxRef, "exits", "sh", "-c", "sleep 1; exit 5")
	alivePid, exitsPid := d.initPid("alive"), d.initPid("exits")
	old := d.servicePid("tasks")

	// Freeze tasks first so that the exit surely happens while it is down.
	if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the exiting container to exit", func() bool { return processGone(exitsPid) })
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the supervisor to restart tasks", func() bool {
		p := d.servicePidOrZero("tasks")
		return p != 0 && p != old
	})
	if processGone(alivePid) {
		t.Fatalf("container process %d died with the tasks service", alivePid)
	}
	checkSurvivors(t, d, "alive", "exits", alivePid)
}

func TestRunningContainersSurviveDaemonKill(t *testing.T) {
	first := startTasksDaemon(t)
	first.mustCtr("run", "-d", busyboxRef, "alive", "sleep", "300")
	first.mustCtr("run", "-d", busyboxRef, "exits", "sh", "-c", "sleep 1; exit 5")
	alivePid, exitsPid := first.initPid("alive"), first.initPid("exits")
	oldTasks := first.servicePid("tasks")

	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.wait(10 * time.Second)
	// The exit happens while no flotillad runs.
	waitFor(t, 15*time.Second, "the exiting container to exit", func() bool { return processGone(exitsPid) })
	if processGone(alivePid) {
		t.Fatalf("container process %d died with flotillad", alivePid)
	}

	second := newDaemon(t, sameDirsAs(first)).start()
	t.Cleanup(second.reapLeftovers)
	// The new flotillad reattaches to tasks, which saw the exit itself.
	if p := second.servicePid("tasks"); p != oldTasks {
		t.Fatalf("the new flotillad runs tasks as pid %d, want the reattached %d", p, oldTasks)
	}
	checkSurvivors(t, second, "alive", "exits", alivePid)
}

func TestWaitIsNotCutShortByCallTimeouts(t *testing.T) {
	d := startTasksDaemon(t)
	const sleep = 35 * time.Second
	type result struct {
		code int
		err  error
		out  string
		took time.Duration
	}
	ctrDone := make(chan result, 1)
	begin := time.Now()
	go func() {
		cmd := exec.Command("ctr", "--address", d.address, "run", "--rm", busyboxRef, "w1", "sleep", strconv.Itoa(int(sleep/time.Second)))
		out, err := cmd.CombinedOutput()
		ctrDone <- result{code: exitCode(err), err: err, out: string(out), took: time.Since(begin)}
	}()

	// The Go client waits on the same task, with no deadline of its own.
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	var task containerd.Task
	waitFor(t, 20*time.Second, "task w1 to start", func() bool {
		ctr, err := c.LoadContainer(ctx, "w1")
		if err != nil {
			return false
		}
		tk, err := ctr.Task(ctx, nil)
		if err != nil {
			return false
		}
		st, err := tk.Status(ctx)
		if err != nil || st.Status != containerd.Running {
			return false
		}
		task = tk
		return true
	})
	ch, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait on w1: %v", err)
	}
	select {
	case st := <-ch:
		code, _, err := st.Result()
		if err != nil || code != 0 {
			t.Errorf("Go client Wait on w1: status %d, %v; want 0", code, err)
		}
		if took := time.Since(begin); took < sleep-time.Second {
			t.Errorf("Go client Wait returned after %s, before the task's %s sleep ended", took, sleep)
		}
	case <-time.After(sleep + 30*time.Second):
		t.Fatal("Go client Wait on w1 did not return")
	}
	select {
	case r := <-ctrDone:
		if r.err != nil {
			t.Errorf("ctr run --rm ... sleep 35 failed after %s: %v\n%s", r.took, r.err, r.out)
		}
		if r.took < sleep {
			t.Errorf("ctr run --rm ... sleep 35 returned after %s", r.took)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ctr run --rm did not return after the task exited")
	}
	d.requireNothingLeft("default")
}

// shimOf is the pid of the shim whose child is the process pid.
func (d *daemon) shimOf(pid int) int {
	d.t.Helper()
	for _, s := range d.shimPids() {
		for _, p := range processes() {
			if p.pid == pid && p.ppid == s {
				return s
			}
		}
	}
	d.t.Fatalf("no shim of %s is the parent of process %d", d.address, pid)
	return 0
}

func TestDeadShimIsCleanedUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		// whileTasksDown kills the shim while the tasks service is
		// frozen and then restarts the service.
		whileTasksDown bool
	}{
		{name: "while tasks runs"},
		{name: "while tasks is down", whileTasksDown: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startTasksDaemon(t)
			sub := subscribeSynced(t, d.client(), `topic~="^/tasks/(exit|delete)"`)
			d.mustCtr("run", "-d", busyboxRef, "orphan", "sleep", "300")
			pid := d.initPid("orphan")
			shimPid := d.shimOf(pid)
			old := d.servicePid("tasks")
			if tc.whileTasksDown {
				if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
			}
			if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the shim to die", func() bool { return processGone(shimPid) })
			if tc.whileTasksDown {
				if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 30*time.Second, "the supervisor to restart tasks", func() bool {
					p := d.servicePidOrZero("tasks")
					return p != 0 && p != old
				})
			}
			// Like containerd, the task of a dead shim is deleted (its
			// container process killed) and its exit and delete published.
			var topics []string
			for len(topics) < 2 {
				env := sub.next(20 * time.Second)
				e := reduceTaskEvent(t, env.Topic, decodeEvent(t, env))
				if e.container == "orphan" {
					topics = append(topics, e.topic)
				}
			}
			if strings.Join(topics, " ") != "/tasks/exit /tasks/delete" {
				t.Errorf("events for the task of the dead shim: %v, want /tasks/exit /tasks/delete", topics)
			}
			waitFor(t, 10*time.Second, "the container process of the dead shim to be killed", func() bool { return processGone(pid) })
			waitFor(t, 10*time.Second, "the task to disappear from ctr tasks ls", func() bool {
				_, listed := taskRows(d.mustCtr("tasks", "ls"))["orphan"]
				return !listed
			})
			d.mustCtr("containers", "rm", "orphan")
			d.requireNothingLeft("default")
		})
	}
}
