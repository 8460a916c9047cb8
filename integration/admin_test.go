package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// flotilla runs the flotilla tool against the daemon and fails the test on
// error.
func (d *daemon) flotilla(args ...string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "flotilla"), append([]string{"--address", d.address}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("flotilla %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type serviceRow struct {
	state    string
	pid      int
	restarts int
}

// serviceRows parses `flotilla services`: NAME STATE PID RESTARTS ...
func serviceRows(t *testing.T, out string) map[string]serviceRow {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("flotilla services printed no table:\n%s", out)
	}
	rows := map[string]serviceRow{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 4 {
			t.Fatalf("short row %q in:\n%s", l, out)
		}
		pid, _ := strconv.Atoi(f[2])
		restarts, err := strconv.Atoi(f[3])
		if err != nil {
			t.Fatalf("row %q: restarts column: %v", l, err)
		}
		rows[f[0]] = serviceRow{state: f[1], pid: pid, restarts: restarts}
	}
	return rows
}

func TestAdminRestartIsGracefulAndServicesAndLogsShowIt(t *testing.T) {
	d := newDaemon(t).start()

	out := d.flotilla("services")
	rows := serviceRows(t, out)
	for _, name := range []string{"content", "metadata", "tasks"} {
		r, ok := rows[name]
		if !ok {
			t.Fatalf("flotilla services lists no %s:\n%s", name, out)
		}
		if r.state != "running" || r.pid <= 0 {
			t.Errorf("%s: state %q pid %d, want running with a pid:\n%s", name, r.state, r.pid, out)
		}
		if want := d.servicePid(name); r.pid != want {
			t.Errorf("%s: pid %d, introspection says %d", name, r.pid, want)
		}
	}
	before := rows["metadata"]

	// Clients keep calling metadata while it restarts; none may see an
	// error.
	c := d.client()
	var (
		calls, failed atomic.Int64
		mu            sync.Mutex
		firstErrs     []string
		stop          = make(chan struct{})
		wg            sync.WaitGroup
	)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				_, err := c.NamespaceService().List(ctx)
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if len(firstErrs) < 5 {
						firstErrs = append(firstErrs, err.Error())
					}
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "namespace calls to start", func() bool { return calls.Load() >= 50 })
	atRestart := calls.Load()
	// Three restarts in a row: more chances for a call to meet a process
	// on its way down.
	var restartOut string
	for i := 0; i < 3; i++ {
		restartOut = d.flotilla("restart", "metadata")
	}
	// Keep calling a little after the restart: the held calls and the
	// first ones to the new process.
	waitFor(t, 10*time.Second, "namespace calls after the restart", func() bool { return calls.Load() >= atRestart+100 })
	close(stop)
	wg.Wait()
	t.Logf("%s%d Namespaces.List calls, %d failed", restartOut, calls.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d of %d calls failed across a graceful restart of metadata; first errors:\n%s",
			failed.Load(), calls.Load(), strings.Join(firstErrs, "\n"))
	}

	after := serviceRows(t, d.flotilla("services"))["metadata"]
	if after.pid <= 0 || after.pid == before.pid {
		t.Errorf("metadata pid %d after restart, was %d: want a new process", after.pid, before.pid)
	}
	if after.restarts != before.restarts+3 || after.state != "running" {
		t.Errorf("metadata after 3 restarts: %+v, before: %+v; want running with 3 more restarts", after, before)
	}
	if !strings.Contains(restartOut, fmt.Sprintf("pid %d", after.pid)) {
		t.Errorf("restart reported %q, services says pid %d", restartOut, after.pid)
	}

	logs := d.flotilla("logs", "metadata", "-n", "200")
	for _, want := range []string{
		fmt.Sprintf("pid=%d", before.pid), // the first process's start
		"msg=stopping",                    // its graceful stop
		fmt.Sprintf("pid=%d", after.pid),  // the new one's start
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("flotilla logs metadata lacks %q:\n%s", want, logs)
		}
	}
	if n := len(strings.Split(strings.TrimSpace(d.flotilla("logs", "metadata", "-n", "2")), "\n")); n != 2 {
		t.Errorf("logs -n 2 printed %d lines", n)
	}
}
