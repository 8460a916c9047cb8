// flotilla-bench measures Flotilla against containerd side by side: both
// daemons run at once, the same containerd Go client code drives each, and
// every iteration alternates which daemon goes first, so drift on the
// machine (page cache, CPU frequency, noisy neighbours) hits both alike.
// The report is the median of each workload on each daemon and their ratio.
//
//	go run ./bench/cmd/flotilla-bench -flotilla bin [-n 5] [-only ingest,read] [-out report.md]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "flotilla-bench: %v\n", err)
		os.Exit(1)
	}
}

type flags struct {
	flotilla, containerd string
	containerdShim, runc string
	n, calls             int
	runs, parallel       int
	memContainers        int
	only, daemons, out   string
	blobMB, importMB     int64
	unpackLayers         int
	unpackLayerMB        int64
	tmp, cache           string
	pods                 int
	pullMB               int64
	flotillaTraces       string
}

func parseFlags(args []string) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("flotilla-bench", flag.ContinueOnError)
	fs.StringVar(&f.flotilla, "flotilla", "bin", "directory holding flotillad and the flotilla-* service binaries")
	fs.StringVar(&f.containerd, "containerd", "", "containerd "+containerdVersion+" binary (default: build it from the Go module proxy into the cache)")
	fs.StringVar(&f.containerdShim, "containerd-shim", "", "containerd-shim-runc-v2 "+containerdVersion+" binary for containerd (default: build it into the cache)")
	fs.StringVar(&f.runc, "runc", "runc", "runc binary of the floor (the shims run the runc in PATH)")
	fs.IntVar(&f.runs, "runs", 10, "containers run one after another per iteration of run")
	fs.IntVar(&f.parallel, "parallel", 20, "containers started at once in the parallel run workload")
	fs.IntVar(&f.memContainers, "memory-containers", 10, "running containers in the second memory figure")
	fs.IntVar(&f.pods, "pods", 5, "pods (pod-*) or containers (ctr-*) one after another per iteration of the cri workloads")
	fs.Int64Var(&f.pullMB, "pull-mb", 8, "size of the random layer cri-pull's image adds to busybox, in MiB")
	fs.StringVar(&f.flotillaTraces, "flotilla-traces", "", "run Flotilla with [trace] file = true and copy its span files into this directory (a traces/ subdirectory, for `flotilla trace --state <dir>`); for profiling: tracing costs time")
	fs.IntVar(&f.n, "n", 5, "timed iterations per workload and daemon (after one untimed warm-up)")
	fs.IntVar(&f.calls, "calls", 200, "calls per iteration of the latency workloads (namespaces, version) and prepare/commit/remove cycles per iteration of snapshots")
	fs.StringVar(&f.only, "only", "", "comma-separated workloads to run (ingest, read, import, unpack, snapshots, run, run20, memory, namespaces, version, cri = pod-run, pod-stop, pod-remove, ctr-create, ctr-start, cri-pull); default all")
	fs.StringVar(&f.daemons, "daemons", "containerd,flotilla", "daemons to measure; one alone gives its medians without ratios")
	fs.StringVar(&f.out, "out", "", "also write the markdown report to this file")
	fs.Int64Var(&f.blobMB, "blob-mb", 100, "size of the ingest/read blob in MiB")
	fs.Int64Var(&f.importMB, "import-random-mb", 0, "add a random layer of this many MiB to the imported image")
	fs.IntVar(&f.unpackLayers, "unpack-layers", 5, "random layers in the unpack image (on top of busybox)")
	fs.Int64Var(&f.unpackLayerMB, "unpack-layer-mb", 20, "size of each random layer of the unpack image in MiB")
	fs.StringVar(&f.tmp, "tmp", "/tmp", "where the daemons' temporary roots go (both on the same filesystem, for fairness)")
	fs.StringVar(&f.cache, "cache", defaultCache(), "cache directory for the containerd build")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.n < 1 || f.calls < 1 || f.blobMB < 1 || f.importMB < 0 || f.unpackLayers < 1 || f.unpackLayerMB < 1 ||
		f.runs < 1 || f.parallel < 1 || f.memContainers < 1 || f.pods < 1 || f.pullMB < 1 {
		return f, errors.New("-n, -calls, -blob-mb, -unpack-layers, -unpack-layer-mb, -runs, -parallel, -memory-containers, -pods and -pull-mb must be at least 1, -import-random-mb at least 0")
	}
	return f, nil
}

// defaultCache is bench/.cache in the source tree (gitignored), found from
// this file's path so that it does not depend on the working directory.
func defaultCache() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("bench", ".cache")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", ".cache")
}

func run(args []string, stdout io.Writer) error {
	f, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	imgOpts := []testimage.Option{testimage.WithName("docker.io/flotilla/bench:import")}
	if f.importMB > 0 {
		imgOpts = append(imgOpts, testimage.WithRandomLayer(f.importMB<<20, 1))
	}
	img, err := testimage.Busybox(imgOpts...)
	if err != nil {
		return err
	}
	unpackOpts := []testimage.Option{testimage.WithName("docker.io/flotilla/bench:unpack")}
	for i := range f.unpackLayers {
		// Distinct seeds: identical layers would be stored and applied once.
		unpackOpts = append(unpackOpts, testimage.WithRandomLayer(f.unpackLayerMB<<20, int64(unpackSeedBase+i)))
	}
	runImg, err := testimage.Busybox(testimage.WithName(runImageName))
	if err != nil {
		return err
	}
	cri := &criEnv{busybox: runImg, pullMB: f.pullMB}
	all := workloads(params{
		cri: cri, pods: f.pods,
		runImage: runImg, runs: f.runs, parallel: f.parallel, memContainers: f.memContainers, runc: f.runc,
		blobSize: f.blobMB << 20, calls: f.calls, importImage: img,
		unpackLayers: f.unpackLayers, unpackLayerSize: f.unpackLayerMB << 20,
		unpackImage:  lazyImage(unpackOpts...),
		snapshotBase: lazyImage(testimage.WithName("docker.io/flotilla/bench:snapshot-base")),
	})
	selected, err := selectWorkloads(all, f.only)
	if err != nil {
		return err
	}

	meta := reportMeta{date: time.Now(), host: hostInfo(), versions: map[string]string{}, skipped: map[string]string{},
		n: f.n, calls: f.calls, runs: f.runs, goVersion: runtime.Version(), shims: map[string]string{}}
	// The daemons' CRI is configured (and the registry started) only when
	// a cri workload runs: the other workloads measure containerd as it
	// is with its CRI off.
	criWanted := slices.ContainsFunc(selected, func(w workload) bool { return w.group == criGroup })
	criStarted := false
	var daemons []*daemon
	defer func() {
		for _, d := range daemons {
			if d.cri != nil && d.alive() == nil && d.done != nil {
				cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				if err := d.criSweep(cctx); err != nil {
					fmt.Fprintf(os.Stderr, "%s: remove leftover pods: %v\n", d.name, err)
				}
				cancel()
			}
			d.stop()
		}
		removeNamespaceDirs()
		if criStarted {
			cri.close()
		}
	}()
	if criWanted {
		meta.pods = f.pods
		criStarted = true
		if err := cri.start(ctx, f.tmp); err != nil {
			return fmt.Errorf("set up the cri workloads: %w", err)
		}
	}
	criFor := func(name string) *criConfig {
		if !criWanted {
			return nil
		}
		return cri.configs[name]
	}
	for _, name := range strings.Split(f.daemons, ",") {
		var d *daemon
		var err error
		switch strings.TrimSpace(name) {
		case "containerd":
			var bin, shim string
			if bin, err = containerdBinary(ctx, f.containerd, f.cache); err == nil {
				if shim, err = containerdShimBinary(ctx, f.containerdShim, f.cache); err == nil {
					d, err = startContainerd(ctx, bin, shim, f.tmp, criFor("containerd"))
				}
			}
		case "flotilla":
			d, err = startFlotilla(ctx, f.flotilla, f.tmp, criFor("flotilla"), f.flotillaTraces)
		default:
			return fmt.Errorf("unknown daemon %q in -daemons (want containerd and/or flotilla)", name)
		}
		if d != nil {
			daemons = append(daemons, d) // stopped by the defer, started or not
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(os.Stderr, "skipping %s: %v\n", name, err)
			meta.skipped[name] = err.Error()
			continue
		}
		meta.versions[d.name] = d.version
		meta.shims[d.name] = d.shimBinary
		fmt.Fprintf(os.Stderr, "%s %s ready on %s\n", d.name, d.version, d.address)
	}
	var up []*daemon
	for _, d := range daemons {
		if _, skipped := meta.skipped[d.name]; !skipped {
			up = append(up, d)
		}
	}
	if len(up) == 0 {
		return errors.New("no daemon started; nothing to measure")
	}

	var results []*result
	for _, w := range selected {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		results = append(results, runWorkload(ctx, w, up, f.n))
	}

	var report strings.Builder
	if err := writeMarkdown(&report, meta, results); err != nil {
		return err
	}
	if _, err := io.WriteString(stdout, report.String()); err != nil {
		return err
	}
	if f.out != "" {
		if err := os.WriteFile(f.out, []byte(report.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func selectWorkloads(all []workload, only string) ([]workload, error) {
	if only == "" {
		return all, nil
	}
	var names []string
	for _, w := range all {
		names = append(names, w.name)
	}
	var out []workload
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		if i := slices.Index(names, n); i >= 0 {
			out = append(out, all[i])
			continue
		}
		var group []workload
		for _, w := range all {
			if w.group != "" && w.group == n {
				group = append(group, w)
			}
		}
		if len(group) == 0 {
			return nil, fmt.Errorf("unknown workload %q (have %s)", n, strings.Join(names, ", "))
		}
		out = append(out, group...)
	}
	return out, nil
}

// runWorkload prepares w on every daemon, runs one untimed warm-up each,
// then n timed iterations, alternating which daemon goes first. A daemon
// that fails drops out of this workload with its error recorded; the others
// carry on.
func runWorkload(ctx context.Context, w workload, daemons []*daemon, n int) *result {
	r := newResult(w)
	type live struct {
		d    *daemon
		inst instance
	}
	var ls []*live
	for _, d := range daemons {
		if err := d.alive(); err != nil {
			r.errs[d.name] = err
			continue
		}
		inst, err := w.prepare(ctx, d)
		if err != nil {
			r.errs[d.name] = fmt.Errorf("prepare: %w", err)
			fmt.Fprintf(os.Stderr, "%s on %s: %v\n", w.name, d.name, r.errs[d.name])
			continue
		}
		ls = append(ls, &live{d: d, inst: inst})
	}
	if w.floor != nil && ctx.Err() == nil {
		// The floor takes turns with the daemons like a third daemon, so
		// that drift on the machine falls on it too.
		if inst, err := w.floor(ctx); err != nil {
			r.errs[floorName] = fmt.Errorf("prepare: %w", err)
			fmt.Fprintf(os.Stderr, "%s floor: %v\n", w.name, r.errs[floorName])
		} else {
			ls = append(ls, &live{d: &daemon{name: floorName}, inst: inst})
		}
	}
	defer func() {
		for _, l := range ls {
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := l.inst.cleanup(cctx); err != nil {
				fmt.Fprintf(os.Stderr, "%s on %s: cleanup: %v\n", w.name, l.d.name, err)
			}
			cancel()
		}
	}()

	sample := func(l *live, iter int, keep bool) {
		if r.errs[l.d.name] != nil || ctx.Err() != nil {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		ds, err := l.inst.sample(sctx, iter)
		if err != nil {
			if aerr := l.d.alive(); aerr != nil {
				err = fmt.Errorf("%w; %v", err, aerr)
			}
			r.errs[l.d.name] = err
			fmt.Fprintf(os.Stderr, "%s on %s: %v\n", w.name, l.d.name, err)
			return
		}
		if keep {
			r.samples[l.d.name] = append(r.samples[l.d.name], ds...)
		}
	}
	for _, l := range ls {
		sample(l, warmupIter, false)
	}
	for i := range n {
		order := slices.Clone(ls)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, l := range order {
			sample(l, i, true)
		}
	}
	var line []string
	for _, l := range ls {
		if m, ok := median(r.samples[l.d.name]); ok && r.errs[l.d.name] == nil {
			line = append(line, fmt.Sprintf("%s %s %s", l.d.name, formatIn(m, w.unit), unitName(w.unit)))
		}
	}
	fmt.Fprintf(os.Stderr, "%-10s median: %s\n", w.name, strings.Join(line, ", "))
	return r
}

func hostInfo() string {
	var u syscall.Utsname
	kernel := "?"
	if err := syscall.Uname(&u); err == nil {
		kernel = utsString(u.Release[:])
	}
	return fmt.Sprintf("%s/%s, %d CPUs, kernel %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), kernel)
}

func utsString[T int8 | uint8](b []T) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}
