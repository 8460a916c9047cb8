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
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// unitMiB is the memory workloads' unit. Their samples are byte counts held
// in the same time.Duration slices as every other workload's, so that the
// median, formatting and ratio code is shared: formatIn(bytes, unitMiB)
// prints MiB.
const unitMiB time.Duration = 1 << 20

// procInfo is one process of a daemon's footprint.
type procInfo struct {
	pid      int
	name     string // argv[0]'s base name: Flotilla's service processes share one executable
	exe      string
	rss, pss int64 // bytes, from /proc/<pid>/smaps_rollup
	shim     bool
}

// footprint is every process that makes up a daemon: its main process and
// all its descendants (Flotilla's service processes, whatever executable
// they run), and its runtime v2 shims, which daemonise away from the
// daemon's process tree. A shim is a process whose command line is a
// runtime v2 shim's (-namespace, -id and -address flags, as every daemon
// starts its shims) and that belongs to this daemon: below it in the tree,
// or with its -address or working directory (its bundle) inside the
// daemon's temp directory. Processes below a shim (the containers' own and
// the shim's runc calls) are not the daemon's.
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
		rss, pss, ok := smapsRollup(pid)
		if !ok {
			return // exited between the listing and now
		}
		seen[pid] = true
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		out = append(out, procInfo{pid: pid, name: argv0(pid), exe: exe, rss: rss, pss: pss, shim: shim})
	}
	var walk func(pid int)
	walk = func(pid int) {
		shim := pid != d.cmd.Process.Pid && isShim(pid)
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
// (the -address of the daemon's socket) or its working directory (the
// bundle) point into d's temp directory.
func (d *daemon) ownsShim(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err == nil && bytes.Contains(cmdline, []byte(d.dir+"/")) {
		return true
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && strings.HasPrefix(cwd, d.dir+"/")
}

// isShim tells whether pid runs a runtime v2 shim, by its command line, not
// its binary's name: a daemon starts every shim with -namespace, -id and
// -address (containerd's shim protocol), whichever executable it is.
func isShim(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return isShimCmdline(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
}

func isShimCmdline(args []string) bool {
	want := map[string]bool{"-namespace": false, "-id": false, "-address": false}
	for _, a := range args {
		a, _, _ = strings.Cut(a, "=")
		a = "-" + strings.TrimLeft(a, "-")
		if _, ok := want[a]; ok {
			want[a] = true
		}
	}
	return want["-namespace"] && want["-id"] && want["-address"]
}

// argv0 is the base name of pid's argv[0] (what the process calls itself:
// flotilla-content, containerd-shim-runc-v2, ...).
func argv0(pid int) string {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "?"
	}
	first, _, _ := bytes.Cut(cmdline, []byte{0})
	return filepath.Base(string(first))
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

// smapsRollup is the resident set (Rss) and proportional set (Pss: each
// resident page divided by the number of processes mapping it) of pid, in
// bytes, from /proc/<pid>/smaps_rollup. A process without them (a zombie,
// a kernel thread) counts as gone.
func smapsRollup(pid int) (rss, pss int64, ok bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	var haveRSS, havePSS bool
	s := bufio.NewScanner(f)
	for s.Scan() {
		key, v, found := strings.Cut(s.Text(), ":")
		if !found || (key != "Rss" && key != "Pss") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return 0, 0, false
		}
		if key == "Rss" {
			rss, haveRSS = kb<<10, true
		} else {
			pss, havePSS = kb<<10, true
		}
	}
	return rss, pss, haveRSS && havePSS
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

// memoryBench sums the PSS (and, beside it, the RSS) of a daemon's
// footprint, idle (the run image imported, nothing running) or with
// containers running `sleep 300`, started once when the workload is
// prepared and removed by cleanup.
type memoryBench struct {
	d          *daemon
	img        *testimage.Image
	containers []*container
	lastRSS    time.Duration
	// PSS medians by process kind for the progress line: where the memory is.
	mainDs, serviceDs, shimDs []time.Duration
}

// rssFigure is the memory workloads' second figure: the same processes'
// RSS, in a row of its own (<workload>-rss).
const rssFigure = "rss"

// memoryImageName is the image the memory workloads import, run and delete
// again: busybox, as the run image.
const memoryImageName = "docker.io/flotilla/bench:memory"

func newMemoryBench(ctx context.Context, d *daemon, img *testimage.Image, running int) (_ *memoryBench, err error) {
	b := &memoryBench{d: d, img: img}
	defer func() {
		if err != nil {
			_ = b.cleanup(context.WithoutCancel(ctx))
		}
	}()
	i, err := importUnpack(ctx, d, img)
	if err != nil {
		return nil, err
	}
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
	var pss, rss, main, services, shims int64
	var nShims int
	var shimExes []string
	for _, p := range procs {
		pss += p.pss
		rss += p.rss
		switch {
		case p.pid == b.d.cmd.Process.Pid:
			main += p.pss
		case p.shim:
			shims += p.pss
			nShims++
			if !slices.Contains(shimExes, p.exe) {
				shimExes = append(shimExes, p.exe)
			}
		default:
			services += p.pss
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
		shimsOf := ""
		if nShims > 0 {
			shimsOf = " of " + strings.Join(shimExes, ", ")
		}
		fmt.Fprintf(os.Stderr, "memory on %s: %d processes (%d shims%s): %s\n", b.d.name, len(procs), nShims, shimsOf, describeProcs(procs))
	} else {
		b.mainDs = append(b.mainDs, time.Duration(main))
		b.serviceDs = append(b.serviceDs, time.Duration(services))
		b.shimDs = append(b.shimDs, time.Duration(shims))
	}
	b.lastRSS = time.Duration(rss)
	return []time.Duration{time.Duration(pss)}, nil
}

// figures is the RSS of the last sample, reported beside its PSS.
func (b *memoryBench) figures() map[string]time.Duration {
	return map[string]time.Duration{rssFigure: b.lastRSS}
}

// describeProcs lists each process but the shims by name with its PSS and
// RSS, and the shims as one total: where a daemon's memory is.
func describeProcs(procs []procInfo) string {
	var parts []string
	var shimPSS, shimRSS int64
	var shimN int
	for _, p := range procs {
		if p.shim {
			shimPSS, shimRSS, shimN = shimPSS+p.pss, shimRSS+p.rss, shimN+1
			continue
		}
		parts = append(parts, fmt.Sprintf("%s[%d] PSS %s RSS %s", p.name, p.pid,
			formatIn(time.Duration(p.pss), unitMiB), formatIn(time.Duration(p.rss), unitMiB)))
	}
	if shimN > 0 {
		parts = append(parts, fmt.Sprintf("%d shims PSS %s RSS %s", shimN,
			formatIn(time.Duration(shimPSS), unitMiB), formatIn(time.Duration(shimRSS), unitMiB)))
	}
	return strings.Join(parts, ", ") + " (MiB)"
}

func (b *memoryBench) cleanup(ctx context.Context) error {
	if m, ok := median(b.mainDs); ok {
		s, _ := median(b.serviceDs)
		sh, _ := median(b.shimDs)
		fmt.Fprintf(os.Stderr, "memory (%d running) on %s: PSS medians: main process %s MiB, other daemon processes %s MiB, shims %s MiB\n",
			len(b.containers), b.d.name, formatIn(m, unitMiB), formatIn(s, unitMiB), formatIn(sh, unitMiB))
	}
	var errs []error
	for _, ct := range b.containers {
		if err := ct.remove(ctx, true); err != nil {
			errs = append(errs, err)
		}
	}
	b.containers = nil
	// Synchronously, so that garbage collection has taken the layer and
	// its snapshot before the next workload checks it starts cold.
	if err := b.d.client.ImageService().Delete(ctx, b.img.Name, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete image %s: %w", b.img.Name, err))
	}
	return errors.Join(errs...)
}
