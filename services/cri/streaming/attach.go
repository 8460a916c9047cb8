package streaming

import (
	"context"
	"fmt"
	"io"
	"sync"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Attach joins the container's main process: its output (as the log
// sees it) is copied to the session while the session lasts, and the
// session's stdin to the container's, if it was created with stdin.
func (r sessions) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	s := r.s
	ctx = s.withNamespace(ctx)
	id, err := s.containers.RunningContainer(ctx, id)
	if err != nil {
		return err
	}
	ap := s.attachPointOf(id)
	if ap == nil {
		return fmt.Errorf("container %s: its stdio is not read by this cri process (restarted without its log?), nothing to attach to: %w", id, errdefs.ErrFailedPrecondition)
	}
	exited := s.containers.Exited(id)

	in, stdout, stderr := askedOnly(ctx, in, out, errw)
	cl := &attachClient{stdout: stdout, stderr: stderr, failed: make(chan struct{})}
	ap.add(cl)
	defer ap.remove(cl)

	var stdinDone chan struct{}
	if in != nil && ap.stdinW != nil {
		stdinDone = make(chan struct{})
		go func() {
			defer close(stdinDone)
			_, _ = io.Copy(ap.stdinW, in)
			if ap.stdinOnce && !ap.tty {
				ap.closeStdin(func() {
					if err := s.closeTaskStdin(context.WithoutCancel(ctx), id); err != nil {
						logging.G(ctx).Debug("close container stdin", "container", id, "error", err)
					}
				})
			}
		}()
	}
	done := make(chan struct{})
	defer close(done)
	if ap.tty {
		go forwardResize(done, resize, func(w, h uint32) error {
			c, err := s.client.LoadContainer(ctx, id)
			if err != nil {
				return err
			}
			task, err := c.Task(ctx, nil)
			if err != nil {
				return err
			}
			return task.Resize(ctx, w, h)
		})
	}
	for {
		select {
		case <-exited:
			return nil
		case <-ap.closed:
			return nil
		case <-cl.failed:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-stdinDone:
			// The client's stdin ended: with stdin once, the
			// container sees EOF and the session follows its output
			// to the end; otherwise the client is gone.
			if !ap.stdinOnce || ap.tty {
				return nil
			}
			stdinDone = nil
		}
	}
}

func (s *Server) closeTaskStdin(ctx context.Context, id string) error {
	c, err := s.client.LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return err
	}
	return task.CloseIO(ctx, containerd.WithStdinCloser)
}

// AttachPoint is a running container's stdio as the cri process holds
// it: the output is written to the log and to every attached client, the
// stdin (when the container has one) is a pipe the clients write to. A
// nil AttachPoint attaches nothing: its output goes to the log only.
type AttachPoint struct {
	owner     *Server
	id        string
	tty       bool
	stdinOnce bool
	stdinR    *io.PipeReader
	stdinW    *io.PipeWriter

	mu          sync.Mutex
	clients     map[*attachClient]struct{}
	stdinClosed bool
	closed      chan struct{}
	closeOnce   sync.Once
}

type attachClient struct {
	stdout, stderr io.Writer
	failed         chan struct{}
	failOnce       sync.Once
}

func (c *attachClient) fail() { c.failOnce.Do(func() { close(c.failed) }) }

// NewAttachPoint registers the attach point of a container about to
// start (or reattached after a restart), replacing any older one.
func (s *Server) NewAttachPoint(id string, config *runtime.ContainerConfig) *AttachPoint {
	ap := &AttachPoint{
		owner:     s,
		id:        id,
		tty:       config.GetTty(),
		stdinOnce: config.GetStdinOnce(),
		clients:   map[*attachClient]struct{}{},
		closed:    make(chan struct{}),
	}
	if config.GetStdin() {
		ap.stdinR, ap.stdinW = io.Pipe()
	}
	s.mu.Lock()
	if s.attachs == nil {
		s.attachs = map[string]*AttachPoint{}
	}
	old := s.attachs[id]
	s.attachs[id] = ap
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return ap
}

func (s *Server) attachPointOf(id string) *AttachPoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attachs[id]
}

// Stdin is what cio copies into the container's stdin FIFO: nil (no
// FIFO) when the container has no stdin.
func (a *AttachPoint) Stdin() io.Reader {
	if a == nil || a.stdinR == nil {
		return nil
	}
	return a.stdinR
}

// Tee wraps the log's writers so that attached clients get the output
// too.
func (a *AttachPoint) Tee(stdout, stderr io.Writer) (io.Writer, io.Writer) {
	if a == nil {
		return stdout, stderr
	}
	return &teeWriter{ap: a, log: stdout}, &teeWriter{ap: a, log: stderr, stderr: true}
}

func (a *AttachPoint) add(c *attachClient) {
	a.mu.Lock()
	a.clients[c] = struct{}{}
	a.mu.Unlock()
}

func (a *AttachPoint) remove(c *attachClient) {
	a.mu.Lock()
	delete(a.clients, c)
	a.mu.Unlock()
}

// broadcast writes p to every client that asked for the stream. A client
// that cannot take it is dropped; a slow one slows the container's output
// down, as a slow log would.
func (a *AttachPoint) broadcast(p []byte, stderr bool) {
	a.mu.Lock()
	var targets []*attachClient
	for c := range a.clients {
		targets = append(targets, c)
	}
	a.mu.Unlock()
	for _, c := range targets {
		w := c.stdout
		if stderr {
			w = c.stderr
		}
		if w == nil {
			continue
		}
		if _, err := w.Write(p); err != nil {
			a.remove(c)
			c.fail()
		}
	}
}

// closeStdin ends the container's stdin once: the pipe (so cio closes
// its end of the FIFO) and then, through closeIO, the shim's.
func (a *AttachPoint) closeStdin(closeIO func()) {
	a.mu.Lock()
	if a.stdinClosed || a.stdinW == nil {
		a.mu.Unlock()
		return
	}
	a.stdinClosed = true
	a.mu.Unlock()
	_ = a.stdinW.Close()
	closeIO()
}

// Close ends the attach point when the container's stdio is closed: the
// sessions end and the stdin pipe closes, so cio's copy returns.
func (a *AttachPoint) Close() {
	if a == nil {
		return
	}
	a.closeOnce.Do(func() {
		close(a.closed)
		if a.stdinW != nil {
			_ = a.stdinW.Close()
		}
		a.owner.mu.Lock()
		if a.owner.attachs[a.id] == a {
			delete(a.owner.attachs, a.id)
		}
		a.owner.mu.Unlock()
	})
}

type teeWriter struct {
	ap     *AttachPoint
	log    io.Writer
	stderr bool
}

func (w *teeWriter) Write(p []byte) (int, error) {
	_, _ = w.log.Write(p)
	w.ap.broadcast(p, w.stderr)
	return len(p), nil
}
