package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// unitMiB is the memory workloads' unit. Their samples are byte counts held
// in the same time.Duration slices as every other workload's, so that the
// median, formatting and ratio code is shared: formatIn(bytes, unitMiB)
// prints MiB.
const unitMiB time.Duration = 1 << 20

// procInfo is one process of a daemon's footprint.
type procInfo struct {
	pid  int
	exe  string
	rss  int64 // bytes
	shim bool
}

// footprint is every process that makes up a daemon: its main process and
// all its descendants (Flotilla's service processes), and its runtime v2
// shims, which daemonise away from the daemon's process tree. A shim is a
// containerd-shim-* process started for this daemon: one below the daemon
// in the tree, or one whose command line (the -address flag) or working
// directory (its bundle) is inside the daemon's temp directory. Processes
// below a shim (the containers' own) are not the daemon's.
func (d *daemon) footprint() ([]procInfo, error) {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil, errors.New("daemon has no process")
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	var shims []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, ok := parentPID(pid)
		if !ok {
			continue // gone meanwhile
		}
		children[ppid] = append(children[ppid], pid)
		if isShim(pid) && d.ownsShim(pid) {
			shims = append(shims, pid)
		}
	}
	seen := map[int]bool{}
	var out []procInfo
	add := func(pid int, shim bool) {
		if seen[pid] {
			return
		}
		rss, ok := vmRSS(pid)
		if !ok {
			return // exited between the listing and now
		}
		seen[pid] = true
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		out = append(out, procInfo{pid: pid, exe: exe, rss: rss, shim: shim})
	}
	var walk func(pid int)
	walk = func(pid int) {
		shim := isShim(pid)
		add(pid, shim)
		if shim {
			return
		}
		for _, c := range children[pid] {
			walk(c)
		}
	}
	walk(d.cmd.Process.Pid)
	for _, pid := range shims {
		add(pid, true)
	}
	return out, nil
}

// ownsShim tells whether shim process pid was started for d: its arguments
// or its working directory point into d's temp directory.
func (d *daemon) ownsShim(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err == nil && bytes.Contains(cmdline, []byte(d.dir+"/")) {
		return true
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && strings.HasPrefix(cwd, d.dir+"/")
}

func isShim(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.HasPrefix(filepath.Base(exe), "containerd-shim")
}

// parentPID reads the PPid line of /proc/<pid>/status.
func parentPID(pid int) (int, bool) {
	v, ok := statusField(pid, "PPid:")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

// vmRSS is the VmRSS of pid in bytes. A process without the line (a zombie,
// a kernel thread) has none, and counts as gone.
func vmRSS(pid int) (int64, bool) {
	v, ok := statusField(pid, "VmRSS:")
	if !ok {
		return 0, false
	}
	kb, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
	return kb << 10, err == nil
}

func statusField(pid int, key string) (string, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), key); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// memoryBench sums the RSS of a daemon's footprint, idle (the run image
// imported, nothing running) or with containers running `sleep 300`,
// started once when the workload is prepared and removed by cleanup.
type memoryBench struct {
	d          *daemon
	containers []*container
	// Medians by process kind for the progress line: where the memory is.
	mainDs, serviceDs, shimDs []time.Duration
}

func newMemoryBench(ctx context.Context, d *daemon, img *testimage.Image, running int) (_ *memoryBench, err error) {
	i, err := d.runImage(ctx, img)
	if err != nil {
		return nil, err
	}
	b := &memoryBench{d: d}
	defer func() {
		if err != nil {
			_ = b.cleanup(context.WithoutCancel(ctx))
		}
	}()
	for n := range running {
		ct, err := startContainer(ctx, d, i, fmt.Sprintf("bench-mem-%d", n), "sleep", "300")
		if err != nil {
			return nil, err
		}
		b.containers = append(b.containers, ct)
	}
	// Let the shims finish starting up (and their first garbage
	// collections run) before the first reading.
	time.Sleep(2 * time.Second)
	return b, nil
}

func (b *memoryBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	// Spread the readings over a few seconds rather than take them back to
	// back: a garbage collection mid-reading then moves one sample, not all.
	time.Sleep(500 * time.Millisecond)
	// Every container must still be running, or the figure would be of
	// fewer shims than it claims.
	for _, ct := range b.containers {
		st, err := ct.t.Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", ct.c.ID(), err)
		}
		if st.Status != client.Running {
			return nil, fmt.Errorf("container %s is %s, want running", ct.c.ID(), st.Status)
		}
	}
	procs, err := b.d.footprint()
	if err != nil {
		return nil, err
	}
	var total, main, services, shims int64
	var nShims int
	var shimExes []string
	for _, p := range procs {
		total += p.rss
		switch {
		case p.pid == b.d.cmd.Process.Pid:
			main += p.rss
		case p.shim:
			shims += p.rss
			nShims++
			if !slices.Contains(shimExes, p.exe) {
				shimExes = append(shimExes, p.exe)
			}
		default:
			services += p.rss
		}
	}
	// One shim per container (runc.v2 shims are not shared here): a
	// different count means the accounting missed or miscounted some.
	if nShims != len(b.containers) {
		return nil, fmt.Errorf("found %d shims of %s for %d running containers", nShims, b.d.name, len(b.containers))
	}
	if len(shimExes) > 0 && b.d.shimBinary != "" && (len(shimExes) != 1 || shimExes[0] != b.d.shimBinary) {
		return nil, fmt.Errorf("%s runs shims %v, want %s", b.d.name, shimExes, b.d.shimBinary)
	}
	if iter == warmupIter {
		fmt.Fprintf(os.Stderr, "memory on %s: %d processes (%d shims: %s)\n", b.d.name, len(procs), nShims, strings.Join(shimExes, ", "))
	} else {
		b.mainDs = append(b.mainDs, time.Duration(main))
		b.serviceDs = append(b.serviceDs, time.Duration(services))
		b.shimDs = append(b.shimDs, time.Duration(shims))
	}
	return []time.Duration{time.Duration(total)}, nil
}

func (b *memoryBench) cleanup(ctx context.Context) error {
	if m, ok := median(b.mainDs); ok {
		s, _ := median(b.serviceDs)
		sh, _ := median(b.shimDs)
		fmt.Fprintf(os.Stderr, "memory (%d running) on %s: medians: main process %s MiB, other daemon processes %s MiB, shims %s MiB\n",
			len(b.containers), b.d.name, formatIn(m, unitMiB), formatIn(s, unitMiB), formatIn(sh, unitMiB))
	}
	var errs []error
	for _, ct := range b.containers {
		if err := ct.remove(ctx, true); err != nil {
			errs = append(errs, err)
		}
	}
	b.containers = nil
	return errors.Join(errs...)
}
