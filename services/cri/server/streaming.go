package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	goruntime "runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Exec, Attach and PortForward answer with a URL on the streaming server
// (k8s.io/cri-streaming, the one containerd's CRI serves), which the
// kubelet (or kubectl through the API server) then connects to over SPDY
// or WebSocket. The session itself runs in this process: an exec is a
// task process whose stdio FIFOs this process copies to and from the
// connection; an attach joins the container's own stdio, which this
// process already reads for the log; a port forward dials the port from
// inside the pod's network namespace.
//
// Limits: the streaming server speaks plain HTTP on the configured
// address (127.0.0.1 by default), with no authentication beyond the
// one-time token in the URL, as containerd's default. Attach only works
// for containers whose stdio this process reads: those it started, or
// reattached to after a restart when their log could be reopened; the
// container's stdin is a pipe fed by attached clients, and is lost (no
// longer writable) when the cri process restarts.

// streamDrainTimeout bounds how long an exec waits, after its process
// exited, for the rest of its output: a background child holding the
// FIFO open would otherwise hold the session forever.
const streamDrainTimeout = 10 * time.Second

// streamState is the streaming server and what attach needs of each
// running container. The zero value serves nothing.
type streamState struct {
	server streaming.Server
	http   *http.Server

	mu      sync.Mutex
	attachs map[string]*attachPoint
	// asked holds, per URL token, which streams the Exec or Attach
	// call asked for: over WebSocket the library hands the runtime a
	// stream for every channel, an unasked stdin reading as an
	// immediate EOF, which would close the process's stdin (and hang up
	// its terminal).
	asked map[string]askedStreams
}

type askedStreams struct {
	stdin, stdout, stderr bool
	at                    time.Time
}

type askedStreamsKey struct{}

// askedTTL outlives the library's token lifetime (one minute).
const askedTTL = 2 * time.Minute

// remember records what the call behind a streaming URL asked for.
func (st *streamState) remember(rawURL string, a askedStreams) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return
	}
	a.at = time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.asked == nil {
		st.asked = map[string]askedStreams{}
	}
	for k, v := range st.asked {
		if time.Since(v.at) > askedTTL {
			delete(st.asked, k)
		}
	}
	st.asked[path.Base(u.Path)] = a
}

// serve hands each session request to the library with what its
// call asked for in the context.
func (st *streamState) serve(srv http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := path.Base(r.URL.Path)
		st.mu.Lock()
		a, ok := st.asked[token]
		delete(st.asked, token)
		st.mu.Unlock()
		if ok {
			r = r.WithContext(context.WithValue(r.Context(), askedStreamsKey{}, a))
		}
		srv.ServeHTTP(w, r)
	})
}

// askedOnly drops the streams the call did not ask for; a stream left
// out is a nil interface, which cio reads as "no FIFO".
func askedOnly(ctx context.Context, in io.Reader, out, errw io.WriteCloser) (io.Reader, io.Writer, io.Writer) {
	a, known := ctx.Value(askedStreamsKey{}).(askedStreams)
	var stdin io.Reader
	var stdout, stderr io.Writer
	if in != nil && (!known || a.stdin) {
		stdin = in
	}
	if out != nil && (!known || a.stdout) {
		stdout = out
	}
	if errw != nil && (!known || a.stderr) {
		stderr = errw
	}
	return stdin, stdout, stderr
}

// StartStreaming starts the streaming server on address:port ("0" picks a
// free port); the URLs Exec, Attach and PortForward return point at it.
func (s *Server) StartStreaming(address, port string) error {
	if address == "" {
		address = "127.0.0.1"
	}
	if port == "" {
		port = "0"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(address, port))
	if err != nil {
		return fmt.Errorf("streaming server: %w", err)
	}
	// Listening first, so that the URLs carry the real port from the
	// first call on (the library learns it only inside its own Start).
	cfg := streaming.DefaultConfig
	cfg.Addr = l.Addr().String()
	cfg.BaseURL = &url.URL{Scheme: "http", Host: l.Addr().String()}
	srv, err := streaming.NewServer(cfg, streamRuntime{s})
	if err != nil {
		l.Close()
		return fmt.Errorf("streaming server: %w", err)
	}
	// Exec, Attach and PortForward log through their request's context,
	// which carries the process's logger.
	logs := logging.WithLogger(context.Background(), logging.G(s.pods.ctx))
	hs := &http.Server{
		Handler:           s.streams.serve(srv),
		ReadHeaderTimeout: 30 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return logs },
	}
	s.streams.mu.Lock()
	s.streams.server, s.streams.http = srv, hs
	s.streams.mu.Unlock()
	go func() {
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logging.G(logs).Error("streaming server stopped", "error", err)
		}
	}()
	logging.G(logs).Info("streaming server listening", "address", l.Addr().String())
	return nil
}

// stopStreaming closes the streaming server's listener and idle
// connections; sessions already upgraded end with their processes.
func (s *Server) stopStreaming() {
	s.streams.mu.Lock()
	hs := s.streams.http
	s.streams.mu.Unlock()
	if hs != nil {
		_ = hs.Close()
	}
}

func (s *Server) streamServer() (streaming.Server, error) {
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	if s.streams.server == nil {
		return nil, fmt.Errorf("the streaming server is not running: %w", errdefs.ErrUnavailable)
	}
	return s.streams.server, nil
}

// runningContainer resolves a (possibly truncated) container ID and
// checks that the container runs.
func (s *Server) runningContainer(ctx context.Context, id string) (*containerMeta, error) {
	m, _, err := s.getContainer(ctx, id)
	if err != nil {
		return nil, err
	}
	if state, _, _ := s.containerState(ctx, m); state != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is not running: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	return m, nil
}

// Exec prepares a streaming exec session and returns its URL.
func (s *Server) Exec(ctx context.Context, req *runtime.ExecRequest) (*runtime.ExecResponse, error) {
	ctx = withNamespace(ctx)
	if len(req.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	srv, err := s.streamServer()
	if err != nil {
		return nil, err
	}
	m, err := s.runningContainer(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp, err := srv.GetExec(&runtime.ExecRequest{
		ContainerId: m.ID, Cmd: req.GetCmd(), Tty: req.GetTty(),
		Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(),
	})
	if err != nil {
		return nil, err
	}
	s.streams.remember(resp.GetUrl(), askedStreams{stdin: req.GetStdin(), stdout: req.GetStdout(), stderr: req.GetStderr()})
	return resp, nil
}

// Attach prepares a streaming attach session and returns its URL.
func (s *Server) Attach(ctx context.Context, req *runtime.AttachRequest) (*runtime.AttachResponse, error) {
	ctx = withNamespace(ctx)
	srv, err := s.streamServer()
	if err != nil {
		return nil, err
	}
	m, err := s.runningContainer(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if s.attachPointOf(m.ID) == nil {
		return nil, fmt.Errorf("container %s: its stdio is not read by this cri process (just restarted, or its log could not be reopened): %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	resp, err := srv.GetAttach(&runtime.AttachRequest{
		ContainerId: m.ID, Tty: req.GetTty(),
		Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(),
	})
	if err != nil {
		return nil, err
	}
	s.streams.remember(resp.GetUrl(), askedStreams{stdin: req.GetStdin(), stdout: req.GetStdout(), stderr: req.GetStderr()})
	return resp, nil
}

// PortForward prepares a streaming port forward session and returns its
// URL.
func (s *Server) PortForward(ctx context.Context, req *runtime.PortForwardRequest) (*runtime.PortForwardResponse, error) {
	ctx = withNamespace(ctx)
	srv, err := s.streamServer()
	if err != nil {
		return nil, err
	}
	sb, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if ok, _ := s.sandboxReady(ctx, sb.ID); !ok {
		return nil, fmt.Errorf("sandbox %s is not ready: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	return srv.GetPortForward(&runtime.PortForwardRequest{PodSandboxId: sb.ID, Port: req.GetPort()})
}

// streamRuntime runs the sessions the streaming server accepted. Its
// methods cannot live on Server, whose Exec, Attach and PortForward are
// the CRI calls.
type streamRuntime struct{ s *Server }

var _ streaming.Runtime = streamRuntime{}

// Exec runs cmd in the container with the session's streams and returns
// once it exited (a utilexec.ExitError carries a non-zero code to the
// client).
func (r streamRuntime) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	s := r.s
	ctx = withNamespace(ctx)
	m, err := s.runningContainer(ctx, id)
	if err != nil {
		return err
	}
	c, err := s.client.LoadContainer(ctx, m.ID)
	if err != nil {
		return err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec of container %s: %w", m.ID, err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return fmt.Errorf("task of container %s: %w", m.ID, err)
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
				logging.G(ctx).Debug("close exec stdin", "container", m.ID, "error", err)
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
	opts := []cio.Opt{cio.WithStreams(stdin, stdout, stderr), cio.WithFIFODir(s.fifoDir())}
	if tty {
		opts = append(opts, cio.WithTerminal)
	}
	execID := newID()[:32]
	process, err = task.Exec(ctx, execID, &pspec, cio.NewCreator(opts...))
	if err != nil {
		return fmt.Errorf("exec in container %s: %w", m.ID, err)
	}
	cleanup := context.WithoutCancel(ctx)
	defer func() {
		if _, err := process.Delete(cleanup, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			logging.G(ctx).Warn("delete exec process", "container", m.ID, "exec", execID, "error", err)
		}
	}()
	exitC, err := process.Wait(cleanup)
	if err != nil {
		return err
	}
	if err := process.Start(ctx); err != nil {
		return fmt.Errorf("start exec in container %s: %w", m.ID, err)
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
		return fmt.Errorf("wait for exec in container %s: %w", m.ID, err)
	}
	drained := make(chan struct{})
	go func() { process.IO().Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(streamDrainTimeout):
		logging.G(ctx).Warn("exec output still open after its process exited; closing it", "container", m.ID, "exec", execID)
	}
	if code := st.ExitCode(); code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with code %d", cmd, code), Code: int(code)}
	}
	return nil
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

// Attach joins the container's main process: its output (as the log
// sees it) is copied to the session while the session lasts, and the
// session's stdin to the container's, if it was created with stdin.
func (r streamRuntime) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	s := r.s
	ctx = withNamespace(ctx)
	m, err := s.runningContainer(ctx, id)
	if err != nil {
		return err
	}
	ap := s.attachPointOf(m.ID)
	if ap == nil {
		return fmt.Errorf("container %s: its stdio is not read by this cri process (restarted without its log?), nothing to attach to: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	s.pods.mu.Lock()
	exited := s.pods.exits[m.ID]
	s.pods.mu.Unlock()

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
					if err := s.closeTaskStdin(context.WithoutCancel(ctx), m.ID); err != nil {
						logging.G(ctx).Debug("close container stdin", "container", m.ID, "error", err)
					}
				})
			}
		}()
	}
	done := make(chan struct{})
	defer close(done)
	if ap.tty {
		go forwardResize(done, resize, func(w, h uint32) error {
			c, err := s.client.LoadContainer(ctx, m.ID)
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

// attachPoint is a running container's stdio as this process holds it:
// the output is written to the log and to every attached client, the
// stdin (when the container has one) is a pipe the clients write to.
type attachPoint struct {
	owner     *streamState
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

// newAttachPoint registers the attach point of a container about to
// start (or reattached after a restart), replacing any older one.
func (s *Server) newAttachPoint(m *containerMeta) *attachPoint {
	ap := &attachPoint{
		owner:     &s.streams,
		id:        m.ID,
		tty:       m.config.GetTty(),
		stdinOnce: m.config.GetStdinOnce(),
		clients:   map[*attachClient]struct{}{},
		closed:    make(chan struct{}),
	}
	if m.config.GetStdin() {
		ap.stdinR, ap.stdinW = io.Pipe()
	}
	s.streams.mu.Lock()
	if s.streams.attachs == nil {
		s.streams.attachs = map[string]*attachPoint{}
	}
	old := s.streams.attachs[m.ID]
	s.streams.attachs[m.ID] = ap
	s.streams.mu.Unlock()
	if old != nil {
		old.close()
	}
	return ap
}

func (s *Server) attachPointOf(id string) *attachPoint {
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	return s.streams.attachs[id]
}

// stdin is what cio copies into the container's stdin FIFO: nil (no
// FIFO) when the container has no stdin.
func (a *attachPoint) stdin() io.Reader {
	if a == nil || a.stdinR == nil {
		return nil
	}
	return a.stdinR
}

// tee wraps the log's writers so that attached clients get the output
// too.
func (a *attachPoint) tee(stdout, stderr io.Writer) (io.Writer, io.Writer) {
	if a == nil {
		return stdout, stderr
	}
	return &teeWriter{ap: a, log: stdout}, &teeWriter{ap: a, log: stderr, stderr: true}
}

func (a *attachPoint) add(c *attachClient) {
	a.mu.Lock()
	a.clients[c] = struct{}{}
	a.mu.Unlock()
}

func (a *attachPoint) remove(c *attachClient) {
	a.mu.Lock()
	delete(a.clients, c)
	a.mu.Unlock()
}

// broadcast writes p to every client that asked for the stream. A client
// that cannot take it is dropped; a slow one slows the container's output
// down, as a slow log would.
func (a *attachPoint) broadcast(p []byte, stderr bool) {
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
func (a *attachPoint) closeStdin(closeIO func()) {
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

// close ends the attach point when the container's stdio is closed: the
// sessions end and the stdin pipe closes, so cio's copy returns.
func (a *attachPoint) close() {
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
	ap     *attachPoint
	log    io.Writer
	stderr bool
}

func (w *teeWriter) Write(p []byte) (int, error) {
	_, _ = w.log.Write(p)
	w.ap.broadcast(p, w.stderr)
	return len(p), nil
}

// PortForward connects the session to port on the pod's loopback, from
// inside the pod's network namespace (the host's for host-network pods),
// and copies both ways until either side is done.
func (r streamRuntime) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	s := r.s
	ctx = withNamespace(ctx)
	sb, err := s.getSandbox(ctx, podID)
	if err != nil {
		return err
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port %d out of range: %w", port, errdefs.ErrInvalidArgument)
	}
	conn, err := dialInNetNS(sb.NetNS, port)
	if err != nil {
		return fmt.Errorf("port forward to pod %s port %d: %w", sb.ID, port, err)
	}
	defer conn.Close()

	toClient := make(chan error, 1)
	toPod := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		toClient <- err
	}()
	go func() {
		_, err := io.Copy(conn, stream)
		toPod <- err
	}()
	select {
	case err := <-toClient:
		// The pod closed the connection (or the client went away):
		// all it had to say was sent.
		return err
	case err := <-toPod:
		if err != nil {
			return err
		}
		// The client is done sending; the pod may still answer.
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		select {
		case err := <-toClient:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dialInNetNS dials 127.0.0.1:port (else [::1]:port) from inside the
// network namespace at path (from this one when path is empty). The
// socket is created on an OS thread switched into the namespace and keeps
// it once the thread switches back.
func dialInNetNS(path string, port int32) (net.Conn, error) {
	dial := func() (net.Conn, error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		p := strconv.Itoa(int(port))
		conn, err := d.Dial("tcp4", net.JoinHostPort("127.0.0.1", p))
		if err != nil {
			if conn6, err6 := d.Dial("tcp6", net.JoinHostPort("::1", p)); err6 == nil {
				return conn6, nil
			}
			return nil, err
		}
		return conn, nil
	}
	if path == "" {
		return dial()
	}
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is unlocked only once it is back in its own
		// namespace; otherwise it exits with this goroutine.
		goruntime.LockOSThread()
		conn, err := func() (net.Conn, error) {
			self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
			if err != nil {
				return nil, err
			}
			defer self.Close()
			target, err := os.Open(path)
			if err != nil {
				return nil, fmt.Errorf("pod network namespace: %w", err)
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("enter pod network namespace %s: %w", path, err)
			}
			conn, err := dial()
			if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
				goruntime.UnlockOSThread()
			}
			return conn, err
		}()
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}
