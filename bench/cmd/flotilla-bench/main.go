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
	"sync"
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
	results              string
	readme               bool
	readmeFile           string
	gosrc                string
	gosrcLayers          int
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
	fs.StringVar(&f.only, "only", "", "comma-separated workloads to run (ingest, read, read-1m, import, unpack, unpack-gosrc, snapshots, run, run20, memory = memory-idle and memory-10running, cri = pod-run, pod-stop, pod-remove, ctr-create, ctr-start, ctr-status, ctr-remove, img-list, img-status, cri-pull, cri-pull-gosrc; pull-gosrc, namespaces, version); default all")
	fs.StringVar(&f.daemons, "daemons", "containerd,flotilla", "daemons to measure; one alone gives its medians without ratios")
	fs.StringVar(&f.out, "out", "", "also write the markdown report to this file")
	fs.StringVar(&f.results, "results", filepath.Join(repoRoot(), "bench", "results"), "write each run's report here as <date>-<commit>[-partial].md and .json (empty: do not)")
	fs.BoolVar(&f.readme, "readme", false, "run nothing: rewrite the README's performance table from the newest complete report in -results")
	fs.StringVar(&f.readmeFile, "readme-file", filepath.Join(repoRoot(), "README.md"), "the README -readme rewrites")
	fs.StringVar(&f.gosrc, "gosrc", "", "Go installation whose src, pkg and test trees make the realistic image of unpack-gosrc (default: `go env GOROOT`)")
	fs.IntVar(&f.gosrcLayers, "gosrc-layers", 4, "gzip layers the realistic image's trees are cut into")
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
		f.runs < 1 || f.parallel < 1 || f.memContainers < 1 || f.pods < 1 || f.pullMB < 1 || f.gosrcLayers < 1 {
		return f, errors.New("-n, -calls, -blob-mb, -unpack-layers, -unpack-layer-mb, -runs, -parallel, -memory-containers, -pods, -pull-mb and -gosrc-layers must be at least 1, -import-random-mb at least 0")
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
	if f.readme {
		return updateReadme(f.readmeFile, f.results)
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
	memImg, err := testimage.Busybox(testimage.WithName(memoryImageName))
	if err != nil {
		return err
	}
	cri := &criEnv{busybox: runImg, pullMB: f.pullMB}
	srcImg := sync.OnceValues(func() (*srcImage, error) {
		root := f.gosrc
		if root == "" {
			var err error
			if root, err = goroot(); err != nil {
				return nil, err
			}
		}
		start := time.Now()
		src, err := buildSrcImage(root, f.gosrcLayers)
		if err == nil {
			archive, _ := src.img.ArchiveBytes()
			var layers []string
			for _, n := range src.layerBytes {
				layers = append(layers, fmt.Sprint(n>>20))
			}
			fmt.Fprintf(os.Stderr, "realistic image from %s: %d paths, %d MiB of files, layers of %s MiB (tar) above busybox, %d MiB archive; built in %s\n",
				root, len(src.files), src.fileBytes>>20, strings.Join(layers, "+"), len(archive)>>20, time.Since(start).Round(time.Millisecond))
		}
		return src, err
	})
	pulls := &pullEnv{tmp: f.tmp, ctrBinary: func(ctx context.Context) (string, error) { return goInstall(ctx, f.cache, "ctr") }}
	defer pulls.close()
	all := workloads(params{
		pull: pulls,
		cri:  cri, pods: f.pods,
		runImage: runImg, memoryImage: memImg, runs: f.runs, parallel: f.parallel, memContainers: f.memContainers, runc: f.runc,
		blobSize: f.blobMB << 20, calls: f.calls, importImage: img,
		unpackLayers: f.unpackLayers, unpackLayerSize: f.unpackLayerMB << 20,
		unpackImage:  lazyImage(unpackOpts...),
		snapshotBase: lazyImage(testimage.WithName("docker.io/flotilla/bench:snapshot-base")),
		srcImage:     srcImg, srcLayers: f.gosrcLayers,
	})
	selected, err := selectWorkloads(all, f.only)
	if err != nil {
		return err
	}

	rep := &report{Date: time.Now().UTC(), Commit: gitCommit(repoRoot()), Host: hostInfo(), Go: runtime.Version(),
		Iterations: f.n, Calls: f.calls, Runs: f.runs}
	loadStart := loadAverage()
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
		rep.Pods = f.pods
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
			rep.Daemons = append(rep.Daemons, daemonInfo{Name: strings.TrimSpace(name), Skipped: firstLine(err.Error())})
			continue
		}
		rep.Daemons = append(rep.Daemons, daemonInfo{Name: d.name, Version: d.version, Shim: d.shimBinary})
		if d.name == "flotilla" {
			if note := binaryNote(rep.Commit, d.version); note != "" {
				fmt.Fprintf(os.Stderr, "warning: %s\n", note)
				rep.Notes = append(rep.Notes, note)
			}
		}
		fmt.Fprintf(os.Stderr, "%s %s ready on %s\n", d.name, d.version, d.address)
	}
	var up []*daemon
	var measured []string
	for _, d := range daemons {
		if info, _ := rep.daemon(d.name); info.Skipped == "" {
			up = append(up, d)
			measured = append(measured, d.name)
		}
	}
	rep.Complete = isComplete(f.only, measured)
	if len(up) == 0 {
		return errors.New("no daemon started; nothing to measure")
	}

	for _, w := range selected {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, r := range runWorkload(ctx, w, up, f.n) {
			rep.Rows = append(rep.Rows, r.row())
		}
	}

	if loadStart != "" {
		rep.Load = fmt.Sprintf("%s at the start, %s at the end", loadStart, loadAverage())
	}
	var md strings.Builder
	if err := writeMarkdown(&md, rep); err != nil {
		return err
	}
	if _, err := io.WriteString(stdout, md.String()); err != nil {
		return err
	}
	if f.out != "" {
		if err := os.WriteFile(f.out, []byte(md.String()), 0o644); err != nil {
			return err
		}
	}
	if f.results != "" {
		path, err := writeResults(f.results, rep)
		if err != nil {
			return fmt.Errorf("write the report to %s: %w", f.results, err)
		}
		fmt.Fprintf(os.Stderr, "report written to %s (and .json)\n", path)
		if rep.Complete {
			fmt.Fprintf(os.Stderr, "commit it, then `go run ./bench/cmd/flotilla-bench -readme` puts its table in the README\n")
		}
	}
	return nil
}

// selectWorkloads picks the workloads only names (or all), in the order
// of all whatever the order of only: some workloads leave state behind
// (the run image, kept from run on) that an earlier one must not find.
func selectWorkloads(all []workload, only string) ([]workload, error) {
	if only == "" {
		return all, nil
	}
	var names []string
	for _, w := range all {
		names = append(names, w.name)
	}
	picked := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		found := false
		for _, w := range all {
			if w.name == n || (w.group != "" && w.group == n) {
				picked[w.name], found = true, true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown workload %q (have %s)", n, strings.Join(names, ", "))
		}
	}
	var out []workload
	for _, w := range all {
		if picked[w.name] {
			out = append(out, w)
		}
	}
	return out, nil
}

// runWorkload prepares w on every daemon, runs one untimed warm-up each,
// then n timed iterations, alternating which daemon goes first. A daemon
// that fails drops out of this workload with its error recorded; the others
// carry on.
func runWorkload(ctx context.Context, w workload, daemons []*daemon, n int) []*result {
	r := newResult(w)
	rs := []*result{r}
	figs := map[string]*result{}
	for _, f := range w.figures {
		figs[f.name] = figureResult(w, f)
		rs = append(rs, figs[f.name])
	}
	// A daemon's failure is its failure in every figure of the workload.
	defer func() {
		for _, fr := range figs {
			for d, err := range r.errs {
				fr.errs[d] = err
			}
		}
	}()
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
			if fg, ok := l.inst.(figurer); ok {
				for name, v := range fg.figures() {
					if fr := figs[name]; fr != nil {
						fr.samples[l.d.name] = append(fr.samples[l.d.name], v)
					}
				}
			}
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
	return rs
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
