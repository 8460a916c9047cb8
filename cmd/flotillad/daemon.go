package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/coreos/go-systemd/v22/daemon"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/gateway"
	"github.com/flotilla-project/flotilla/gateway/admin"
	"github.com/flotilla-project/flotilla/pkg/config"
	"github.com/flotilla-project/flotilla/pkg/handshake"
	"github.com/flotilla-project/flotilla/pkg/idle"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/metrics"
	"github.com/flotilla-project/flotilla/pkg/roster"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/tracing"
	"github.com/flotilla-project/flotilla/pkg/version"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
	"github.com/flotilla-project/flotilla/supervisor"
)

// notify tells systemd how flotillad stands, when systemd started it as a
// Type=notify service (NOTIFY_SOCKET in the environment; otherwise nothing
// is sent): READY=1 once every service is up and the socket serves,
// STOPPING=1 when it begins to stop. Its services do not inherit the
// socket (the supervisor leaves it out): the readiness is the graph's.
func notify(logger *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		logger.Warn("tell systemd", "state", state, "error", err)
	}
}

// snapshotterService names the process of a snapshotter.
func snapshotterService(name string) string { return "snapshotter-" + name }

func serve(ctx context.Context, cfg *config.Config) error {
	logOpts := logging.Options{Level: cfg.Debug.Level, Format: cfg.Debug.Format}
	logger, err := logging.New("flotillad", logOpts, os.Stderr)
	if err != nil {
		return err
	}
	if cfg.Source == "" {
		logger.Info("no configuration file: running on the defaults", "looked for", config.DefaultPath)
	}
	for _, w := range cfg.Warnings {
		logger.Warn(w)
	}
	runtime.GOMAXPROCS(cfg.GatewayProcs())
	for _, d := range []string{cfg.Root, cfg.State} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	unlock, err := lockState(cfg.State)
	if err != nil {
		return err
	}
	defer unlock()
	// SIGUSR2 asks flotillad to exit leaving its services running, for the
	// next flotillad (an upgraded one, say) to reattach to; SIGTERM and
	// SIGINT stop them. Caught from here on: by default it would kill us.
	upgrade := make(chan os.Signal, 1)
	signal.Notify(upgrade, syscall.SIGUSR2)
	defer signal.Stop(upgrade)

	if cfg.Trace.File {
		// Services inherit the environment, so one variable turns span
		// files on in every process.
		if err := os.Setenv(tracing.DirEnv, filepath.Join(cfg.State, "traces")); err != nil {
			return err
		}
	}
	shutdownTracing, err := tracing.Setup(ctx, "gateway")
	if err != nil {
		return err
	}
	defer func() {
		// Spans not exported by then are lost rather than the stop held
		// up by a collector that does not answer.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdownTracing(sctx)
	}()

	gwLogger, _ := logging.New("gateway", logOpts, os.Stderr)
	gw, err := gateway.New(gateway.Options{
		Logger:    gwLogger,
		Root:      filepath.Join(cfg.Root, "gateway"),
		RouteWait: cfg.Timeouts.RouteWait.Duration,
	})
	if err != nil {
		return err
	}
	l, err := rpc.Listen(cfg.Address())
	if err != nil {
		return err
	}
	if err := shareSocket(cfg.Address(), cfg.GRPC.UID, cfg.GRPC.GID); err != nil {
		return err
	}
	// The gateway relays every client's bytes: what a burst of them
	// leaves allocated goes back to the system once it is quiet.
	go idle.Process.Trim(ctx, 2*time.Second)
	go func() {
		if err := gw.Serve(l); err != nil {
			logger.Error("gateway stopped", "error", err)
		}
	}()
	tl, err := rpc.Listen(gateway.TTRPCAddress(cfg.Address()))
	if err != nil {
		gw.Stop()
		return err
	}
	if err := shareSocket(gateway.TTRPCAddress(cfg.Address()), cfg.GRPC.UID, cfg.GRPC.GID); err != nil {
		gw.Stop()
		return err
	}
	go func() {
		// ErrServerClosed is the daemon stopping it.
		if err := gw.ServeTTRPC(tl); err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			logger.Error("gateway ttrpc endpoint stopped", "error", err)
		}
	}()

	specs, err := specsFor(cfg, logOpts)
	if err != nil {
		gw.Stop()
		return err
	}
	for _, r := range remoteSnapshotters(cfg) {
		if err := gw.SetService(r); err != nil {
			gw.Stop()
			return err
		}
	}
	sup, err := supervisor.New(supervisor.Options{
		Logger:       logger,
		Output:       os.Stderr,
		StartTimeout: cfg.Timeouts.ServiceStart.Duration,
		Cgroups:      supervisor.NewCgroups(logger, supervisor.CgroupName(cfg.State)),
		OnChange: func(s supervisor.Status) {
			err := gw.SetService(gateway.Service{
				Name: s.Name, State: string(s.State), Pid: s.Pid,
				Restarts: s.Restarts, Info: knownAs(cfg, s.Name, s.Info), Err: s.LastError,
			})
			if err != nil {
				logger.Error("route service", "name", s.Name, "error", err)
			}
		},
	}, specs)
	if err != nil {
		gw.Stop()
		return err
	}
	gw.SetSupervisor(adminSupervisor{sup})
	if cfg.Metrics.Address != "" {
		stopMetrics, err := metrics.NewDaemon(logger, metricsProcesses(sup)).ListenAndServe(cfg.Metrics.Address)
		if err != nil {
			gw.Stop()
			return err
		}
		defer stopMetrics()
	}
	if err := sup.Start(ctx); err != nil {
		gw.Stop()
		_ = os.Remove(cfg.Address())
		return err
	}
	gw.Ready()
	logger.Info("flotillad ready", "address", cfg.Address(), "root", cfg.Root, "state", cfg.State, "pid", os.Getpid(), "version", version.Version)
	notify(logger, daemon.SdNotifyReady+"\nSTATUS=serving on "+cfg.Address())

	select {
	case <-ctx.Done():
	case <-upgrade:
		notify(logger, daemon.SdNotifyStopping+"\nSTATUS=exiting; the services keep running for the next flotillad")
		logger.Info("exiting; services keep running for the next flotillad")
		sup.Detach()
		gw.Stop()
		_ = os.Remove(cfg.Address())
		_ = os.Remove(gateway.TTRPCAddress(cfg.Address()))
		logger.Info("stopped")
		return nil
	}
	notify(logger, daemon.SdNotifyStopping+"\nSTATUS=stopping")
	logger.Info("stopping")
	sup.Stop()
	gw.Stop()
	_ = os.Remove(cfg.Address())
	_ = os.Remove(gateway.TTRPCAddress(cfg.Address()))
	logger.Info("stopped")
	return nil
}

func specsFor(cfg *config.Config, logOpts logging.Options) ([]supervisor.Spec, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// socket is where a service is reached: the address of one run
	// outside flotillad, or the socket flotillad gives the one it starts.
	socket := func(name string) string {
		if addr := cfg.External(name); addr != "" {
			return addr
		}
		return filepath.Join(cfg.State, name+".sock")
	}
	// command is how a service's process is started: this executable,
	// told the service by argv[0], unless the config names another binary.
	command := func(name, service string) (string, []string, error) {
		path := cfg.Services[name].Path
		if path == "" {
			path = self
		}
		if _, err := os.Stat(path); err != nil {
			return "", nil, fmt.Errorf("service %s: binary: %w", name, err)
		}
		return path, []string{roster.ProcessName(service)}, nil
	}
	env := func(name string, deps map[string]string, options map[string]any) handshake.Env {
		mem, _, _ := cfg.Services[name].Limits()
		return handshake.Env{
			Name:          name,
			Root:          filepath.Join(cfg.Root, name),
			State:         filepath.Join(cfg.State, name),
			Socket:        socket(name),
			Gateway:       cfg.Address(),
			Deps:          deps,
			Log:           logOpts,
			CallTimeoutMS: cfg.Timeouts.Call.Milliseconds(),
			RouteWaitMS:   cfg.Timeouts.RouteWait.Milliseconds(),
			MaxProcs:      cfg.ServiceProcs(name),
			GOGC:          cfg.ServiceGOGC(name),
			// Go collects harder as it nears the cgroup's limit, rather
			// than have the kernel kill the process at it.
			MemoryLimit: mem / 10 * 9,
			Options:     options,
		}
	}

	// reaches adds the sockets of the services e calls once serving; one
	// disabled is left out, and calls for it fail.
	reaches := func(deps map[string]string, e roster.Entry) {
		for _, r := range e.Reaches {
			if r != roster.Snapshotters && !cfg.Services[r].Disabled {
				deps[r] = socket(r)
			}
		}
	}

	local, remote := snapshotterNames(cfg)
	sockets := map[string]string{}
	for _, name := range remote {
		sockets[name] = cfg.Snapshotters[name].Address
	}
	var specs []supervisor.Spec
	for _, e := range roster.Services {
		if e.PerSnapshotter {
			// A process per snapshotter Flotilla runs; remote ones are
			// reached at their address. One local process also serves
			// layer apply (the Diff API): the default snapshotter's if it
			// is local. One run outside flotillad
			// ([services.snapshotter-<name>] address) is told so by
			// whoever runs it (--option serve_diff=true).
			for i, name := range local {
				sc := cfg.Snapshotters[name]
				svc := snapshotterService(name)
				sockets[name] = socket(svc)
				if addr := cfg.External(svc); addr != "" {
					specs = append(specs, supervisor.Spec{Name: svc, Address: addr})
					continue
				}
				path, args, err := command(svc, e.Name)
				if err != nil {
					return nil, err
				}
				opts, err := config.OptionsMap(sc.Options)
				if err != nil {
					return nil, err
				}
				if opts == nil {
					opts = map[string]any{}
				}
				opts["driver"], opts["name"] = sc.Driver, name
				var requires []string
				var deps map[string]string
				if i == 0 {
					// Layer apply reads and writes blobs in the content
					// process directly, once metadata said the caller's
					// namespace may.
					opts["serve_diff"] = true
					deps = map[string]string{}
					for _, r := range e.Requires {
						if cfg.Services[r].Disabled {
							continue
						}
						requires = append(requires, r)
						deps[r] = socket(r)
					}
					reaches(deps, e)
				}
				specs = append(specs, supervisor.Spec{Name: svc, Path: path, Args: args, Requires: requires, Env: env(svc, deps, opts), Limits: limits(cfg, svc)})
			}
			continue
		}
		sc := cfg.Services[e.Name]
		if sc.Disabled {
			continue
		}
		deps := map[string]string{}
		var requires []string
		for _, r := range e.Requires {
			if r == roster.Snapshotters {
				for _, name := range local {
					requires = append(requires, snapshotterService(name))
				}
				continue
			}
			if cfg.Services[r].Disabled {
				return nil, fmt.Errorf("service %s requires %s, which is disabled", e.Name, r)
			}
			requires = append(requires, r)
			deps[r] = socket(r)
		}
		reaches(deps, e)
		if sc.Address != "" {
			// Waited for in its place in the graph, after what it
			// requires, before what requires it; given its own
			// dependencies by whoever runs it.
			specs = append(specs, supervisor.Spec{Name: e.Name, Address: sc.Address, Requires: requires})
			continue
		}
		opts, err := config.OptionsMap(sc.Options)
		if err != nil {
			return nil, err
		}
		ev := env(e.Name, deps, opts)
		if slices.Contains(e.Requires, roster.Snapshotters) || slices.Contains(e.Reaches, roster.Snapshotters) {
			ev.Snapshotters = sockets
			ev.RemoteSnapshotters = remote
		}
		if e.HostedBy != "" && !cfg.Services[e.HostedBy].Disabled && cfg.External(e.HostedBy) == "" {
			// Runs in its host's process, which flotillad starts
			// before it (the roster lists hosts first).
			host := specIndex(specs, e.HostedBy)
			if host < 0 {
				return nil, fmt.Errorf("service %s is hosted by %s, which is not started before it", e.Name, e.HostedBy)
			}
			if specs[host].Env.Hosted == nil {
				specs[host].Env.Hosted = map[string]handshake.Env{}
			}
			specs[host].Env.Hosted[e.Name] = ev
			continue
		}
		path, args, err := command(e.Name, e.Name)
		if err != nil {
			return nil, err
		}
		specs = append(specs, supervisor.Spec{Name: e.Name, Path: path, Args: args, Requires: requires, Env: ev, Limits: limits(cfg, e.Name)})
	}
	return specs, nil
}

// specIndex is the index of the named service's spec, -1 if none.
func specIndex(specs []supervisor.Spec, name string) int {
	for i, s := range specs {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// limits are a service's cgroup limits (config.Load checked them).
func limits(cfg *config.Config, name string) supervisor.Limits {
	mem, cpus, _ := cfg.Services[name].Limits()
	return supervisor.Limits{MemoryMax: mem, CPUMax: cpus}
}

// snapshotterNames splits the enabled snapshotters into those Flotilla runs
// (the default first, then by name) and remote ones (by name).
func snapshotterNames(cfg *config.Config) (local, remote []string) {
	for name, sc := range cfg.Snapshotters {
		switch {
		case sc.Disabled:
		case sc.Address != "":
			remote = append(remote, name)
		default:
			local = append(local, name)
		}
	}
	sort.Slice(local, func(i, j int) bool {
		if (local[i] == config.DefaultSnapshotter) != (local[j] == config.DefaultSnapshotter) {
			return local[i] == config.DefaultSnapshotter
		}
		return local[i] < local[j]
	})
	sort.Strings(remote)
	return local, remote
}

// remoteSnapshotters describes the snapshotters Flotilla does not run, so
// that Introspection lists them beside the service processes.
func remoteSnapshotters(cfg *config.Config) []gateway.Service {
	_, remote := snapshotterNames(cfg)
	var out []gateway.Service
	for _, name := range remote {
		addr := cfg.Snapshotters[name].Address
		out = append(out, gateway.Service{
			Name:  snapshotterService(name),
			State: "remote",
			Info: &servicepb.DescribeResponse{
				Name:   snapshotterService(name),
				Type:   "io.containerd.snapshotter.v1",
				Socket: addr,
				Exports: map[string]string{
					"snapshotter": name,
					"address":     addr,
					"remote":      "true",
				},
			},
		})
	}
	return out
}

// knownAs makes sure a snapshotter process run outside flotillad is listed
// under the name clients know the snapshotter by, as flotillad tells the
// ones it starts (option name), whether or not its command line said so.
func knownAs(cfg *config.Config, service string, info *servicepb.DescribeResponse) *servicepb.DescribeResponse {
	name, ok := strings.CutPrefix(service, "snapshotter-")
	if !ok || info == nil || cfg.External(service) == "" || info.Exports["snapshotter"] == name {
		return info
	}
	info = proto.Clone(info).(*servicepb.DescribeResponse)
	if info.Exports == nil {
		info.Exports = map[string]string{}
	}
	info.Exports["snapshotter"] = name
	return info
}

// lockState makes sure one state directory has one daemon.
func lockState(state string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(state, "flotillad.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another flotillad is using state directory %s", state)
	}
	return func() { f.Close() }, nil
}

// shareSocket opens the client socket to a group, as containerd's
// [grpc] uid/gid do.
func shareSocket(path string, uid, gid int) error {
	if uid == 0 && gid == 0 {
		return nil
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return os.Chmod(path, 0o660)
}

// adminSupervisor shows the supervisor to the admin API, which knows it only
// by an interface of its own (Restart and Logs are the supervisor's).
type adminSupervisor struct{ *supervisor.Supervisor }

func (a adminSupervisor) Processes() []admin.Process {
	var out []admin.Process
	for _, s := range a.Statuses() {
		p := admin.Process{
			Name: s.Name, State: string(s.State), Pid: s.Pid,
			Restarts: s.Restarts, Since: s.Since, Err: s.LastError,
			OOMKills: s.OOMKills, LastExit: s.LastExit, Cgroup: s.Cgroup,
			MemoryLimit: s.Limits.MemoryMax, CPULimit: s.Limits.CPUMax,
		}
		if s.Info != nil {
			p.Socket = s.Info.Socket
		}
		out = append(out, p)
	}
	return out
}

// metricsProcesses shows the supervisor's services to the metrics endpoint.
func metricsProcesses(sup *supervisor.Supervisor) func() []metrics.Process {
	return func() []metrics.Process {
		var out []metrics.Process
		for _, s := range sup.Statuses() {
			p := metrics.Process{Name: s.Name, State: string(s.State), Pid: s.Pid, Restarts: s.Restarts}
			if s.Info != nil {
				p.Socket = s.Info.Exports["metrics"]
			}
			out = append(out, p)
		}
		return out
	}
}
