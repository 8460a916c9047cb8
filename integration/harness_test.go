// Package integration starts the real flotillad and drives it with clients
// nobody here wrote: Debian's ctr and containerd's Go client. The tests need
// root; they skip with a message otherwise.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
)

// binDir holds flotillad and the service binaries: $FLOTILLA_BIN (set by
// `make integration`) or a fresh build made by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	binDir = os.Getenv("FLOTILLA_BIN")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "flotilla-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("make", "-C", "..", "build", "BIN="+dir)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building flotilla binaries failed:", err)
			return 1
		}
		binDir = dir
	}
	return m.Run()
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration tests start flotillad and need root")
	}
}

func requireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: install Debian's %s (make test-deps)", name, pkg)
	}
	return p
}

// syncBuffer collects a daemon's output for the test log.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type daemon struct {
	t       testing.TB
	dir     string
	root    string
	state   string
	address string
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{}
	exitErr error
}

type daemonOption func(*daemon, *[]string)

// withConfig writes a config file for the daemon.
func withConfig(toml string) daemonOption {
	return func(d *daemon, args *[]string) {
		p := filepath.Join(d.dir, "config.toml")
		if err := os.WriteFile(p, []byte(toml), 0o600); err != nil {
			d.t.Fatal(err)
		}
		*args = append(*args, "--config", p)
	}
}

// withEnv adds environment variables to the daemon.
func withEnv(kv ...string) daemonOption {
	return func(d *daemon, _ *[]string) { d.cmd.Env = append(d.cmd.Env, kv...) }
}

func newDaemon(t testing.TB, opts ...daemonOption) *daemon {
	t.Helper()
	requireRoot(t)
	// Unix socket paths must stay short: keep the directory near /tmp.
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		t:       t,
		dir:     dir,
		root:    filepath.Join(dir, "root"),
		state:   filepath.Join(dir, "state"),
		address: filepath.Join(dir, "state", "flotilla.sock"),
		out:     &syncBuffer{},
	}
	d.cmd = exec.Command(filepath.Join(binDir, "flotillad"))
	d.cmd.Env = os.Environ()
	args := []string{"--root", d.root, "--state", d.state, "--address", d.address, "--log-level", "debug"}
	for _, o := range opts {
		o(d, &args)
	}
	args = withPrivateNRISocket(d, args)
	d.cmd.Args = append(d.cmd.Args, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("flotillad output:\n%s", d.out.String())
		}
		_ = os.RemoveAll(dir)
	})
	return d
}

// start runs the daemon and returns once its client socket answers.
func (d *daemon) start() *daemon {
	d.t.Helper()
	if err := d.startErr(); err != nil {
		d.t.Fatalf("flotillad did not become ready: %v\noutput:\n%s", err, d.out.String())
	}
	return d
}

func (d *daemon) startErr() error {
	d.done = make(chan struct{})
	if err := d.cmd.Start(); err != nil {
		return err
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.done) }()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(d.out.String(), "flotillad ready") {
		select {
		case <-d.done:
			return fmt.Errorf("flotillad exited: %v", d.exitErr)
		case <-deadline:
			return fmt.Errorf("timed out")
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// wait returns the daemon's exit error once it has exited.
func (d *daemon) wait(timeout time.Duration) error {
	select {
	case <-d.done:
		return d.exitErr
	case <-time.After(timeout):
		return fmt.Errorf("flotillad still running after %s", timeout)
	}
}

// stop sends SIGTERM and expects a clean exit.
func (d *daemon) stop() {
	if d.done == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.wait(20 * time.Second); err != nil {
		_ = d.cmd.Process.Kill()
		<-d.done
		d.t.Errorf("flotillad did not exit cleanly on SIGTERM: %v", err)
	}
}

// ctr runs Debian's ctr against the daemon.
func (d *daemon) ctr(args ...string) (string, error) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", d.address}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustCtr runs ctr and fails the test on error.
func (d *daemon) mustCtr(args ...string) string {
	d.t.Helper()
	out, err := d.ctr(args...)
	if err != nil {
		d.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ctrStdin runs ctr with stdin from r.
func (d *daemon) ctrStdin(r io.Reader, args ...string) (string, error) {
	cmd := exec.Command("ctr", append([]string{"--address", d.address}, args...)...)
	cmd.Stdin = r
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// client is containerd's Go client on the daemon's socket.
func (d *daemon) client() *containerd.Client {
	d.t.Helper()
	c, err := containerd.New(d.address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		d.t.Fatalf("containerd client: %v", err)
	}
	d.t.Cleanup(func() { c.Close() })
	return c
}

// servicePid is the pid of a service process, as Introspection reports it.
func (d *daemon) servicePid(name string) int {
	d.t.Helper()
	pid, err := d.introspectPid(name)
	if err != nil {
		d.t.Fatal(err)
	}
	return pid
}

// servicePidOrZero is servicePid for polling: 0 when it cannot be read.
func (d *daemon) servicePidOrZero(name string) int {
	pid, _ := d.introspectPid(name)
	return pid
}

func (d *daemon) introspectPid(name string) (int, error) {
	c, err := containerd.New(d.address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		return 0, fmt.Errorf("containerd client: %w", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx, "id=="+name)
	if err != nil {
		return 0, fmt.Errorf("introspection of %s: %w", name, err)
	}
	for _, p := range resp.Plugins {
		if p.ID == name && p.Exports["socket"] != "" {
			pid, err := strconv.Atoi(p.Exports["pid"])
			if err != nil {
				return 0, fmt.Errorf("pid of %s: exports %v: %w", name, p.Exports, err)
			}
			return pid, nil
		}
	}
	return 0, fmt.Errorf("introspection lists no service %s", name)
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ctrStdinMust runs ctr with stdin from r and fails the test on error.
func (d *daemon) ctrStdinMust(r io.Reader, args ...string) string {
	d.t.Helper()
	out, err := d.ctrStdin(r, args...)
	if err != nil {
		d.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ctrBytes runs ctr and returns its stdout alone, unchanged.
func (d *daemon) ctrBytes(args ...string) ([]byte, error) {
	cmd := exec.Command("ctr", append([]string{"--address", d.address}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// withPrivateNRISocket gives the daemon's cri service an NRI socket of its
// own (<state>/nri.sock) unless its config names one: NRI's default,
// /var/run/nri/nri.sock, is the host's, and daemons running side by side
// would take it from each other (or from a containerd on the host).
func withPrivateNRISocket(d *daemon, args []string) []string {
	section := fmt.Sprintf("\n[services.cri.options.nri]\nsocket_path = %q\n", filepath.Join(d.state, "nri.sock"))
	p := filepath.Join(d.dir, "config.toml")
	if !slices.Contains(args, "--config") {
		if err := os.WriteFile(p, []byte(section), 0o600); err != nil {
			d.t.Fatal(err)
		}
		return append(args, "--config", p)
	}
	b, err := os.ReadFile(p)
	if err != nil || strings.Contains(string(b), "options.nri") {
		return args
	}
	if err := os.WriteFile(p, append(b, section...), 0o600); err != nil {
		d.t.Fatal(err)
	}
	return args
}
