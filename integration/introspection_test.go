package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/introspection/v1"
	containerd "github.com/containerd/containerd/v2/client"
)

// withRoot points the daemon at an existing root, so a second daemon can
// take over the first one's data.
func withRoot(root string) daemonOption {
	return func(d *daemon, args *[]string) {
		for i, a := range *args {
			if a == "--root" && i+1 < len(*args) {
				(*args)[i+1] = root
			}
		}
		d.root = root
	}
}

// introspectService returns the introspection entry of a service process.
func introspectService(t *testing.T, c *containerd.Client, id string) *api.Plugin {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx, "id=="+id)
	if err != nil {
		t.Fatalf("introspection of %s: %v", id, err)
	}
	for _, p := range resp.Plugins {
		// A service process; the gateway's own services (type
		// io.containerd.grpc.v1) have no socket of their own.
		if p.ID == id && (p.Type != "io.containerd.grpc.v1" || p.Exports["socket"] != "") {
			return p
		}
	}
	t.Fatalf("introspection lists no service %s: %v", id, resp.Plugins)
	return nil
}

func TestCtrPluginsListsServicesAndBuiltins(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	out := d.mustCtr("plugins", "ls")
	rows := map[string][]string{} // "type id" -> fields
	for _, l := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(l); len(f) >= 4 {
			rows[f[0]+" "+f[1]] = f
		}
	}
	for _, want := range []string{
		"io.containerd.content.v1 content",
		"io.containerd.metadata.v1 metadata",
		"io.containerd.grpc.v1 events",
		"io.containerd.grpc.v1 introspection",
		"io.containerd.grpc.v1 version",
	} {
		f, ok := rows[want]
		if !ok {
			t.Errorf("ctr plugins ls has no row %q:\n%s", want, out)
			continue
		}
		if status := f[len(f)-1]; status != "ok" {
			t.Errorf("ctr plugins ls shows %s with status %s:\n%s", want, status, out)
		}
	}
	// The gateway's own services, and the cri and tasks services, which
	// containerd lists under the same type (the tasks process's runtime
	// is io.containerd.runtime.v2 task, as containerd's).
	ids := strings.Fields(d.mustCtr("plugins", "ls", "-q", "type==io.containerd.grpc.v1"))
	sort.Strings(ids)
	if strings.Join(ids, " ") != "cri events introspection tasks version" {
		t.Errorf("ctr plugins ls -q type==io.containerd.grpc.v1 printed %q, want cri events introspection tasks version", ids)
	}
}

func TestIntrospectionExportsPidAndSocketOfEachService(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	for _, name := range []string{"content", "metadata"} {
		p := introspectService(t, c, name)
		if p.InitErr != nil {
			t.Errorf("%s reports init error %v", name, p.InitErr)
		}
		pid, err := strconv.Atoi(p.Exports["pid"])
		if err != nil || pid <= 0 {
			t.Errorf("%s exports pid %q (exports %v)", name, p.Exports["pid"], p.Exports)
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Errorf("%s's exported pid %d is not running: %v", name, pid, err)
		} else if argv0, _, _ := bytes.Cut(cmdline, []byte{0}); filepath.Base(string(argv0)) != "flotilla-"+name {
			t.Errorf("pid %d exported by %s runs %q, want flotilla-%s", pid, name, argv0, name)
		}

		sock := p.Exports["socket"]
		if sock == "" {
			t.Errorf("%s exports no socket (exports %v)", name, p.Exports)
			continue
		}
		fi, err := os.Stat(sock)
		if err != nil {
			t.Errorf("socket %s exported by %s: %v", sock, name, err)
			continue
		}
		if fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s exported by %s is not a socket: %v", sock, name, fi.Mode())
		}
		if perm := fi.Mode().Perm(); perm != 0o600 && perm != 0o660 {
			t.Errorf("socket %s of %s has mode %v, want 0600 or 0660", sock, name, perm)
		}
		if p.Exports["restarts"] != "0" {
			t.Errorf("%s exports restarts=%q on a fresh daemon, want 0", name, p.Exports["restarts"])
		}
	}

	// The gateway's own services belong to flotillad itself.
	resp, err := c.IntrospectionService().Plugins(context.Background(), "type==io.containerd.grpc.v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.Plugins {
		if p.Exports["socket"] != "" {
			continue // a service process of its own (cri, tasks)
		}
		if p.Exports["pid"] != strconv.Itoa(d.cmd.Process.Pid) {
			t.Errorf("built-in %s exports pid %q, want flotillad's %d", p.ID, p.Exports["pid"], d.cmd.Process.Pid)
		}
	}
}

func TestKilledServiceShowsNewPidAndOneMoreRestart(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	before := introspectService(t, c, "content")
	oldPid, _ := strconv.Atoi(before.Exports["pid"])
	restarts, err := strconv.Atoi(before.Exports["restarts"])
	if err != nil {
		t.Fatalf("content exports restarts %q: %v", before.Exports["restarts"], err)
	}
	if err := syscall.Kill(oldPid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 content (pid %d): %v", oldPid, err)
	}

	var after *api.Plugin
	waitFor(t, 5*time.Second, "content to come back under a new pid", func() bool {
		after = introspectService(t, c, "content")
		pid, _ := strconv.Atoi(after.Exports["pid"])
		return pid > 0 && pid != oldPid && after.InitErr == nil && syscall.Kill(pid, 0) == nil
	})
	if got := after.Exports["restarts"]; got != strconv.Itoa(restarts+1) {
		t.Errorf("content exports restarts=%s after one kill -9, want %d", got, restarts+1)
	}
	if after.Exports["socket"] == "" {
		t.Error("the restarted content exports no socket")
	} else if _, err := os.Stat(after.Exports["socket"]); err != nil {
		t.Errorf("socket of the restarted content: %v", err)
	}
	if got := introspectService(t, c, "metadata").Exports["restarts"]; got != "0" {
		t.Errorf("metadata exports restarts=%s after content alone was killed, want 0", got)
	}
}

func TestServerUUIDSurvivesDaemonRestart(t *testing.T) {
	first := newDaemon(t).start()
	ctx := context.Background()
	resp, err := first.client().IntrospectionService().Server(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp.UUID == "" {
		t.Fatal("Server() returned no UUID")
	}
	if resp.Pid != uint64(first.cmd.Process.Pid) {
		t.Errorf("Server() pid %d, want flotillad's %d", resp.Pid, first.cmd.Process.Pid)
	}
	// Asking twice changes nothing.
	if again, err := first.client().IntrospectionService().Server(ctx); err != nil || again.UUID != resp.UUID {
		t.Errorf("second Server() call: %v, %v; want UUID %s", again, err, resp.UUID)
	}
	first.stop()

	second := newDaemon(t, withRoot(first.root)).start()
	resp2, err := second.client().IntrospectionService().Server(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp2.UUID != resp.UUID {
		t.Errorf("server UUID changed across a restart on the same root: %s, then %s", resp.UUID, resp2.UUID)
	}
	if resp2.Pid != uint64(second.cmd.Process.Pid) {
		t.Errorf("Server() pid after restart %d, want the new flotillad's %d", resp2.Pid, second.cmd.Process.Pid)
	}

	// A daemon on another root is another server.
	other := newDaemon(t).start()
	resp3, err := other.client().IntrospectionService().Server(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp3.UUID == resp.UUID {
		t.Errorf("two daemons on different roots share server UUID %s", resp.UUID)
	}
}

// The relays (content, metadata) run their Go runtime on one CPU by
// default, the others on every CPU; max_procs says otherwise per service.
func TestServicesRunOnTheCPUsTheirMaxProcsSays(t *testing.T) {
	d := newDaemon(t, withConfig("[services.tasks]\nmax_procs = 1\n[services.content]\nmax_procs = 3\n")).start()
	c := d.client()
	all := strconv.Itoa(runtime.NumCPU())
	for name, want := range map[string]string{"content": "3", "metadata": "1", "tasks": "1", "overlayfs": all} {
		if got := introspectService(t, c, name).Exports["gomaxprocs"]; got != want {
			t.Errorf("%s exports gomaxprocs %q, want %q", name, got, want)
		}
	}
}
