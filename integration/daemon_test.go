package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDaemonRunsOneProcessPerService(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()

	for _, name := range []string{"content", "metadata"} {
		pid := d.servicePid(name)
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			t.Fatalf("service %s (pid %d) is not running: %v", name, pid, err)
		}
		// One executable for the graph: the service is told by argv[0].
		if filepath.Base(exe) != "flotillad" {
			t.Errorf("pid %d runs %s, want flotillad (the one executable of every service)", pid, exe)
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != "flotilla-"+name {
			t.Errorf("pid %d runs as %q, want flotilla-%s", pid, argv0, name)
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		fields := strings.Fields(string(stat))
		if len(fields) < 4 || fields[3] != fmt.Sprint(d.cmd.Process.Pid) {
			t.Errorf("service %s is not a child of flotillad (stat: %.80s)", name, stat)
		}
		sock := filepath.Join(d.state, name+".sock")
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatalf("socket of %s: %v", name, err)
		}
		if fi.Mode()&0o007 != 0 {
			t.Errorf("socket %s is world-accessible: %v", sock, fi.Mode())
		}
	}
	fi, err := os.Stat(d.address)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o007 != 0 {
		t.Errorf("client socket is world-accessible: %v", fi.Mode())
	}

	out := d.mustCtr("version")
	if !strings.Contains(out, "Server:") {
		t.Errorf("ctr version printed no server part:\n%s", out)
	}
	out = d.mustCtr("plugins", "ls")
	for _, want := range []string{"io.containerd.content.v1", "io.containerd.metadata.v1"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctr plugins ls does not list %s:\n%s", want, out)
		}
	}
}

func TestStartupFailureNamesTheService(t *testing.T) {
	requireRoot(t)
	broken := filepath.Join(t.TempDir(), "broken-metadata")
	script := "#!/bin/sh\necho 'meta.db is on fire' >&2\nexit 3\n"
	if err := os.WriteFile(broken, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, withConfig(fmt.Sprintf("[services.metadata]\npath = %q\n", broken)))
	err := d.startErr()
	if err == nil {
		t.Fatal("flotillad became ready although metadata cannot start")
	}
	if werr := d.wait(20 * time.Second); werr == nil {
		t.Fatal("flotillad exited 0 although a required service failed")
	}
	out := d.out.String()
	if !strings.Contains(out, "service metadata failed to start") || !strings.Contains(out, "meta.db is on fire") {
		t.Errorf("the error does not name the service and its cause:\n%s", out)
	}
	// What was started before metadata failed is stopped, and not
	// started again by its watcher as if it had crashed.
	time.Sleep(time.Second)
	if left := serviceProcessesOf(d.dir); len(left) > 0 {
		t.Errorf("service processes left running after the failed start: %v", left)
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// serviceProcessesOf lists the live service processes a daemon in dir
// started: their environment names its directories.
func serviceProcessesOf(dir string) []int {
	var pids []int
	for _, p := range processes() {
		if p.state == 'Z' {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.pid), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if strings.HasPrefix(kv, "FLOTILLA_SERVICE_ENV=") && strings.Contains(kv, dir+"/") {
				pids = append(pids, p.pid)
				break
			}
		}
	}
	return pids
}

func TestTwoDaemonsRunSideBySide(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	a := newDaemon(t).start()
	b := newDaemon(t).start()
	a.mustCtr("namespaces", "create", "only-in-a")
	if out := b.mustCtr("namespaces", "ls", "-q"); strings.Contains(out, "only-in-a") {
		t.Errorf("a namespace created in one daemon shows in the other:\n%s", out)
	}
	if a.servicePid("content") == b.servicePid("content") {
		t.Error("both daemons share one content process")
	}
}

func TestSecondDaemonOnSameStateIsRefused(t *testing.T) {
	a := newDaemon(t).start()
	cmd := exec.Command(filepath.Join(binDir, "flotillad"), "--root", a.root, "--state", a.state, "--address", a.address+"2")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another flotillad") {
		t.Errorf("second daemon on the same state: err=%v\n%s", err, out)
	}
}

func TestSigtermStopsServicesAndExitsZero(t *testing.T) {
	d := newDaemon(t).start()
	pids := []int{d.servicePid("content"), d.servicePid("metadata")}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.wait(20 * time.Second); err != nil {
		t.Fatalf("flotillad on SIGTERM: %v", err)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("service pid %d still runs after flotillad exited", pid)
		}
	}
	if _, err := os.Stat(d.address); !os.IsNotExist(err) {
		t.Errorf("client socket left behind: %v", err)
	}
	out := d.out.String()
	stopped := func(name string) int {
		if loc := regexp.MustCompile(`msg="service stopped".* name=` + name + `\b`).FindStringIndex(out); loc != nil {
			return loc[0]
		}
		return -1
	}
	mi, ci := stopped("metadata"), stopped("content")
	if mi < 0 || ci < 0 || mi > ci {
		t.Errorf("services not stopped in reverse dependency order (metadata first):\n%s", out)
	}
}

func TestConfigDefaultPrintsFullConfig(t *testing.T) {
	out, err := exec.Command(filepath.Join(binDir, "flotillad"), "config", "default").CombinedOutput()
	if err != nil {
		t.Fatalf("flotillad config default: %v\n%s", err, out)
	}
	for _, want := range []string{"root = '/var/lib/flotilla'", "state = '/run/flotilla'", "[services.metadata", "[timeouts]"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("default config lacks %q:\n%s", want, out)
		}
	}
}
