package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	internalapi "k8s.io/cri-api/pkg/apis"
)

// containerdVersion is the release Flotilla is compared with: the one whose
// client and API modules Flotilla itself builds on.
const containerdVersion = "v2.4.2"

// benchNamespace is where every workload runs, on both daemons.
const benchNamespace = "flotilla-bench"

// daemon is one server under test, started in its own temp directory.
type daemon struct {
	name    string
	version string
	dir     string
	address string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	client  *containerd.Client
	// shimBinary is the containerd-shim-runc-v2 this daemon must run (the
	// memory workload checks the running shims against it).
	shimBinary string

	runImgMu sync.Mutex
	runImg   containerd.Image // see runImage

	// cri is set when the daemon runs with its CRI configured for the cri
	// workloads; criRT and criImg are the kubelet's clients on it.
	cri       *criConfig
	criMu     sync.Mutex
	criRT     internalapi.RuntimeService
	criImg    internalapi.ImageManagerService
	criPulled bool

	// keepTraces is where Flotilla's span files are copied when it stops
	// (-flotilla-traces); empty keeps none.
	keepTraces string
}

// startContainerd runs containerd with a minimal config: its own root, state
// and socket, and the CRI plugins (which want CNI and more) disabled, since
// no workload but the cri ones touches them. With cri set (a cri workload
// runs) the CRI plugins are on, configured as cri says; NRI stays off
// either way (Flotilla has none, and its socket is machine-wide).
//
// Its runtime v2 shim is shim (containerd-shim-runc-v2 of the same release):
// containerd looks shims up in PATH before beside its own binary, so the
// shim's directory goes first in containerd's PATH, ahead of any older shim
// installed system-wide (Debian's containerd 1.6 puts one in /usr/bin).
func startContainerd(ctx context.Context, bin, shim, tmp string, cri *criConfig) (*daemon, error) {
	d, err := newDaemon("containerd", tmp)
	if err != nil {
		return nil, err
	}
	if d.shimBinary, err = filepath.Abs(shim); err != nil {
		return nil, err
	}
	d.address = filepath.Join(d.dir, "containerd.sock")
	d.cri = cri
	disabled := `disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]`
	if cri != nil {
		disabled = `disabled_plugins = ["io.containerd.nri.v1.nri"]`
	}
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
%s

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""
`, filepath.Join(d.dir, "root"), filepath.Join(d.dir, "state"), disabled, d.address, d.address+".ttrpc")
	if cri != nil {
		cfg += containerdCRIConfig(cri)
	}
	cfgPath := filepath.Join(d.dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	d.cmd = exec.Command(bin, "--config", cfgPath)
	d.cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(d.shimBinary)+string(os.PathListSeparator)+os.Getenv("PATH"))
	return d, d.start(ctx, "")
}

// containerdCRIConfig is the plugins section for containerd's CRI: the
// bench's pause image, CNI network and registry hosts, and the streaming
// server on a free loopback port, as Flotilla's cri has it.
//
// restrict_oom_score_adj (on both daemons) clamps the pause container's
// -998 to the daemon's own score: without CAP_SYS_RESOURCE (a VM or
// container host) runc cannot lower it and every sandbox fails to start.
// Flotilla's cri clamps by itself without the capability; containerd only
// when told.
func containerdCRIConfig(c *criConfig) string {
	return fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [%q]
  conf_dir = %q

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`, c.sandboxImage, c.hostsDir, c.cniBinDir, c.cniConfDir)
}

// flotillaCRIConfig is flotillad's config for the cri workloads: its cri
// service's options, the same settings containerd gets.
func flotillaCRIConfig(c *criConfig) string {
	return fmt.Sprintf(`[services.cri.options]
snapshotter = "overlayfs"
sandbox_image = %q
stream_server_address = "127.0.0.1"
stream_server_port = "0"
restrict_oom_score_adj = true
[services.cri.options.registry]
config_path = %q
[services.cri.options.cni]
conf_dir = %q
bin_dirs = [%q]
`, c.sandboxImage, c.hostsDir, c.cniConfDir, c.cniBinDir)
}

// startFlotilla runs flotillad from binDir, which also holds the
// flotilla-<service> binaries it supervises. With cri set it gets a config
// file for its cri service, with traces set one that has every process
// write its spans to files, copied to traces when it stops (for `flotilla
// trace --state`); otherwise it runs with its defaults.
func startFlotilla(ctx context.Context, binDir, tmp string, cri *criConfig, traces string) (*daemon, error) {
	bin := filepath.Join(binDir, "flotillad")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("flotillad not found (run `make build` first): %w", err)
	}
	d, err := newDaemon("flotilla", tmp)
	if err != nil {
		return nil, err
	}
	// flotilla-tasks finds the shim beside its own binary first.
	if d.shimBinary, err = filepath.Abs(filepath.Join(binDir, "containerd-shim-runc-v2")); err != nil {
		return nil, err
	}
	state := filepath.Join(d.dir, "state")
	d.address = filepath.Join(state, "flotilla.sock")
	// Info level, because readiness is the "flotillad ready" line: the
	// gateway answers Version before its services are wired.
	args := []string{"--root", filepath.Join(d.dir, "root"), "--state", state, "--address", d.address, "--log-level", "info"}
	var cfg string
	if traces != "" {
		cfg += "[trace]\nfile = true\n\n"
		d.keepTraces = traces
	}
	if cri != nil {
		d.cri = cri
		cfg += flotillaCRIConfig(cri)
	}
	if cfg != "" {
		cfgPath := filepath.Join(d.dir, "config.toml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--config", cfgPath)
	}
	d.cmd = exec.Command(bin, args...)
	return d, d.start(ctx, "flotillad ready")
}

func newDaemon(name, tmp string) (*daemon, error) {
	// Unix socket paths are limited to ~100 bytes: keep the directory short.
	dir, err := os.MkdirTemp(tmp, "fb-"+name[:1]+"-")
	if err != nil {
		return nil, err
	}
	return &daemon{name: name, dir: dir, logPath: filepath.Join(dir, "daemon.log")}, nil
}

// start launches the process and waits until it is ready: the socket
// accepts, Version answers and, if readyLine is set, the log holds it.
func (d *daemon) start(ctx context.Context, readyLine string) error {
	logf, err := os.Create(d.logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C at the terminal reaches the bench, which
	// then stops the daemons in order, rather than killing them mid-write.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", d.name, err)
	}
	d.done = make(chan struct{})
	go func() { d.exitErr = d.cmd.Wait(); close(d.done) }()

	deadline := time.Now().Add(60 * time.Second)
	for {
		err := d.ready(ctx, readyLine)
		if err == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s exited during startup (%v); log tail:\n%s", d.name, d.exitErr, d.logTail(20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after 60s: %v; log tail:\n%s", d.name, err, d.logTail(20))
		}
	}
}

func (d *daemon) ready(ctx context.Context, readyLine string) error {
	conn, err := net.DialTimeout("unix", d.address, time.Second)
	if err != nil {
		return err
	}
	conn.Close()
	if readyLine != "" {
		b, _ := os.ReadFile(d.logPath)
		if !strings.Contains(string(b), readyLine) {
			return fmt.Errorf("no %q in log yet", readyLine)
		}
	}
	if d.client == nil {
		c, err := containerd.New(d.address, containerd.WithTimeout(5*time.Second), containerd.WithDefaultNamespace(benchNamespace))
		if err != nil {
			return err
		}
		d.client = c
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v, err := d.client.Version(cctx)
	if err != nil {
		return fmt.Errorf("version: %w", err)
	}
	d.version = v.Version
	return nil
}

// stop sends SIGTERM, then SIGKILL if the daemon lingers, and removes its
// directory.
//
// Containers outlive both daemons (they belong to their shims), so any
// container a workload left behind is removed first, and any shim of this
// daemon still running after it stopped is killed: a bench run leaves no
// processes behind.
func (d *daemon) stop() {
	if d.client != nil {
		if d.alive() == nil && d.done != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := d.sweepContainers(ctx); err != nil {
				fmt.Fprintf(os.Stderr, "%s: remove leftover containers: %v\n", d.name, err)
			}
			cancel()
		}
		d.client.Close()
	}
	if d.done != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			fmt.Fprintf(os.Stderr, "%s did not stop on SIGTERM within 15s, killing it\n", d.name)
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		d.killShims()
	}
	// containerd may leave mounts under its state; a failed removal is
	// reported, not fatal.
	if d.keepTraces != "" {
		src := filepath.Join(d.dir, "state", "traces")
		if err := os.MkdirAll(d.keepTraces, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "keep traces: %v\n", err)
		} else if out, err := exec.Command("cp", "-a", src, d.keepTraces).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "keep traces: %v %s\n", err, out)
		} else {
			fmt.Fprintf(os.Stderr, "%s spans kept: flotilla trace --state %s ls\n", d.name, d.keepTraces)
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		fmt.Fprintf(os.Stderr, "remove %s: %v\n", d.dir, err)
	}
}

// sweepContainers kills and removes every container left in the bench
// namespace.
func (d *daemon) sweepContainers(ctx context.Context) error {
	cs, err := d.client.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		ct := &container{c: c}
		if t, err := c.Task(ctx, nil); err == nil {
			ct.t = t
			if ct.exitCh, err = t.Wait(ctx); err != nil {
				ct.exitCh = nil
			}
		}
		errs = append(errs, ct.remove(ctx, true))
	}
	if len(cs) > 0 {
		fmt.Fprintf(os.Stderr, "%s: removed %d leftover containers\n", d.name, len(cs))
	}
	return errors.Join(errs...)
}

// killShims kills the shims of this daemon that are still running after it
// stopped (the daemon's own temp directory is in their arguments).
func (d *daemon) killShims() {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !isShim(pid) || !d.ownsShim(pid) {
			continue
		}
		fmt.Fprintf(os.Stderr, "%s: killing leftover shim %d\n", d.name, pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// alive reports an error if the daemon process has exited.
func (d *daemon) alive() error {
	select {
	case <-d.done:
		return fmt.Errorf("%s exited (%v); log tail:\n%s", d.name, d.exitErr, d.logTail(20))
	default:
		return nil
	}
}

func (d *daemon) logTail(n int) string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// containerdBinary returns a containerd binary of containerdVersion: the
// given path, or one built from the Go module proxy into the cache
// directory (once; later runs reuse it).
func containerdBinary(ctx context.Context, path, cacheDir string) (string, error) {
	if path != "" {
		return path, nil
	}
	return goInstall(ctx, cacheDir, "containerd")
}

// containerdShimBinary returns the containerd-shim-runc-v2 of
// containerdVersion that containerd runs containers with: the given path,
// or one built into the cache directory beside containerd.
func containerdShimBinary(ctx context.Context, path, cacheDir string) (string, error) {
	if path != "" {
		return path, nil
	}
	return goInstall(ctx, cacheDir, "containerd-shim-runc-v2")
}

// goInstall builds containerd's command name at containerdVersion into
// the cache, unless it is there already.
func goInstall(ctx context.Context, cacheDir, name string) (string, error) {
	gobin := filepath.Join(cacheDir, "containerd-"+containerdVersion)
	bin := filepath.Join(gobin, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "building %s %s into %s (first run only, a minute or two)\n", name, containerdVersion, gobin)
	cmd := exec.CommandContext(ctx, "go", "install", "-tags", "no_btrfs no_devmapper no_zfs",
		"github.com/containerd/containerd/v2/cmd/"+name+"@"+containerdVersion)
	// `go install pkg@version` builds that module on its own terms; running
	// it outside the repo and with GOFLAGS cleared keeps our go.mod, vendor
	// settings or workspace out of it.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=", "GOWORK=off")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build %s %s: %w", name, containerdVersion, err)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", errors.New("build produced no binary at " + bin)
	}
	return bin, nil
}

// removeNamespaceDirs removes the empty per-namespace directories that
// runc and containerd leave behind after the bench namespace's last
// container: its cgroup in every hierarchy and containerd's default runc
// root. rmdir fails on anything still in use, which is left alone.
func removeNamespaceDirs() {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", benchNamespace))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", benchNamespace), filepath.Join("/run/containerd/runc", benchNamespace))
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
}
