// Package service is the runtime of a Flotilla service process: it reads the
// environment the supervisor hands over, sets up logging and tracing, serves
// the service's APIs on its own Unix socket, and answers go-plugin's
// handshake. A service's main is a call to Run with a constructor.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/flotilla-project/flotilla/pkg/handshake"
	"github.com/flotilla-project/flotilla/pkg/idle"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/metrics"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/tracing"
	"github.com/flotilla-project/flotilla/pkg/version"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// Instance is a constructed service, ready to be served.
type Instance struct {
	// Type is the introspection plugin type, e.g. "io.containerd.content.v1".
	Type string
	// Routes are the gRPC services the gateway should send to this process.
	Routes []string
	// MethodRoutes are single methods the gateway should send here apart
	// from their service: the full method a client calls to the full
	// method this process serves it under.
	MethodRoutes map[string]string
	Requires     []string
	Exports      map[string]string
	Capabilities []string
	// Register adds the service's APIs to its servers: gRPC for every
	// client, ttrpc for the gateway's unary calls (see pkg/rpc).
	Register func(grpc.ServiceRegistrar)
	// Close releases the service's resources after the server stopped.
	Close func(context.Context) error
}

// Process is what a constructor gets: its environment. The process's
// logger travels in the constructor's context (logging.G).
type Process struct {
	Env handshake.Env

	graphOnce sync.Once
	graph     *rpc.Graph
	graphErr  error
}

// Dial connects to the socket of a service this one depends on.
func (p *Process) Dial(dep string) (*grpc.ClientConn, error) {
	sock, ok := p.Env.Deps[dep]
	if !ok {
		return nil, fmt.Errorf("service %s was not given the socket of %s", p.Env.Name, dep)
	}
	return rpc.DialTimeout(sock, p.CallTimeout())
}

// DecodeOptions fills v, a pointer to the service's options struct holding
// its defaults, from the options it was given, refusing names it does not
// know; a deprecated name is taken as its current one with a warning,
// logged through ctx.
func (p *Process) DecodeOptions(ctx context.Context, v any) error {
	renamed, err := p.Env.DecodeOptions(v)
	for _, r := range renamed {
		logging.G(ctx).Warn("deprecated option name", "option", r.Old, "use", r.New)
	}
	return err
}

// GraphOptions describe the graph as this process was told it: the
// services it calls, each snapshotter's process and the gateway.
func (p *Process) GraphOptions() rpc.GraphOptions {
	procs := map[string]string{}
	for name, sock := range p.Env.Deps {
		procs[name] = sock
	}
	for name, sock := range p.Env.Snapshotters {
		procs[SnapshotterProcess(name)] = sock
	}
	return rpc.GraphOptions{
		Processes: procs,
		Gateway:   p.Env.Gateway,
		Wait:      time.Duration(p.Env.RouteWaitMS) * time.Millisecond,
		Timeout:   p.CallTimeout(),
		// The process's logger (pkg/service sets it as slog's default).
		Logger: slog.Default(),
	}
}

// Graph is the process's client of the other services (and of the
// gateway's own), each call on its owner's socket; see rpc.Graph. Unary
// calls carry CallTimeout.
func (p *Process) Graph() (*rpc.Graph, error) {
	p.graphOnce.Do(func() { p.graph, p.graphErr = rpc.NewGraph(p.GraphOptions()) })
	return p.graph, p.graphErr
}

// SnapshotterProcess names the process of the snapshotter called name.
func SnapshotterProcess(name string) string { return "snapshotter-" + name }

// CallTimeout is the deadline for outgoing calls that carry none.
func (p *Process) CallTimeout() time.Duration {
	if p.Env.CallTimeoutMS > 0 {
		return time.Duration(p.Env.CallTimeoutMS) * time.Millisecond
	}
	return rpc.DefaultCallTimeout
}

// Constructor builds a service from its process environment.
type Constructor func(context.Context, *Process) (*Instance, error)

// Run serves the named service and exits the process when it stops. Started
// by flotillad, it is configured by the environment; started by hand (in a
// container of its own, say, with flotillad given its address), by flags:
// --socket, --root, --state, and for what it depends on --gateway, --dep and
// --snapshotter.
func Run(name string, build Constructor) { RunArgs(name, build, os.Args[1:]) }

// RunArgs is Run with the command line's flags given (without the program
// name), for a binary that dispatches to services by subcommand.
func RunArgs(name string, build Constructor, args []string) {
	err := run(name, build, args)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flotilla-%s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// LogFileEnv names the file a supervised service writes its stderr to
// instead of the pipe it was started with. The supervisor follows the file;
// a pipe would break when flotillad exits, while the service must keep
// running (and logging) for the next flotillad to reattach to it.
const LogFileEnv = "FLOTILLA_SERVICE_LOG"

func run(name string, build Constructor, args []string) error {
	env, supervised, err := handshake.FromEnviron()
	if err != nil {
		return err
	}
	if supervised {
		// stdout stays go-plugin's handshake pipe to the flotillad that
		// started this process. Once that flotillad is gone, a write to it
		// must fail with EPIPE rather than kill the service with SIGPIPE
		// (Go's default for fds 1 and 2). Notify, not Ignore: an ignored
		// signal would stay ignored in every process this one starts.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
		if p := os.Getenv(LogFileEnv); p != "" {
			if err := redirectStderr(p); err != nil {
				fmt.Fprintf(os.Stderr, "flotilla-%s: keeping stderr: %v\n", name, err)
			}
		}
	}
	if !supervised {
		env, err = standaloneEnv(name, args)
		if errors.Is(err, errVersion) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	if env.MaxProcs > 0 {
		runtime.GOMAXPROCS(env.MaxProcs)
	}
	// The environment's GOGC and GOMEMLIMIT, when set, are the operator's
	// and win over the graph's defaults.
	if env.GOGC > 0 && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(env.GOGC)
	}
	if env.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(env.MemoryLimit)
	}
	// The logger keeps the original stderr: go-plugin later swaps os.Stderr
	// for a pipe of its own, and log lines should reach flotillad verbatim.
	logger, err := logging.New(env.Name, env.Log, os.Stderr)
	if err != nil {
		return err
	}
	// One logger per process: what has no call's context to carry it
	// logs through slog's default.
	slog.SetDefault(logger)
	ctx, cancel := context.WithCancel(logging.WithLogger(context.Background(), logger))
	defer cancel()

	shutdownTracing, err := tracing.Setup(ctx, env.Name)
	if err != nil {
		return err
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = shutdownTracing(sctx)
	}()

	for _, d := range []string{env.Root, env.State} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}

	proc := &Process{Env: env}
	inst, err := build(ctx, proc)
	if err != nil {
		return fmt.Errorf("start %s: %w", env.Name, err)
	}

	srv := rpc.NewServer(logger)
	ts, err := rpc.NewTTRPCServer()
	if err != nil {
		return err
	}
	inst.Register(rpc.NewRegistrar(logger, srv.Server, ts))
	l, err := rpc.Listen(env.Socket)
	if err != nil {
		return err
	}
	ttrpcSocket := TTRPCSocket(env.Socket)
	if _, err := rpc.ServeTTRPC(ctx, ts, ttrpcSocket); err != nil {
		return err
	}
	// Metrics are served beside the state the service owns; flotillad
	// finds the socket in the exports and scrapes it. A service without a
	// state directory (never under flotillad) serves none.
	metricsSocket := ""
	if env.State != "" {
		ml, err := rpc.Listen(filepath.Join(env.State, metrics.SocketName))
		if err != nil {
			return err
		}
		defer ml.Close()
		metricsSocket = ml.Addr().String()
		go func() {
			if err := metrics.Serve(ml); err != nil {
				logger.Error("metrics endpoint stopped", "error", err)
			}
		}()
	}
	// The handshake's Describe is also served on the service's own socket:
	// a flotillad that did not start this process (it runs in a container
	// of its own, say) learns there what it serves and routes to it.
	desc := &describer{env: env, inst: inst, metrics: metricsSocket}
	servicepb.RegisterServiceServer(srv.Server, desc)
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	go idle.Process.Trim(ctx, idleTrim)
	logger.Info("serving", "socket", env.Socket, "pid", os.Getpid())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if supervised {
		// SIGINT reaches every process of the terminal's group on Ctrl-C;
		// flotillad decides when its services stop, in dependency order.
		signal.Ignore(syscall.SIGINT)
		done := make(chan struct{})
		go func() {
			defer close(done)
			plugin.Serve(&plugin.ServeConfig{
				HandshakeConfig: handshake.Config,
				Plugins:         handshake.Plugins(desc),
				// go-plugin registers its own health service on this
				// private handshake server, so it is a plain one.
				GRPCServer: func(opts []grpc.ServerOption) *grpc.Server { return grpc.NewServer(opts...) },
				Logger:     hclog.NewNullLogger(),
			})
		}()
		select {
		case <-done:
		case <-stop:
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		}
	} else {
		select {
		case <-stop:
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		}
	}

	logger.Info("stopping")
	srv.Health.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	if inst.Close != nil {
		cctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := inst.Close(cctx); err != nil {
			logger.Error("close", "error", err)
		}
	}
	_ = ts.Close()
	_ = os.Remove(env.Socket)
	_ = os.Remove(ttrpcSocket)
	return nil
}

// redirectStderr points fd 2 at path, so that the logger, panics and the
// runtime's own crash reports all land there.
func redirectStderr(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	return syscall.Dup3(int(f.Fd()), 2, 0)
}

// TTRPCSocket is where a service serving gRPC on socket serves ttrpc.
func TTRPCSocket(socket string) string { return rpc.TTRPCSocket(socket) }

// errVersion ends a process asked for its version alone.
var errVersion = errors.New("version printed")

func standaloneEnv(name string, args []string) (handshake.Env, error) {
	fs := flag.NewFlagSet("flotilla-"+name, flag.ContinueOnError)
	socket := fs.String("socket", "", "Unix socket to serve on (required)")
	root := fs.String("root", "", "persistent data directory (required)")
	state := fs.String("state", "", "runtime state directory (default: beside the socket)")
	level := fs.String("log-level", "info", "log level")
	format := fs.String("log-format", "text", "log format: text or json")
	// What flotillad hands a service it starts, for one it does not.
	gateway := fs.String("gateway", "", "flotillad's client socket, for services that publish events to it or ask it the daemon's version")
	callTimeout := fs.Duration("call-timeout", 0, "longest an outgoing call may take (default 30s, as flotillad's [timeouts] call)")
	routeWait := fs.Duration("route-wait", 0, "longest an outgoing call waits for a restarting service (default 10s, as flotillad's [timeouts] route_wait)")
	maxProcs := fs.Int("max-procs", 0, "GOMAXPROCS of this process (default Go's: every CPU; flotillad gives content and metadata 1)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	deps := map[string]string{}
	fs.Func("dep", "socket of a service this one calls, name=socket, repeatable (metadata: content=...; tasks: metadata=...)", keyValue("dep", deps))
	snapshotters := map[string]string{}
	fs.Func("snapshotter", "socket of a snapshotter by its name, name=socket, repeatable (metadata: overlayfs=...)", keyValue("snapshotter", snapshotters))
	options := map[string]any{}
	fs.Func("option", "service option key=value, repeatable; a value that parses as JSON (true, 3, [\"a\"]) is taken as such; a dotted key (cni.conf_dir) is one in a table, as in the config's [services.<name>.options]", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" || strings.HasPrefix(k, ".") || strings.HasSuffix(k, ".") || strings.Contains(k, "..") {
			return fmt.Errorf("option %q is not key=value", s)
		}
		var parsed any
		if err := json.Unmarshal([]byte(v), &parsed); err != nil {
			parsed = v
		}
		return handshake.SetOption(options, k, parsed)
	})
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "flotilla-%s is started by flotillad; to run it by hand:\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return handshake.Env{}, err
	}
	if *showVersion {
		fmt.Println(version.String("flotilla-" + name))
		return handshake.Env{}, errVersion
	}
	if *socket == "" || *root == "" {
		fs.Usage()
		return handshake.Env{}, fmt.Errorf("--socket and --root are required when not started by flotillad")
	}
	if *state == "" {
		*state = filepath.Dir(*socket)
	}
	env := handshake.Env{
		Name: name, Socket: *socket, Root: *root, State: *state,
		Gateway:       *gateway,
		CallTimeoutMS: callTimeout.Milliseconds(),
		RouteWaitMS:   routeWait.Milliseconds(),
		MaxProcs:      *maxProcs,
		Log:           logging.Options{Level: *level, Format: *format},
		Options:       options,
	}
	if len(deps) > 0 {
		env.Deps = deps
	}
	if len(snapshotters) > 0 {
		env.Snapshotters = snapshotters
	}
	return env, nil
}

// keyValue parses a repeatable name=value flag into m.
func keyValue(flagName string, m map[string]string) func(string) error {
	return func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" || v == "" {
			return fmt.Errorf("--%s %q is not name=socket", flagName, s)
		}
		m[k] = v
		return nil
	}
}

// idleTrim is how long a service goes without a call before it hands the
// memory its last burst of work freed back to the system.
const idleTrim = 2 * time.Second

// started is when this process started, for Describe.
var started = time.Now().UTC().Format(time.RFC3339Nano)

type describer struct {
	servicepb.UnimplementedServiceServer
	env     handshake.Env
	inst    *Instance
	metrics string // socket of the metrics endpoint, if any
}

func (d *describer) Describe(context.Context, *servicepb.DescribeRequest) (*servicepb.DescribeResponse, error) {
	exports := map[string]string{
		"pid":    fmt.Sprint(os.Getpid()),
		"socket": d.env.Socket,
		"ttrpc":  TTRPCSocket(d.env.Socket),
		"root":   d.env.Root,
		// Tells this process from the next one on the same socket, which
		// in a container of its own often has the same pid.
		"started": started,
		// What the process runs on at once (its max_procs).
		"gomaxprocs": strconv.Itoa(runtime.GOMAXPROCS(0)),
	}
	if d.metrics != "" {
		exports["metrics"] = d.metrics
	}
	for k, v := range d.inst.Exports {
		exports[k] = v
	}
	return &servicepb.DescribeResponse{
		Name:         d.env.Name,
		Type:         d.inst.Type,
		Pid:          int64(os.Getpid()),
		Socket:       d.env.Socket,
		Routes:       d.inst.Routes,
		MethodRoutes: d.inst.MethodRoutes,
		Requires:     d.inst.Requires,
		Exports:      exports,
		Capabilities: d.inst.Capabilities,
	}, nil
}
