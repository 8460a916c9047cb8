// Package supervisor starts, watches and restarts Flotilla's service
// processes with hashicorp/go-plugin. Its view of a service is deliberately
// narrow: start it, ask it to Describe itself, notice when it exits, start it
// again. It knows nothing of what a service serves.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/handshake"
	"github.com/flotilla-project/flotilla/pkg/service"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// Spec describes one service process.
type Spec struct {
	Name string
	Path string // executable
	// Args is the command line, argv[0] included; empty runs Path bare.
	// One executable serves every service, told apart by argv[0].
	Args     []string
	Requires []string // services that must be running first
	Env      handshake.Env
	Limits   Limits // applied to the service's cgroup, if cgroups are in use
	// Address, if set, is the socket of the service run outside flotillad:
	// Path, Env and Limits are unused, and nothing is started (external.go).
	Address string
}

// State of a service process.
type State string

const (
	Starting   State = "starting"
	Running    State = "running"
	Restarting State = "restarting"
	Stopped    State = "stopped"
	Failed     State = "failed"
)

// Status is a snapshot of one service.
type Status struct {
	Name      string
	State     State
	Pid       int
	Restarts  int
	Since     time.Time // when the current process became ready
	Info      *servicepb.DescribeResponse
	LastError string
	// OOMKills counts the processes the kernel killed for exceeding the
	// service's memory limit.
	OOMKills int
	// LastExit says why the previous process ended: "oom-killed",
	// "exited" (a crash, a kill) or "restarted" (on request); "" if none did.
	LastExit string
	// Cgroup is the service's cgroup directory, "" without cgroups.
	Cgroup string
	Limits Limits
}

// Options configure a Supervisor.
type Options struct {
	Logger       *slog.Logger
	Output       io.Writer // service stderr is copied here verbatim
	StartTimeout time.Duration
	// OnChange is called (never concurrently for one service) whenever a
	// service's status changes.
	OnChange func(Status)
	// Cgroups, if set, gives each service a cgroup of its own with the
	// limits of its Spec (see NewCgroups).
	Cgroups *Cgroups
}

// Supervisor runs a set of services in dependency order.
type Supervisor struct {
	opts  Options
	order []*proc

	mu       sync.Mutex
	stopping bool
}

// New checks the dependency graph and returns a supervisor that has not
// started anything yet.
func New(opts Options, specs []Spec) (*Supervisor, error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 20 * time.Second
	}
	if opts.Output == nil {
		opts.Output = os.Stderr
	}
	order, err := topoSort(specs)
	if err != nil {
		return nil, err
	}
	s := &Supervisor{opts: opts}
	for _, sp := range order {
		s.order = append(s.order, &proc{
			spec:   sp,
			sup:    s,
			status: Status{Name: sp.Name, State: Stopped, Limits: sp.Limits},
			logs:   newLogRing(LogLines),
		})
	}
	return s, nil
}

func topoSort(specs []Spec) ([]Spec, error) {
	byName := map[string]Spec{}
	for _, s := range specs {
		if _, dup := byName[s.Name]; dup {
			return nil, fmt.Errorf("service %q configured twice", s.Name)
		}
		byName[s.Name] = s
	}
	var (
		out   []Spec
		state = map[string]int{} // 1 visiting, 2 done
		visit func(n string, path []string) error
	)
	visit = func(n string, path []string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("dependency cycle: %s", strings.Join(append(path, n), " -> "))
		case 2:
			return nil
		}
		s, ok := byName[n]
		if !ok {
			return fmt.Errorf("service %q requires %q, which is not configured", path[len(path)-1], n)
		}
		state[n] = 1
		for _, r := range s.Requires {
			if err := visit(r, append(path, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, s)
		return nil
	}
	for _, s := range specs {
		if err := visit(s.Name, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Start brings every service up in dependency order, taking over the
// processes a previous flotillad left running where it can. If one fails,
// those already started are stopped and the error names the failing service.
func (s *Supervisor) Start(ctx context.Context) error {
	for i, p := range s.order {
		if p.spec.External() {
			if err := p.attachExternal(ctx); err != nil {
				s.abandon(i)
				return fmt.Errorf("service %s failed to start: %w", p.spec.Name, err)
			}
			go p.watchExternal()
			continue
		}
		if err := p.startOrReattach(ctx); err != nil {
			// The failed one too: its process may be running already
			// (say, flotillad was told to stop during its handshake).
			s.abandon(i)
			return fmt.Errorf("service %s failed to start: %w", p.spec.Name, err)
		}
		go p.watch()
	}
	return nil
}

// abandon stops the services up to and including the i-th, in reverse
// order, after a failed start. The supervisor counts as stopping first:
// otherwise the watcher of a service stopped here takes its exit for a
// crash and starts it again, a process nobody stops once flotillad exits.
func (s *Supervisor) abandon(i int) {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	for j := i; j >= 0; j-- {
		s.order[j].stop()
	}
}

// Stop stops every service in reverse dependency order.
func (s *Supervisor) Stop() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	for i := len(s.order) - 1; i >= 0; i-- {
		s.order[i].stop()
	}
	s.opts.Cgroups.cleanup()
}

// Detach stops supervising without stopping the services: they keep
// running, and the next flotillad on the same state directory reattaches to
// them (see reattach.go). For upgrading flotillad itself.
func (s *Supervisor) Detach() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	for i := len(s.order) - 1; i >= 0; i-- {
		s.order[i].detach()
	}
}

// Statuses reports every service, in start order.
func (s *Supervisor) Statuses() []Status {
	out := make([]Status, 0, len(s.order))
	for _, p := range s.order {
		out = append(out, p.snapshot())
	}
	return out
}

func (s *Supervisor) find(name string) (*proc, error) {
	for _, p := range s.order {
		if p.spec.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("service %q: %w", name, errdefs.ErrNotFound)
}

// Restart stops the named service with SIGTERM, kills it if it has not
// exited after grace, and starts it again at once, as after a crash (so it is
// described and routed afresh). It returns when the new process is ready, or
// with the error that kept it from starting (the supervisor keeps trying, as
// after a crash).
func (s *Supervisor) Restart(ctx context.Context, name string, grace time.Duration) error {
	p, err := s.find(name)
	if err != nil {
		return err
	}
	if s.isStopping() {
		return fmt.Errorf("restart %s: daemon is stopping: %w", name, errdefs.ErrFailedPrecondition)
	}
	if p.spec.External() {
		return p.restartExternal()
	}
	p.mu.Lock()
	client, exited, pid, state := p.client, p.exited, p.status.Pid, p.status.State
	if client == nil || exited == nil || state != Running || p.restart != nil {
		p.mu.Unlock()
		return fmt.Errorf("restart %s: service is %s: %w", name, state, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-exited:
		p.mu.Unlock()
		return fmt.Errorf("restart %s: service is already restarting: %w", name, errdefs.ErrFailedPrecondition)
	default:
	}
	done := make(chan error, 1)
	p.restart = done
	p.mu.Unlock()

	s.opts.Logger.Info("restarting service on request", "name", name, "pid", pid)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	select {
	case <-exited:
		t.Stop()
	case <-t.C:
		s.opts.Logger.Warn("service did not exit after SIGTERM; killing it", "name", name, "pid", pid, "grace", grace)
		client.Kill()
		<-exited
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Logs returns the last n lines (every line kept if n <= 0) the named
// service's processes wrote, oldest first.
func (s *Supervisor) Logs(name string, n int) ([]string, error) {
	p, err := s.find(name)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	follow := p.follow
	p.mu.Unlock()
	if follow != nil {
		// Up to the moment, not to the follower's last poll.
		follow.drain()
	}
	return p.logs.last(n), nil
}

func (s *Supervisor) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// proc is one supervised service.
type proc struct {
	spec Spec
	sup  *Supervisor

	mu     sync.Mutex
	client *plugin.Client
	status Status
	tail   *tailWriter
	follow *logFollower
	exited chan struct{} // closed when the current process has exited
	// restart is set by Restart while it stops the process; watch starts
	// the next one at once and reports how that went on it.
	restart chan error
	logs    *logRing // output of every process of this service
	// cg is the service's cgroup (nil without); oomBase its OOM kill
	// count when the current process started.
	cg      *serviceCgroup
	oomBase uint64
	// conn and watchDone are an external service's connection and the
	// end of its watcher (external.go).
	conn      *grpc.ClientConn
	watchDone chan struct{}
}

func (p *proc) snapshot() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

func (p *proc) setStatus(f func(*Status)) {
	p.mu.Lock()
	f(&p.status)
	st := p.status
	p.mu.Unlock()
	if p.sup.opts.OnChange != nil {
		p.sup.opts.OnChange(st)
	}
}

func (p *proc) pidFile() string {
	return filepath.Join(p.spec.Env.State, p.spec.Name+".pid")
}

// killStale ends a process a previous flotillad left behind that could not
// be reattached, so that two copies never own one state.
func (p *proc) killStale() {
	b, err := os.ReadFile(p.pidFile())
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return
	}
	want, _ := filepath.EvalSymlinks(p.spec.Path)
	if filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != filepath.Base(want) {
		return
	}
	if len(p.spec.Args) > 0 {
		// Every service runs the same executable: argv[0] says which.
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if err != nil || argv0 != p.spec.Args[0] {
			return
		}
	}
	p.sup.opts.Logger.Warn("killing stale service process", "name", p.spec.Name, "pid", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if !alive(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// crashLoopWindow is how soon after becoming ready a process must die for
// its restart to wait (a backoff that doubles each time): a crash loop dies
// at once. A service that served for longer and then died — killed, an
// OOM, a bug hit once — is restarted at once, however often that happens.
const crashLoopWindow = time.Second

// alive reports whether pid runs. A killed process whose parent is gone
// stays a zombie until init reaps it, which a container's init may never
// do: it counts as gone.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// startOrReattach takes over the process a previous flotillad left
// running, if there is a sound one, and starts the service otherwise.
func (p *proc) startOrReattach(ctx context.Context) error {
	err := p.reattach(ctx)
	if err == nil {
		return nil
	}
	if !errors.Is(err, errNoRecord) {
		p.sup.opts.Logger.Warn("cannot reattach to the service process left running; starting it afresh", "name", p.spec.Name, "error", err)
	}
	return p.start(ctx)
}

// serviceEnviron is the environment a service starts with: flotillad's,
// less systemd's NOTIFY_SOCKET. Readiness is flotillad's to tell, once for
// the whole graph; a service would pass the socket on to the shims and
// runc it starts, and runc takes it for the container's and waits for the
// container to report ready.
func serviceEnviron() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			out = append(out, kv)
		}
	}
	return out
}

func (p *proc) start(ctx context.Context) error {
	p.killStale()
	_ = os.Remove(p.reattachPath())
	p.removePluginSockets()
	if err := os.MkdirAll(p.spec.Env.State, 0o711); err != nil {
		return err
	}
	env, err := p.spec.Env.Encode()
	if err != nil {
		return err
	}
	follow, err := followLog(p.logPath(), true, p.sup.opts.Output, p.logs)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.spec.Path)
	if len(p.spec.Args) > 0 {
		cmd.Args = p.spec.Args
	}
	cmd.Env = append(serviceEnviron(), handshake.EnvVar+"="+env, service.LogFileEnv+"="+p.logPath(),
		// go-plugin's socket goes beside the reattach record that names
		// it rather than into /tmp, where a cleaner could take it away
		// from a service that runs for months.
		plugin.EnvUnixSocketDir+"="+p.spec.Env.State)
	// Each service gets its own process group so that a terminal's Ctrl-C
	// reaches flotillad alone, which then stops services in order; and so
	// that services outlive a flotillad that is killed or upgraded.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cg := p.cgroup()
	closeCgroup, err := cg.wrap(cmd)
	if err != nil {
		follow.close()
		return err
	}
	defer closeCgroup()
	if env := cg.detachEnv(); env != "" {
		cmd.Env = append(cmd.Env, DetachCgroupsEnv+"="+env)
	}
	// Until a service has pointed its stderr at its log file (and for a
	// binary that never does), its stderr is go-plugin's pipe.
	tail := &tailWriter{w: p.sup.opts.Output, ring: p.logs}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake.Config,
		Plugins:          handshake.Plugins(nil),
		Cmd:              cmd,
		SkipHostEnv:      true, // cmd.Env has it, less what is flotillad's alone
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		Stderr:           tail,
		SyncStderr:       &tailWriter{w: p.sup.opts.Output, ring: p.logs},
		SyncStdout:       &tailWriter{w: p.sup.opts.Output, ring: p.logs},
		StartTimeout:     p.sup.opts.StartTimeout,
	})
	p.setStatus(func(s *Status) { s.State = Starting; s.LastError = "" })
	info, err := describe(ctx, client, p.sup.opts.StartTimeout)
	if err != nil {
		client.Kill()
		follow.close()
		last := follow.w.last()
		if last == "" {
			last = tail.last()
		}
		if last != "" {
			err = fmt.Errorf("%w (last output: %s)", err, last)
		}
		p.setStatus(func(s *Status) { s.State = Failed; s.LastError = err.Error() })
		return err
	}
	_ = os.WriteFile(p.pidFile(), []byte(strconv.FormatInt(info.Pid, 10)), 0o600)
	since := time.Now()
	if err := p.saveReattach(client, int(info.Pid), since, p.snapshot()); err != nil {
		// The service runs; only a later flotillad cannot take it over.
		p.sup.opts.Logger.Warn("cannot record how to reattach to the service", "name", p.spec.Name, "error", err)
	}
	p.attach(client, info, follow, tail, since)
	p.sup.opts.Logger.Info("service running", "name", p.spec.Name, "pid", info.Pid, "socket", info.Socket)
	return nil
}

// attach makes client's process the service's current one and watches for
// its exit.
func (p *proc) attach(client *plugin.Client, info *servicepb.DescribeResponse, follow *logFollower, tail *tailWriter, since time.Time) {
	// What the process said while starting comes before "running".
	follow.drain()
	exited := make(chan struct{})
	go func() {
		// go-plugin waits on the process itself and exposes only a poll.
		for !client.Exited() {
			time.Sleep(20 * time.Millisecond)
		}
		// Its last words (a panic, say) belong to this process's log.
		follow.close()
		close(exited)
	}()
	p.mu.Lock()
	p.client, p.tail, p.follow, p.exited = client, tail, follow, exited
	p.mu.Unlock()
	p.setStatus(func(s *Status) {
		s.State, s.Pid, s.Info, s.Since = Running, int(info.Pid), info, since
	})
}

// cgroup makes (or finds) the service's cgroup with its configured limits
// and notes its OOM kill count, to tell an OOM kill from a crash when the
// process exits. Without one the service runs unlimited.
func (p *proc) cgroup() *serviceCgroup {
	cg, err := p.sup.opts.Cgroups.service(p.spec.Name, p.spec.Limits)
	if err != nil {
		p.sup.opts.Logger.Error("service runs without its cgroup limits", "name", p.spec.Name, "error", err)
		cg = nil
	}
	p.mu.Lock()
	p.cg, p.oomBase = cg, cg.oomKills()
	p.status.Cgroup = cg.Path()
	p.mu.Unlock()
	return cg
}

// exitReason tells why the service's process ended: an OOM kill shows as a
// new kill in its cgroup's count.
func (p *proc) exitReason(requested bool) string {
	p.mu.Lock()
	cg, base := p.cg, p.oomBase
	p.mu.Unlock()
	if n := cg.oomKills(); n > base {
		p.mu.Lock()
		p.oomBase = n
		p.mu.Unlock()
		return "oom-killed"
	}
	if requested {
		return "restarted"
	}
	return "exited"
}

func describe(ctx context.Context, client *plugin.Client, timeout time.Duration) (*servicepb.DescribeResponse, error) {
	rpcClient, err := client.Client()
	if err != nil {
		return nil, err
	}
	raw, err := rpcClient.Dispense(handshake.PluginName)
	if err != nil {
		return nil, err
	}
	svc, ok := raw.(servicepb.ServiceClient)
	if !ok {
		return nil, errors.New("handshake plugin has an unexpected type")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return svc.Describe(ctx, &servicepb.DescribeRequest{})
}

// watch restarts the service whenever its process exits, with a backoff that
// starts at zero (a crash is usually a one-off) and grows while it keeps
// failing quickly.
func (p *proc) watch() {
	var delay time.Duration
	for {
		p.mu.Lock()
		exited := p.exited
		p.mu.Unlock()
		<-exited
		p.mu.Lock()
		requested := p.restart
		p.restart = nil
		p.mu.Unlock()
		if p.sup.isStopping() {
			if requested != nil {
				requested <- fmt.Errorf("restart %s: daemon is stopping: %w", p.spec.Name, errdefs.ErrFailedPrecondition)
			}
			return
		}
		st := p.snapshot()
		if time.Since(st.Since) > crashLoopWindow || requested != nil {
			delay = 0
		}
		reason := p.exitReason(requested != nil)
		switch {
		case reason == "oom-killed":
			// A limit hit is a crash like any other; it restarts the same.
			p.sup.opts.Logger.Error("service "+p.spec.Name+" was killed for exceeding its memory limit; restarting",
				"name", p.spec.Name, "pid", st.Pid, "memory_limit", p.spec.Limits.MemoryMax, "backoff", delay)
		case requested == nil:
			p.sup.opts.Logger.Error("service exited; restarting", "name", p.spec.Name, "pid", st.Pid, "backoff", delay)
		}
		p.setStatus(func(s *Status) {
			s.State = Restarting
			s.Restarts++
			s.LastExit = reason
			if reason == "oom-killed" {
				s.OOMKills++
			}
		})
		for {
			time.Sleep(delay)
			if p.sup.isStopping() {
				if requested != nil {
					requested <- fmt.Errorf("restart %s: daemon is stopping: %w", p.spec.Name, errdefs.ErrFailedPrecondition)
				}
				return
			}
			if delay == 0 {
				delay = 100 * time.Millisecond
			} else if delay *= 2; delay > 5*time.Second {
				delay = 5 * time.Second
			}
			err := p.start(context.Background())
			if err == nil && p.sup.isStopping() {
				// The daemon began stopping while this restart ran, and
				// its Stop may have passed this service already: the
				// process just started must not outlive it.
				p.stop()
				if requested != nil {
					requested <- fmt.Errorf("restart %s: daemon is stopping: %w", p.spec.Name, errdefs.ErrFailedPrecondition)
				}
				return
			}
			if requested != nil {
				requested <- err
				requested = nil
			}
			if err == nil {
				break
			}
			p.sup.opts.Logger.Error("service restart failed", "name", p.spec.Name, "error", err)
			p.setStatus(func(s *Status) { s.State = Restarting })
		}
	}
}

func (p *proc) stop() {
	if p.spec.External() {
		p.releaseExternal()
		return
	}
	p.mu.Lock()
	client, follow := p.client, p.follow
	p.mu.Unlock()
	if client == nil {
		return
	}
	// Kill asks the process to shut down gracefully over go-plugin and
	// force-kills it after a grace period.
	client.Kill()
	follow.close()
	p.mu.Lock()
	p.client = nil
	cg := p.cg
	p.mu.Unlock()
	cg.remove()
	_ = os.Remove(p.pidFile())
	_ = os.Remove(p.reattachPath())
	p.removePluginSockets()
	p.setStatus(func(s *Status) { s.State = Stopped; s.Pid = 0 })
	p.sup.opts.Logger.Info("service stopped", "name", p.spec.Name)
}

// detach lets go of the process, leaving it running for the next flotillad.
func (p *proc) detach() {
	if p.spec.External() {
		p.releaseExternal()
		return
	}
	p.mu.Lock()
	client, follow := p.client, p.follow
	pid := p.status.Pid
	p.mu.Unlock()
	if client == nil {
		return
	}
	// Forgotten, so that a Stop after this cannot end what now belongs to
	// the next flotillad.
	p.mu.Lock()
	p.client = nil
	p.mu.Unlock()
	follow.close()
	p.sup.opts.Logger.Info("service left running", "name", p.spec.Name, "pid", pid)
}

// tailWriter copies a service's output through line by line, keeps the lines
// in ring, and remembers the last one, so a failed start can say why.
type tailWriter struct {
	w    io.Writer
	ring *logRing
	mu   sync.Mutex
	line []byte
	prev string
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range b {
		if c != '\n' {
			t.line = append(t.line, c)
			continue
		}
		// Whole lines only: several services share one output.
		if len(t.line) > 0 {
			t.prev = string(t.line)
			if t.ring != nil {
				t.ring.add(t.prev)
			}
		}
		_, _ = t.w.Write(append(t.line, '\n'))
		t.line = t.line[:0]
	}
	return len(b), nil
}

func (t *tailWriter) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.line) > 0 {
		return string(t.line)
	}
	return t.prev
}

// LogLines is how many lines of output the supervisor keeps per service.
const LogLines = 1000

// logRing keeps the last lines of a service's output, across its restarts.
type logRing struct {
	mu    sync.Mutex
	lines []string
	next  int // where the next line goes once lines is full
}

func newLogRing(size int) *logRing { return &logRing{lines: make([]string, 0, size)} }

func (r *logRing) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) < cap(r.lines) {
		r.lines = append(r.lines, line)
		return
	}
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
}

// last returns the last n lines (all if n <= 0), oldest first.
func (r *logRing) last(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	all := append(append([]string(nil), r.lines[r.next:]...), r.lines[:r.next]...)
	if n > 0 && n < len(all) {
		all = all[len(all)-n:]
	}
	return all
}
