package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// flotillaCode runs the flotilla tool and returns its output and exit code.
func (d *daemon) flotillaCode(args ...string) (string, int) {
	d.t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "flotilla"), append([]string{"--address", d.address}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("flotilla %s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

func TestCLIVersionListingsTopAndDoctorOnARealDaemon(t *testing.T) {
	requireRoot(t)
	d := newDaemon(t).start()

	if out := d.flotillaOut("--version"); !regexp.MustCompile(`^flotilla version v?\d+\.\d+\.\d+`).MatchString(out) {
		t.Errorf("--version printed %q, want a semantic version", out)
	}

	var services []struct {
		Name        string `json:"name"`
		State       string `json:"state"`
		Pid         int    `json:"pid"`
		MemoryBytes uint64 `json:"memoryBytes"`
	}
	out := d.flotillaOut("services", "-o", "json")
	if err := json.Unmarshal([]byte(out), &services); err != nil {
		t.Fatalf("services -o json is no JSON array: %v\n%s", err, out)
	}
	byName := map[string]int{}
	for _, s := range services {
		byName[s.Name] = s.Pid
	}
	for _, name := range []string{"content", "metadata", "tasks"} {
		if want := d.servicePid(name); byName[name] != want {
			t.Errorf("services -o json gives %s pid %d, introspection %d:\n%s", name, byName[name], want, out)
		}
	}
	if y := d.flotillaOut("services", "-o", "yaml"); !strings.Contains(y, "- name: metadata\n") {
		t.Errorf("services -o yaml lacks metadata:\n%s", y)
	}
	if q := strings.Fields(d.flotillaOut("services", "-q")); len(q) != len(services) {
		t.Errorf("services -q printed %q, want the %d names", q, len(services))
	}
	// The table's columns are one word each, the error last.
	lines := strings.Split(strings.TrimSpace(d.flotillaOut("services")), "\n")
	header := strings.Fields(lines[0])
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) != len(header)-1 { // no error: its column is empty
			t.Errorf("row %q has %d columns, the header %d (less ERROR)", l, len(f), len(header))
		}
	}

	// top --once: one frame, a row per service with its pid and figures.
	top := d.flotillaOut("top", "--once", "--interval", "500ms")
	t.Logf("flotilla top --once:\n%s", top)
	mpid := strconv.Itoa(d.servicePid("metadata"))
	found := false
	for _, l := range strings.Split(top, "\n") {
		f := strings.Fields(l)
		if len(f) >= 9 && f[0] == "metadata" {
			found = true
			if f[1] != "running" || f[2] != mpid || f[4] == "-" || f[5] == "-" || f[6] == "-" {
				t.Errorf("metadata's row %q: want running, pid %s, CPU, memory and calls/s", l, mpid)
			}
		}
	}
	if !found {
		t.Errorf("top --once has no metadata row:\n%s", top)
	}

	// doctor: this machine runs Flotilla, so nothing required fails.
	doc, code := d.flotillaCode("doctor", "--root", d.root)
	t.Logf("flotilla doctor:\n%s", doc)
	if code != 0 {
		t.Errorf("doctor exited %d on a machine that runs Flotilla:\n%s", code, doc)
	}
	for _, want := range []string{"overlayfs", "runc", "shim", "cgroups", "socket"} {
		if !regexp.MustCompile(`(?m)^PASS\s+` + want).MatchString(doc) {
			t.Errorf("doctor does not pass %s:\n%s", want, doc)
		}
	}

	// logs -f follows the service across a restart.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	follow := exec.CommandContext(ctx, filepath.Join(binDir, "flotilla"), "--address", d.address, "logs", "-f", "-n", "1", "metadata")
	var followed bytes.Buffer
	follow.Stdout = &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	d.flotilla("restart", "metadata")
	_ = follow.Wait() // ended by the context
	if newPid := d.servicePid("metadata"); !strings.Contains(followed.String(), "msg=stopping") ||
		!strings.Contains(followed.String(), fmt.Sprintf("pid=%d", newPid)) {
		t.Errorf("logs -f did not show metadata stopping and its new process (pid %d) start:\n%s", newPid, followed.String())
	}

	// Exit codes: a usage error is 2, a failed call 1, help 0.
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"services", "--no-such-flag"}, 2},
		{[]string{"no-such-command"}, 2},
		{[]string{"logs"}, 2},
		{[]string{"services", "-o", "xml"}, 2},
		{[]string{"logs", "no-such-service"}, 1},
		{[]string{"--help"}, 0},
		{[]string{"completion", "bash"}, 0},
	} {
		if out, code := d.flotillaCode(c.args...); code != c.code {
			t.Errorf("flotilla %s exited %d, want %d:\n%s", strings.Join(c.args, " "), code, c.code, out)
		}
	}
}
