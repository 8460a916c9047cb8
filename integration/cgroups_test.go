package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// memoryCgroup is the directory of a process's memory cgroup, whichever
// cgroup version the machine runs, and whether it is cgroup v2.
func memoryCgroup(t *testing.T, pid int) (string, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	v2 := unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if v2 && f[1] == "" {
			return filepath.Join("/sys/fs/cgroup", f[2]), true
		}
		for _, c := range strings.Split(f[1], ",") {
			if !v2 && c == "memory" {
				return filepath.Join("/sys/fs/cgroup/memory", f[2]), false
			}
		}
	}
	t.Fatalf("no memory cgroup for pid %d in:\n%s", pid, b)
	return "", false
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// requireCgroups skips the test, with flotillad's reason, when it runs its
// services without cgroups.
func requireCgroups(t *testing.T, d *daemon) {
	t.Helper()
	for _, l := range strings.Split(d.out.String(), "\n") {
		if strings.Contains(l, "cgroups unavailable") {
			t.Skipf("flotillad cannot use cgroups here: %s", l)
		}
	}
}

type serviceRowOOM struct {
	serviceRow
	oomKills int
	lastExit string
}

// serviceRowsOOM parses `flotilla services` up to its LAST-EXIT column.
func serviceRowsOOM(t *testing.T, out string) map[string]serviceRowOOM {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "OOM-KILLS") {
		t.Fatalf("flotilla services printed no table with OOM-KILLS:\n%s", out)
	}
	base := serviceRows(t, out)
	rows := map[string]serviceRowOOM{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("short row %q in:\n%s", l, out)
		}
		n, err := strconv.Atoi(f[4])
		if err != nil {
			t.Fatalf("row %q: OOM-KILLS column: %v", l, err)
		}
		rows[f[0]] = serviceRowOOM{serviceRow: base[f[0]], oomKills: n, lastExit: f[5]}
	}
	return rows
}

func TestCgroupLimitsContainServicesAndAnOOMKilledServiceIsRestartedAndReported(t *testing.T) {
	d := newDaemon(t, withConfig(`
[services.metadata]
memory_limit = "64MiB"
cpu_limit = "1.5"
[services.content]
memory_limit = "512MiB"
`)).start()
	requireCgroups(t, d)

	// metadata runs in a cgroup of its own, with its limit.
	mpid := d.servicePid("metadata")
	mdir, v2 := memoryCgroup(t, mpid)
	if filepath.Base(mdir) != "metadata.service" {
		t.Fatalf("metadata (pid %d) runs in cgroup %s, want one of its own (.../metadata.service)", mpid, mdir)
	}
	limitFile, usageFile := "memory.limit_in_bytes", "memory.usage_in_bytes"
	if v2 {
		limitFile, usageFile = "memory.max", "memory.current"
	}
	if got := readTrim(t, filepath.Join(mdir, limitFile)); got != "67108864" {
		t.Errorf("metadata's %s = %s, want 67108864 (64MiB)", limitFile, got)
	}
	if v2 {
		if got := readTrim(t, filepath.Join(mdir, "cpu.max")); got != "150000 100000" {
			t.Errorf("metadata's cpu.max = %q, want \"150000 100000\"", got)
		}
	}
	cpid := d.servicePid("content")
	cdir, _ := memoryCgroup(t, cpid)
	if cdir == mdir || filepath.Dir(cdir) != filepath.Dir(mdir) {
		t.Fatalf("content runs in cgroup %s, metadata in %s: want siblings of their own", cdir, mdir)
	}

	// A runaway content: its limit is brought down to a little above what
	// it uses, then one 15 MiB write makes it need more. The kernel kills
	// it; flotillad restarts it and says why.
	usage, err := strconv.ParseInt(readTrim(t, filepath.Join(cdir, usageFile)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	tight := strconv.FormatInt(usage+4<<20, 10)
	if err := os.WriteFile(filepath.Join(cdir, limitFile), []byte(tight), 0); err != nil {
		t.Fatalf("lower content's memory limit to %s: %v", tight, err)
	}
	c := d.client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx = namespaces.WithNamespace(ctx, "cgroups")
	big := bytes.Repeat([]byte{7}, 15<<20)
	err = content.WriteBlob(ctx, c.ContentStore(), "oom", bytes.NewReader(big),
		ocispec.Descriptor{Size: int64(len(big)), Digest: digest.FromBytes(big)})
	t.Logf("15 MiB write into a content process limited to %s bytes: %v", tight, err)

	waitFor(t, 30*time.Second, "content restarted after its OOM kill", func() bool {
		pid := d.servicePidOrZero("content")
		return pid > 0 && pid != cpid && syscall.Kill(cpid, 0) != nil
	})
	if !strings.Contains(d.out.String(), "service content was killed for exceeding its memory limit") {
		t.Errorf("flotillad did not log content's OOM kill")
	}
	rows := serviceRowsOOM(t, d.flotilla("services"))
	if r := rows["content"]; r.oomKills != 1 || r.lastExit != "oom-killed" || r.restarts != 1 || r.state != "running" {
		t.Errorf("flotilla services: content %+v, want running with 1 restart, 1 OOM kill, last exit oom-killed", r)
	}
	if r := rows["metadata"]; r.oomKills != 0 || r.lastExit != "-" {
		t.Errorf("flotilla services: metadata %+v, want no OOM kill and no exit", r)
	}
	// The new process is in the same cgroup, with the configured limit
	// back (the test's is undone).
	npid := d.servicePid("content")
	if dir, _ := memoryCgroup(t, npid); dir != cdir {
		t.Errorf("restarted content runs in %s, want %s", dir, cdir)
	}
	if got := readTrim(t, filepath.Join(cdir, limitFile)); got != "536870912" {
		t.Errorf("content's %s after restart = %s, want the configured 536870912", limitFile, got)
	}

	// And it serves again, large writes included.
	small := []byte("after the oom kill")
	if err := content.WriteBlob(ctx, c.ContentStore(), "after", bytes.NewReader(small),
		ocispec.Descriptor{Size: int64(len(small)), Digest: digest.FromBytes(small)}); err != nil {
		t.Fatalf("write after content's restart: %v", err)
	}
	got, err := content.ReadBlob(ctx, c.ContentStore(), ocispec.Descriptor{Size: int64(len(small)), Digest: digest.FromBytes(small)})
	if err != nil || !bytes.Equal(got, small) {
		t.Fatalf("read after content's restart: %q, %v", got, err)
	}
	if err := content.WriteBlob(ctx, c.ContentStore(), "oom-again", bytes.NewReader(big),
		ocispec.Descriptor{Size: int64(len(big)), Digest: digest.FromBytes(big)}); err != nil && !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("15 MiB write within the configured limit: %v", err)
	}

	// Stopping the daemon removes the service cgroups.
	d.stop()
	if _, err := os.Stat(mdir); !os.IsNotExist(err) {
		t.Errorf("metadata's cgroup %s left behind after flotillad stopped (%v)", mdir, err)
	}
}

func TestCgroupShimsLeaveTheTasksServicesCgroup(t *testing.T) {
	d := startTasksDaemon(t)
	requireCgroups(t, d)
	d.mustCtr("run", "-d", busyboxRef, "cg1", "sleep", "300")
	defer func() {
		_, _ = d.ctr("tasks", "kill", "-s", "KILL", "cg1")
		d.waitTaskStatus("cg1", "STOPPED")
		d.mustCtr("tasks", "rm", "cg1")
		d.mustCtr("containers", "rm", "cg1")
	}()
	tdir, _ := memoryCgroup(t, d.servicePid("tasks"))
	shims := d.shimPids()
	if len(shims) == 0 {
		t.Fatal("no shim runs for the container")
	}
	for _, pid := range shims {
		dir, _ := memoryCgroup(t, pid)
		if dir == tdir {
			t.Errorf("shim %d stayed in the tasks service's cgroup %s", pid, tdir)
		}
		if want := filepath.Join(filepath.Dir(tdir), "shims"); dir != want {
			t.Errorf("shim %d runs in cgroup %s, want %s", pid, dir, want)
		}
	}
}
