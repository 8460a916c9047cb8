package shim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Config is how shims are started and reached.
type Config struct {
	// Root holds the persistent work directories, State the bundles.
	Root, State string
	// Address is the daemon's gRPC address as shims know it (-address,
	// GRPC_ADDRESS). Shims name their socket after it, so it must be the
	// same for every start of the daemon.
	Address string
	// TTRPCAddress is where shims publish their events (TTRPC_ADDRESS).
	TTRPCAddress string
	// SocketDir is where shims create their sockets; empty lets the shim
	// choose (/run/containerd/s).
	SocketDir string
	// BinDir is searched for shim binaries before PATH.
	BinDir string
	// RuncRoot is runc's state directory for containerd-shim-runc-v2
	// tasks whose runtime options name none; empty keeps runc's default.
	RuncRoot string
	// Debug asks shims for debug logs.
	Debug bool
}

// Shim is a connection to one running shim process.
type Shim struct {
	bundle *Bundle
	binary string
	params *bootapi.BootstrapResult
	conn   *ttrpc.Client
	task   *taskClient
	log    *os.File

	// closing is set before tasks closes the connection itself, so that
	// only a connection the shim dropped counts as a lost shim.
	closing atomic.Bool
	lost    func()
	// closed is closed once the connection ended, for whatever reason.
	closed chan struct{}
	once   sync.Once
}

// Task is the shim's task API.
func (s *Shim) Task() TaskClient { return s.task }

// Address is the shim's address as containerd reports it
// (<protocol>+<address>).
func (s *Shim) Address() string { return s.params.Protocol + "+" + s.params.Address }

// connected reports whether the connection to the shim is still up.
func (s *Shim) connected() bool {
	select {
	case <-s.closed:
		return false
	default:
		return !s.closing.Load()
	}
}

// Close drops the connection and leaves the shim running.
func (s *Shim) Close() {
	s.closing.Store(true)
	_ = s.conn.Close()
	s.closeLog()
}

func (s *Shim) closeLog() {
	if s.log != nil {
		_ = s.log.Close()
	}
}

// onClose is ttrpc's callback when the connection ends, for any reason.
func (s *Shim) onClose() {
	s.once.Do(func() {
		close(s.closed)
		if s.closing.Load() {
			return
		}
		s.closeLog()
		if s.lost != nil {
			s.lost()
		}
	})
}

// shutdownWait bounds the wait for a shim to exit after Shutdown.
const shutdownWait = 3 * time.Second

// Shutdown asks the shim to exit (it does once its tasks are deleted) and
// waits for it to, so that it has sent its last events and is out of its
// bundle before the bundle goes. Its log is read to the end.
func (s *Shim) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	_, err := s.task.Shutdown(ctx, &task.ShutdownRequest{ID: s.bundle.ID})
	if err == nil {
		select {
		case <-s.closed:
		case <-time.After(shutdownWait):
		case <-ctx.Done():
		}
	}
	s.Close()
	if err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		return fmt.Errorf("shut down shim of %s: %w", s.bundle.ID, err)
	}
	return nil
}

// Leave tells the shim that this task is done with it and closes this
// task's connection without waiting for the shim to exit: other tasks share
// it (a pod's), and it exits on the Shutdown that finds it without tasks.
func (s *Shim) Leave(ctx context.Context) error {
	s.closing.Store(true)
	_, err := s.task.Shutdown(ctx, &task.ShutdownRequest{ID: s.bundle.ID})
	s.Close()
	if err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		return fmt.Errorf("leave shim of %s: %w", s.bundle.ID, err)
	}
	return nil
}

// start runs `<binary> start` in the bundle and connects to the shim it
// leaves running. opts (the runtime options, may be nil) travel as a
// bootstrap extension, as containerd sends them. lost is called (once, from
// a goroutine of ttrpc) if the shim drops the connection. The shim's log
// lines go to the logger of logs, which outlives the call (see openLog).
func start(ctx, logs context.Context, cfg *Config, b *Bundle, binary string, opts *anypb.Any, lost func()) (_ *Shim, err error) {
	ctx, end := step(ctx, "shim.start")
	defer func() { end(err) }()
	logf, err := openLog(logs, b)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			logf.Close()
		}
	}()
	cmd, err := command(ctx, cfg, b, binary, "start")
	if err != nil {
		return nil, err
	}
	self, _ := os.Executable()
	params := &bootapi.BootstrapParams{
		InstanceID:             b.ID,
		Namespace:              b.Namespace,
		LogLevel:               bootapi.LogLevel_LOG_LEVEL_INFO,
		ContainerdVersion:      Version,
		ContainerdTtrpcAddress: cfg.TTRPCAddress,
		ContainerdGrpcAddress:  cfg.Address,
		ContainerdBinary:       self,
	}
	if cfg.Debug {
		params.LogLevel = bootapi.LogLevel_LOG_LEVEL_DEBUG
	}
	if cfg.SocketDir != "" {
		dir := cfg.SocketDir
		params.SocketDir = &dir
	}
	if opts != nil && opts.GetTypeUrl() != "" {
		if err := params.AddExtension(opts); err != nil {
			return nil, fmt.Errorf("runtime options: %w", err)
		}
	}
	in, err := proto.Marshal(params)
	if err != nil {
		return nil, err
	}
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	_, endRun := step(ctx, "shim.start.exec")
	err = cmd.Run()
	endRun(err)
	if err != nil {
		return nil, shimError(ctx, binary, "start", stderr.Bytes(), err)
	}
	detachShims()
	result, err := parseStartResponse(stdout.Bytes())
	if err != nil {
		return nil, fmt.Errorf("shim %s start: %w", binary, err)
	}
	return attach(ctx, b, binary, result, logf, lost)
}

// join connects a new task's bundle to the running shim at params, the one
// `<binary> start` would have answered with (a grouped shim serving the
// other containers of a pod), without running the binary: that exec is a
// Go process start, the largest part of creating a task in a pod. The
// bundle ends up as start leaves it.
func join(ctx, logs context.Context, cfg *Config, b *Bundle, binary string, params *bootapi.BootstrapResult, lost func()) (_ *Shim, err error) {
	ctx, end := step(ctx, "shim.join")
	defer func() { end(err) }()
	logf, err := openLog(logs, b)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			logf.Close()
		}
	}()
	return attach(ctx, b, binary, proto.Clone(params).(*bootapi.BootstrapResult), logf, lost)
}

// attach records the shim binary in the bundle, connects to the shim, and
// records its address: bootstrap.json comes last, as its presence marks a
// bundle whose shim is to be reconnected to after a restart.
func attach(ctx context.Context, b *Bundle, binary string, result *bootapi.BootstrapResult, logf *os.File, lost func()) (*Shim, error) {
	_, endBin := step(ctx, "shim.recordBinary")
	err := writeFileAtomic(filepath.Join(b.Path, binaryPathFile), []byte(binary), 0o600)
	endBin(err)
	if err != nil {
		return nil, err
	}
	_, endConnect := step(ctx, "shim.connect")
	s, err := connect(b, binary, result, logf, lost)
	endConnect(err)
	if err != nil {
		return nil, err
	}
	_, endRecord := step(ctx, "shim.recordBootstrap")
	data, err := json.Marshal(result)
	if err == nil {
		err = writeFileAtomic(filepath.Join(b.Path, bootstrapFile), data, 0o644)
	}
	endRecord(err)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("record shim address: %w", err)
	}
	return s, nil
}

// load reconnects to the shim of an existing bundle; its log lines go to the
// logger of logs.
func load(logs context.Context, cfg *Config, b *Bundle, lost func()) (*Shim, error) {
	data, err := os.ReadFile(filepath.Join(b.Path, bootstrapFile))
	if err != nil {
		return nil, fmt.Errorf("shim address of %s: %w", b.ID, err)
	}
	result, err := parseStartResponse(data)
	if err != nil {
		return nil, err
	}
	binary, err := readBinaryPath(b)
	if err != nil {
		return nil, err
	}
	logf, err := openLog(logs, b)
	if err != nil {
		return nil, err
	}
	s, err := connect(b, binary, result, logf, lost)
	if err != nil {
		logf.Close()
		return nil, err
	}
	return s, nil
}

// stopOrphanShim ends a shim started for a bundle whose start never
// completed (the tasks process died before it recorded the shim's address):
// it is found by its arguments, killed, and its socket, at the address the
// runc shim derives from the daemon's address, namespace and id, removed.
func stopOrphanShim(cfg *Config, b *Bundle) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		if argValue(args, "-id") == b.ID && argValue(args, "-namespace") == b.Namespace && argValue(args, "-address") == cfg.Address {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(strings.TrimPrefix(socketAddress(cfg, b.Namespace, b.ID), "unix://"))
}

// socketAddress is the address at which the runc shim listens for a group
// of tasks (a task on its own is its own group): it names its socket after
// the daemon's address, the namespace and the group.
func socketAddress(cfg *Config, ns, group string) string {
	root := cfg.SocketDir
	if root == "" {
		root = "/run/containerd/s"
	}
	sum := sha256.Sum256([]byte(filepath.Join(cfg.Address, ns, group)))
	return fmt.Sprintf("unix://%s/%x", root, sum)
}

func argValue(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// removeShimSocket removes the socket file of a bundle's dead shim.
func removeShimSocket(b *Bundle) {
	data, err := os.ReadFile(filepath.Join(b.Path, bootstrapFile))
	if err != nil {
		return
	}
	params, err := parseStartResponse(data)
	if err != nil {
		return
	}
	if path, ok := strings.CutPrefix(params.Address, "unix://"); ok {
		_ = os.Remove(path)
	}
}

func readBinaryPath(b *Bundle) (string, error) {
	data, err := os.ReadFile(filepath.Join(b.Path, binaryPathFile))
	if err != nil {
		return "", fmt.Errorf("shim binary of %s: %w", b.ID, err)
	}
	return string(data), nil
}

func connect(b *Bundle, binary string, params *bootapi.BootstrapResult, logf *os.File, lost func()) (*Shim, error) {
	if !strings.EqualFold(params.Protocol, "ttrpc") {
		return nil, fmt.Errorf("shim of %s speaks %q, only ttrpc is supported: %w", b.ID, params.Protocol, errdefs.ErrNotImplemented)
	}
	conn, err := dialShim(params.Address)
	if err != nil {
		return nil, fmt.Errorf("connect to shim of %s at %s: %w: %w", b.ID, params.Address, err, errdefs.ErrUnavailable)
	}
	s := &Shim{bundle: b, binary: binary, params: params, log: logf, lost: lost, closed: make(chan struct{})}
	s.conn = ttrpc.NewClient(conn, ttrpc.WithOnClose(s.onClose))
	s.task = newTaskClient(s.conn, params.Version)
	return s, nil
}

// dialShim dials a shim's unix socket: "unix://<path>", or a bare name for
// an abstract socket (older shims).
func dialShim(address string) (net.Conn, error) {
	path, ok := strings.CutPrefix(address, "unix://")
	if !ok {
		if strings.Contains(address, "://") {
			return nil, fmt.Errorf("shim address %q: %w", address, errdefs.ErrNotImplemented)
		}
		path = "\x00" + address
	}
	return net.DialTimeout("unix", path, 10*time.Second)
}

// parseStartResponse reads what `shim start` printed: a BootstrapResult in
// protobuf (2.x shims), JSON (bootstrap.json, 1.7-era shims), or a bare
// address (the oldest shims, version 2 of the task API).
func parseStartResponse(out []byte) (*bootapi.BootstrapResult, error) {
	var r bootapi.BootstrapResult
	if err := proto.Unmarshal(out, &r); err == nil && r.Address != "" {
		return &r, nil
	}
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("shim printed no address: %w", errdefs.ErrUnknown)
	}
	var j bootapi.BootstrapResult
	if err := json.Unmarshal(out, &j); err == nil && j.Version >= 2 && j.Address != "" {
		if j.Version > 3 {
			return nil, fmt.Errorf("shim protocol version %d: %w", j.Version, errdefs.ErrNotImplemented)
		}
		return &j, nil
	}
	return &bootapi.BootstrapResult{Version: 2, Protocol: "ttrpc", Address: string(out)}, nil
}

// runDelete runs `<binary> delete` for a bundle whose shim is gone: the shim
// binary cleans up what its runtime left (runc delete --force, the rootfs
// mount, its socket) and reports the exit it recorded.
func runDelete(ctx context.Context, cfg *Config, b *Bundle, binary string) (*task.DeleteResponse, error) {
	cmd, err := command(ctx, cfg, b, binary, "delete")
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, shimError(ctx, binary, "delete", stderr.Bytes(), err)
	}
	var resp task.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("shim %s delete: %w", binary, err)
	}
	return &resp, nil
}

// command builds a shim binary invocation as containerd makes it: the
// legacy flags and environment, in the bundle directory, in a process group
// of its own (a signal to the tasks service's group never reaches shims).
func command(ctx context.Context, cfg *Config, b *Bundle, binary, action string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{
		"-namespace", b.Namespace,
		"-address", cfg.Address,
		"-publish-binary", self,
		"-id", b.ID,
	}
	if action == "delete" {
		args = append(args, "-bundle", b.Path)
	}
	if cfg.Debug {
		args = append(args, "-debug")
	}
	args = append(args, action)
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = b.Path
	cmd.Env = append(shimEnviron(),
		"GOMAXPROCS=2",
		"MAX_SHIM_VERSION=2",
		"TTRPC_ADDRESS="+cfg.TTRPCAddress,
		"GRPC_ADDRESS="+cfg.Address,
		"NAMESPACE="+b.Namespace,
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	return cmd, nil
}

// shimEnviron is the tasks service's environment minus what only concerns
// it: the supervisor's handshake (service environment, go-plugin cookie and
// settings).
func shimEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "FLOTILLA_") || strings.HasPrefix(k, "PLUGIN_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func shimError(ctx context.Context, binary, action string, stderr []byte, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		err = fmt.Errorf("shim killed after %w: %w", cerr, err)
	}
	if s := bytes.TrimSpace(stderr); len(s) > 0 {
		err = fmt.Errorf("%s: %w", s, err)
	}
	return fmt.Errorf("%s %s: %w", filepath.Base(binary), action, err)
}

// openLog opens (creating it if needed) the FIFO the shim writes its log
// to, and copies its lines into the service log, through the logger of ctx
// (the tasks manager's, naming the task) for as long as the FIFO is open. It
// is opened read-write so that the shim's open for writing never blocks and
// the reader never sees end-of-file while the shim restarts its writer.
func openLog(ctx context.Context, b *Bundle) (*os.File, error) {
	path := filepath.Join(b.Path, logFifo)
	if err := unix.Mkfifo(path, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("shim log fifo: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("shim log fifo: %w", err)
	}
	go copyLog(ctx, f)
	return f, nil
}

func copyLog(ctx context.Context, r io.Reader) {
	logger := logging.G(ctx)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "level=error"), strings.Contains(line, "level=fatal"), strings.Contains(line, "level=panic"):
			logger.Error("shim", "log", line)
		case strings.Contains(line, "level=warn"):
			logger.Warn("shim", "log", line)
		case strings.Contains(line, "level=debug"), strings.Contains(line, "level=trace"):
			logger.Debug("shim", "log", line)
		default:
			logger.Info("shim", "log", line)
		}
	}
}
