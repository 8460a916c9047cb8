package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
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
}

// startContainerd runs containerd with a minimal config: its own root, state
// and socket, and the CRI plugins (which want CNI and more) disabled, since
// no workload here touches them.
func startContainerd(ctx context.Context, bin, tmp string) (*daemon, error) {
	d, err := newDaemon("containerd", tmp)
	if err != nil {
		return nil, err
	}
	d.address = filepath.Join(d.dir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""
`, filepath.Join(d.dir, "root"), filepath.Join(d.dir, "state"), d.address, d.address+".ttrpc")
	cfgPath := filepath.Join(d.dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	d.cmd = exec.Command(bin, "--config", cfgPath)
	return d, d.start(ctx, "")
}

// startFlotilla runs flotillad from binDir, which also holds the
// flotilla-<service> binaries it supervises.
func startFlotilla(ctx context.Context, binDir, tmp string) (*daemon, error) {
	bin := filepath.Join(binDir, "flotillad")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("flotillad not found (run `make build` first): %w", err)
	}
	d, err := newDaemon("flotilla", tmp)
	if err != nil {
		return nil, err
	}
	state := filepath.Join(d.dir, "state")
	d.address = filepath.Join(state, "flotilla.sock")
	// Info level, because readiness is the "flotillad ready" line: the
	// gateway answers Version before its services are wired.
	d.cmd = exec.Command(bin, "--root", filepath.Join(d.dir, "root"), "--state", state,
		"--address", d.address, "--log-level", "info")
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
func (d *daemon) stop() {
	if d.client != nil {
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
	}
	// containerd may leave mounts under its state; a failed removal is
	// reported, not fatal.
	if err := os.RemoveAll(d.dir); err != nil {
		fmt.Fprintf(os.Stderr, "remove %s: %v\n", d.dir, err)
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
	gobin := filepath.Join(cacheDir, "containerd-"+containerdVersion)
	bin := filepath.Join(gobin, "containerd")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "building containerd %s into %s (first run only, a minute or two)\n", containerdVersion, gobin)
	cmd := exec.CommandContext(ctx, "go", "install", "-tags", "no_btrfs no_devmapper no_zfs",
		"github.com/containerd/containerd/v2/cmd/containerd@"+containerdVersion)
	// `go install pkg@version` builds that module on its own terms; running
	// it outside the repo and with GOFLAGS cleared keeps our go.mod, vendor
	// settings or workspace out of it.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=", "GOWORK=off")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build containerd %s: %w", containerdVersion, err)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", errors.New("containerd build produced no binary at " + bin)
	}
	return bin, nil
}
