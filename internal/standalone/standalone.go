// Package standalone runs a Flotilla service binary by hand, as a remote
// content store or containerd's proxy_plugins target would, for tests that
// drive the real process over its socket: `flotilla-<name> --socket S
// --root R [--option k=v ...]`, stopped with SIGTERM as flotillad stops it,
// or killed as a crash would end it.
package standalone

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// startTimeout bounds how long a service may take to create its socket.
	startTimeout = 20 * time.Second
	// stopTimeout bounds how long a service may take to exit on SIGTERM.
	stopTimeout = 15 * time.Second
)

// Binary is flotilla-<Name>: a link to flotillad, the one executable of
// every service, which runs the service argv[0] names.
type Binary struct {
	Name string
	// Path is the built binary; Main sets it.
	Path string
}

// Main is a TestMain body: it builds the binary once for every test of the
// package, runs them and removes it again. It returns the exit code.
func (b *Binary) Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "flbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	exe := "flotilla-" + b.Name
	b.Path = filepath.Join(dir, exe)
	daemon := filepath.Join(dir, "flotillad")
	build := exec.Command("go", "build", "-o", daemon, "github.com/flotilla-project/flotilla/cmd/flotillad")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building flotillad failed: %v\n", err)
		return 1
	}
	if err := os.Symlink("flotillad", b.Path); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Process is one running service.
type Process struct {
	// Socket is the service's gRPC socket.
	Socket string

	name   string
	cmd    *exec.Cmd
	out    *output
	exited chan struct{} // closed once cmd.Wait returned
	ended  bool          // Stop or Kill ended it already
}

// Start runs the binary on root with --option for each of options, and
// returns once its socket exists. The socket lives in a short temp
// directory, removed when t ends: Unix socket paths are limited to ~100
// bytes. A process that exits or does not create its socket in time is an
// error that includes its output.
func (b *Binary) Start(t testing.TB, root string, options ...string) (*Process, error) {
	sockDir, err := os.MkdirTemp("", "fl")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	p := &Process{
		Socket: filepath.Join(sockDir, "s.sock"),
		name:   "flotilla-" + b.Name,
		out:    &output{},
		exited: make(chan struct{}),
	}
	args := []string{"--socket", p.Socket, "--root", root, "--log-level", "warn"}
	for _, o := range options {
		args = append(args, "--option", o)
	}
	p.cmd = exec.Command(b.Path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	deadline := time.Now().Add(startTimeout)
	for {
		if _, err := os.Stat(p.Socket); err == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited at start: %v; output:\n%s", p.name, p.cmd.ProcessState, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%s did not create %s within %s; output:\n%s", p.name, p.Socket, startTimeout, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop ends the process as flotillad would, with SIGTERM, and reports an
// unclean exit or one that took too long (after which it is killed). A
// process already stopped or killed is no error.
func (p *Process) Stop() error {
	if p.ended {
		return nil
	}
	p.ended = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s did not stop within %s of SIGTERM; output:\n%s", p.name, stopTimeout, p.Output())
	}
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("%s exited with %v; output:\n%s", p.name, p.cmd.ProcessState, p.Output())
	}
	return nil
}

// Kill ends the process at once, as a crash or an OOM kill would: no
// deferred Close, no final write.
func (p *Process) Kill() {
	p.ended = true
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Output is what the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// output is a buffer the process's copy goroutines write while a test
// reads it.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(b)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
