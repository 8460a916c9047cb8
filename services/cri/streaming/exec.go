package streaming

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// drainTimeout bounds how long an exec waits, after its process exited,
// for the rest of its output: a background child holding the FIFO open
// would otherwise hold the session forever.
const drainTimeout = 10 * time.Second

// Exec runs cmd in the container with the session's streams and returns
// once it exited (a utilexec.ExitError carries a non-zero code to the
// client).
func (r sessions) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	s := r.s
	ctx = s.withNamespace(ctx)
	id, err := s.containers.RunningContainer(ctx, id)
	if err != nil {
		return err
	}
	c, err := s.client.LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec of container %s: %w", id, err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return fmt.Errorf("task of container %s: %w", id, err)
	}
	pspec := *spec.Process
	pspec.Args = cmd
	pspec.Terminal = tty

	in2, stdout, stderr := askedOnly(ctx, in, out, errw)
	// The process always gets its output FIFOs, what was not asked for
	// discarded, as containerd does: the runc shim (Debian's 1.6) fails
	// now and then to start a process with one output left out.
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	if tty {
		stderr = nil
	}
	var stdin io.Reader
	started := make(chan struct{})
	var process containerd.Process
	if in2 != nil {
		stdin = &execStdin{r: in2, started: started, closeIO: func() {
			// The shim keeps the process's stdin open until told:
			// without this the process never sees EOF.
			if err := process.CloseIO(context.WithoutCancel(ctx), containerd.WithStdinCloser); err != nil && !errdefs.IsNotFound(err) {
				logging.G(ctx).Debug("close exec stdin", "container", id, "error", err)
			}
		}}
	}
	done := make(chan struct{})
	defer close(done)
	if tty && stdin == nil {
		// A terminal without a stdin FIFO is hung up early by the runc
		// shim (the process gets SIGHUP, its last output is lost): give
		// it a stdin that stays open, with nothing in it, until the
		// session ends.
		stdin = idleReader(done)
	}
	opts := []cio.Opt{cio.WithStreams(stdin, stdout, stderr), cio.WithFIFODir(s.cfg.FIFODir)}
	if tty {
		opts = append(opts, cio.WithTerminal)
	}
	execID := newExecID()
	process, err = task.Exec(ctx, execID, &pspec, cio.NewCreator(opts...))
	if err != nil {
		return fmt.Errorf("exec in container %s: %w", id, err)
	}
	cleanup := context.WithoutCancel(ctx)
	defer func() {
		if _, err := process.Delete(cleanup, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			logging.G(ctx).Warn("delete exec process", "container", id, "exec", execID, "error", err)
		}
	}()
	exitC, err := process.Wait(cleanup)
	if err != nil {
		return err
	}
	if err := process.Start(ctx); err != nil {
		return fmt.Errorf("start exec in container %s: %w", id, err)
	}
	close(started)
	if tty {
		go forwardResize(done, resize, func(w, h uint32) error { return process.Resize(cleanup, w, h) })
	}

	var st containerd.ExitStatus
	select {
	case st = <-exitC:
	case <-ctx.Done():
		_ = process.Kill(cleanup, syscall.SIGKILL)
		<-exitC
		return ctx.Err()
	}
	if err := st.Error(); err != nil {
		return fmt.Errorf("wait for exec in container %s: %w", id, err)
	}
	drained := make(chan struct{})
	go func() { process.IO().Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		logging.G(ctx).Warn("exec output still open after its process exited; closing it", "container", id, "exec", execID)
	}
	if code := st.ExitCode(); code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with code %d", cmd, code), Code: int(code)}
	}
	return nil
}

// newExecID names an exec process as the CRI server names its objects:
// random, so that concurrent sessions never collide.
func newExecID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// execStdin feeds an exec's stdin from the session; it waits for the
// process to start, and once the client's stdin ends it has the shim
// close the process's stdin.
type execStdin struct {
	r       io.Reader
	started <-chan struct{}
	closeIO func()
	once    sync.Once
}

func (e *execStdin) Read(p []byte) (int, error) {
	<-e.started
	n, err := e.r.Read(p)
	if err != nil {
		e.once.Do(e.closeIO)
	}
	return n, err
}

// idleReader has nothing to read until done closes, then ends.
type idleReader <-chan struct{}

func (r idleReader) Read([]byte) (int, error) {
	<-r
	return 0, io.EOF
}

// forwardResize applies the session's terminal sizes until done closes.
func forwardResize(done <-chan struct{}, resize <-chan remotecommand.TerminalSize, apply func(w, h uint32) error) {
	for {
		select {
		case <-done:
			return
		case size, ok := <-resize:
			if !ok {
				return
			}
			if size.Width == 0 || size.Height == 0 {
				continue
			}
			_ = apply(uint32(size.Width), uint32(size.Height))
		}
	}
}
