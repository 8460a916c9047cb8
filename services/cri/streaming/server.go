// Package streaming serves the sessions of the CRI's Exec, Attach and
// PortForward. The calls answer with a URL on the streaming server
// (k8s.io/cri-streaming, the one containerd's CRI serves), which the
// kubelet (or kubectl through the API server) then connects to over SPDY
// or WebSocket. The session itself runs in the cri process: an exec is a
// task process whose stdio FIFOs this package copies to and from the
// connection; an attach joins the container's own stdio, which the cri
// process already reads for the log (see AttachPoint); a port forward
// dials the port from inside the pod's network namespace.
//
// What a session needs of the CRI server (which container or pod an ID
// names, whether it runs) it asks through Containers, the way
// cri-streaming's Runtime is asked to run the sessions.
//
// Limits: the streaming server speaks plain HTTP on the configured
// address (127.0.0.1 by default), with no authentication beyond the
// one-time token in the URL, as containerd's default. Attach only works
// for containers whose stdio the cri process reads: those it started, or
// reattached to after a restart when their log could be reopened; the
// container's stdin is a pipe fed by attached clients, and is lost (no
// longer writable) when the cri process restarts.
package streaming

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	cristreaming "k8s.io/cri-streaming/pkg/streaming"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Containers is what the sessions need of the CRI server's records.
type Containers interface {
	// RunningContainer resolves a container ID, possibly truncated, to
	// the full ID of a container that runs (errdefs.ErrFailedPrecondition
	// when it does not).
	RunningContainer(ctx context.Context, id string) (string, error)
	// Sandbox resolves a pod sandbox ID, possibly truncated, to its full
	// ID and the path of its network namespace ("" when the pod uses the
	// host's).
	Sandbox(ctx context.Context, id string) (fullID, netns string, err error)
	// SandboxReady tells whether the pod's sandbox (pause) task runs.
	SandboxReady(ctx context.Context, id string) bool
	// Exited is closed once the container's main process exited and its
	// exit was recorded (nil when the process watches no such container).
	Exited(id string) <-chan struct{}
}

// Config is what the streaming server runs sessions with.
type Config struct {
	// Namespace is the containerd namespace of the containers.
	Namespace string
	// FIFODir is where exec processes' stdio FIFOs are made.
	FIFODir string
}

// Server is the streaming server and what attach needs of each running
// container. It serves nothing until Start.
type Server struct {
	client     *containerd.Client
	containers Containers
	cfg        Config

	mu      sync.Mutex
	server  cristreaming.Server
	http    *http.Server
	attachs map[string]*AttachPoint
	// asked holds, per URL token, which streams the Exec or Attach
	// call asked for: over WebSocket the library hands the runtime a
	// stream for every channel, an unasked stdin reading as an
	// immediate EOF, which would close the process's stdin (and hang up
	// its terminal).
	asked map[string]askedStreams
}

// New returns a streaming server whose sessions run tasks' processes
// through client and look containers up in c.
func New(client *containerd.Client, c Containers, cfg Config) *Server {
	return &Server{client: client, containers: c, cfg: cfg}
}

type askedStreams struct {
	stdin, stdout, stderr bool
	at                    time.Time
}

type askedStreamsKey struct{}

// askedTTL outlives the library's token lifetime (one minute).
const askedTTL = 2 * time.Minute

// remember records what the call behind a streaming URL asked for.
func (s *Server) remember(rawURL string, a askedStreams) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return
	}
	a.at = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.asked == nil {
		s.asked = map[string]askedStreams{}
	}
	for k, v := range s.asked {
		if time.Since(v.at) > askedTTL {
			delete(s.asked, k)
		}
	}
	s.asked[path.Base(u.Path)] = a
}

// serve hands each session request to the library with what its
// call asked for in the context.
func (s *Server) serve(srv http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := path.Base(r.URL.Path)
		s.mu.Lock()
		a, ok := s.asked[token]
		delete(s.asked, token)
		s.mu.Unlock()
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

// Start starts the streaming server on address:port ("0" picks a free
// port); the URLs Exec, Attach and PortForward return point at it. The
// sessions log through ctx's logger.
func (s *Server) Start(ctx context.Context, address, port string) error {
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
	cfg := cristreaming.DefaultConfig
	cfg.Addr = l.Addr().String()
	cfg.BaseURL = &url.URL{Scheme: "http", Host: l.Addr().String()}
	srv, err := cristreaming.NewServer(cfg, sessions{s})
	if err != nil {
		l.Close()
		return fmt.Errorf("streaming server: %w", err)
	}
	// The sessions log through their request's context, which carries
	// the process's logger.
	logs := logging.WithLogger(context.Background(), logging.G(ctx))
	hs := &http.Server{
		Handler:           s.serve(srv),
		ReadHeaderTimeout: 30 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return logs },
	}
	s.mu.Lock()
	s.server, s.http = srv, hs
	s.mu.Unlock()
	go func() {
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logging.G(logs).Error("streaming server stopped", "error", err)
		}
	}()
	logging.G(logs).Info("streaming server listening", "address", l.Addr().String())
	return nil
}

// Stop closes the streaming server's listener and idle connections;
// sessions already upgraded end with their processes.
func (s *Server) Stop() {
	s.mu.Lock()
	hs := s.http
	s.mu.Unlock()
	if hs != nil {
		_ = hs.Close()
	}
}

func (s *Server) streamServer() (cristreaming.Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil {
		return nil, fmt.Errorf("the streaming server is not running: %w", errdefs.ErrUnavailable)
	}
	return s.server, nil
}

// withNamespace puts a session in the containers' namespace.
func (s *Server) withNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, s.cfg.Namespace)
}

// Exec prepares a streaming exec session and returns its URL.
func (s *Server) Exec(ctx context.Context, req *runtime.ExecRequest) (*runtime.ExecResponse, error) {
	if len(req.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	srv, err := s.streamServer()
	if err != nil {
		return nil, err
	}
	id, err := s.containers.RunningContainer(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp, err := srv.GetExec(&runtime.ExecRequest{
		ContainerId: id, Cmd: req.GetCmd(), Tty: req.GetTty(),
		Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(),
	})
	if err != nil {
		return nil, err
	}
	s.remember(resp.GetUrl(), askedStreams{stdin: req.GetStdin(), stdout: req.GetStdout(), stderr: req.GetStderr()})
	return resp, nil
}

// Attach prepares a streaming attach session and returns its URL.
func (s *Server) Attach(ctx context.Context, req *runtime.AttachRequest) (*runtime.AttachResponse, error) {
	srv, err := s.streamServer()
	if err != nil {
		return nil, err
	}
	id, err := s.containers.RunningContainer(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if s.attachPointOf(id) == nil {
		return nil, fmt.Errorf("container %s: its stdio is not read by this cri process (just restarted, or its log could not be reopened): %w", id, errdefs.ErrFailedPrecondition)
	}
	resp, err := srv.GetAttach(&runtime.AttachRequest{
		ContainerId: id, Tty: req.GetTty(),
		Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(),
	})
	if err != nil {
		return nil, err
	}
	s.remember(resp.GetUrl(), askedStreams{stdin: req.GetStdin(), stdout: req.GetStdout(), stderr: req.GetStderr()})
	return resp, nil
}

// PortForward prepares a streaming port forward session and returns its
// URL.
func (s *Server) PortForward(ctx context.Context, req *runtime.PortForwardRequest) (*runtime.PortForwardResponse, error) {
	srv, err := s.streamServer()
	if err != nil {
		return nil, err
	}
	id, _, err := s.containers.Sandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if !s.containers.SandboxReady(ctx, id) {
		return nil, fmt.Errorf("sandbox %s is not ready: %w", id, errdefs.ErrFailedPrecondition)
	}
	return srv.GetPortForward(&runtime.PortForwardRequest{PodSandboxId: id, Port: req.GetPort()})
}

// sessions runs the sessions the streaming server accepted. Its methods
// cannot live on Server, whose Exec, Attach and PortForward prepare them.
type sessions struct{ s *Server }

var _ cristreaming.Runtime = sessions{}
