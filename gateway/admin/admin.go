// Package admin serves Flotilla's own operator API (flotilla.admin.v1.Admin)
// from the gateway: the service processes as the supervisor sees them, their
// output, and graceful restarts, which need the supervisor and the router to
// act together. It knows both only by the small interfaces below.
package admin

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

// DefaultDrainTimeout bounds a restart's wait for calls in flight when the
// request sets none.
const DefaultDrainTimeout = 10 * time.Second

// Process is one supervised service process.
type Process struct {
	Name     string
	State    string
	Pid      int
	Socket   string
	Restarts int
	Since    time.Time // when the current process became ready
	Err      string
	// OOMKills counts the kernel's kills for exceeding MemoryLimit;
	// LastExit says why the previous process ended ("oom-killed",
	// "exited", "restarted"), "" if none did.
	OOMKills int
	LastExit string
	// Cgroup is the process's cgroup ("" without); MemoryLimit (bytes)
	// and CPULimit (CPUs) its limits, 0 for none.
	Cgroup      string
	MemoryLimit int64
	CPULimit    float64
}

// Supervisor is what the admin API needs of flotillad's supervisor.
type Supervisor interface {
	Processes() []Process
	// Restart stops the process (killing it after grace) and starts it
	// again, returning once the new one is ready.
	Restart(ctx context.Context, name string, grace time.Duration) error
	// Logs returns the last n lines of output (all kept if n <= 0).
	Logs(name string, n int) ([]string, error)
}

// Router is what the admin API needs of the gateway's router.
type Router interface {
	// Hold makes new calls to the process wait until Release.
	Hold(name string)
	Release(name string)
	// Drain waits until no call to the process is in flight, or ctx ends.
	Drain(ctx context.Context, name string) error
	InFlight(name string) int64
}

// Service is the flotilla.admin.v1.Admin server.
type Service struct {
	adminpb.UnimplementedAdminServer
	logger *slog.Logger
	router Router

	mu         sync.Mutex
	sup        Supervisor
	restarting map[string]bool
}

// New returns an admin service routing through r. It answers Unavailable
// until SetSupervisor.
func New(logger *slog.Logger, r Router) *Service {
	return &Service{logger: logger, router: r, restarting: map[string]bool{}}
}

// SetSupervisor gives the service the supervisor to act on; flotillad makes
// its supervisor after the gateway, which registers this service.
func (s *Service) SetSupervisor(sup Supervisor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sup = sup
}

// Register adds the service to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) { adminpb.RegisterAdminServer(r, s) }

func (s *Service) supervisor() (Supervisor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sup == nil {
		return nil, fmt.Errorf("the daemon is starting: %w", errdefs.ErrUnavailable)
	}
	return s.sup, nil
}

// Services lists every supervised process.
func (s *Service) Services(context.Context, *adminpb.ServicesRequest) (*adminpb.ServicesResponse, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, err
	}
	resp := &adminpb.ServicesResponse{}
	now := time.Now()
	for _, p := range sup.Processes() {
		resp.Services = append(resp.Services, status(p, now))
	}
	return resp, nil
}

func status(p Process, now time.Time) *adminpb.ServiceStatus {
	st := &adminpb.ServiceStatus{
		Name:     p.Name,
		Pid:      int64(p.Pid),
		Socket:   p.Socket,
		State:    p.State,
		Restarts: int64(p.Restarts),
		Error:    p.Err,
		OomKills: int64(p.OOMKills),
		LastExit: p.LastExit,
		Cgroup:   p.Cgroup,
		CpuLimit: p.CPULimit,
	}
	if p.MemoryLimit > 0 {
		st.MemoryLimitBytes = uint64(p.MemoryLimit)
	}
	if p.Pid > 0 {
		st.RssBytes = rss(p.Pid)
		if !p.Since.IsZero() {
			st.StartedAt = timestamppb.New(p.Since)
			st.Uptime = durationpb.New(now.Sub(p.Since))
		}
	}
	return st
}

// rss is a process's resident memory from /proc/<pid>/status, 0 if unknown.
func rss(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(v) // "12345 kB"
		if len(f) == 0 {
			return 0
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0
		}
		return kb * 1024
	}
	return 0
}

// Restart restarts one service so that its clients see latency, not errors:
// new calls are held, calls in flight finish (up to the drain timeout), the
// process restarts, and the held calls go to the new one.
// (The server's interceptor turns errdefs errors into gRPC codes.)
func (s *Service) Restart(ctx context.Context, req *adminpb.RestartRequest) (*adminpb.RestartResponse, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, err
	}
	name := req.GetName()
	if _, err := find(sup, name); err != nil {
		return nil, err
	}
	drain := DefaultDrainTimeout
	if d := req.GetDrainTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, fmt.Errorf("drain timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		drain = d.AsDuration()
	}
	s.mu.Lock()
	if s.restarting[name] {
		s.mu.Unlock()
		return nil, fmt.Errorf("service %s is already being restarted: %w", name, errdefs.ErrFailedPrecondition)
	}
	s.restarting[name] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.restarting, name)
		s.mu.Unlock()
	}()

	// Once begun, a restart runs to its end even if the operator's client
	// goes away: a service left held would fail every caller.
	ctx = context.WithoutCancel(ctx)
	start := time.Now()
	s.router.Hold(name)
	defer s.router.Release(name)
	resp := &adminpb.RestartResponse{}
	dctx, cancel := context.WithTimeout(ctx, drain)
	err = s.router.Drain(dctx, name)
	cancel()
	if err != nil {
		resp.AbandonedCalls = s.router.InFlight(name)
		s.logger.Warn("restarting with calls in flight", "name", name, "calls", resp.AbandonedCalls, "drain_timeout", drain)
	}
	// The process gets as long to exit as its calls had to drain, and at
	// least long enough to close its stores cleanly.
	grace := max(drain, 5*time.Second)
	if err := sup.Restart(ctx, name, grace); err != nil {
		return nil, fmt.Errorf("restart %s: %w", name, err)
	}
	resp.Held = durationpb.New(time.Since(start))
	s.logger.Info("service restarted", "name", name, "held", time.Since(start))
	if p, err := find(sup, name); err == nil {
		resp.Service = status(p, time.Now())
	}
	return resp, nil
}

func find(sup Supervisor, name string) (Process, error) {
	if name == "" {
		return Process{}, fmt.Errorf("no service name: %w", errdefs.ErrInvalidArgument)
	}
	for _, p := range sup.Processes() {
		if p.Name == name {
			return p, nil
		}
	}
	return Process{}, fmt.Errorf("service %q: %w", name, errdefs.ErrNotFound)
}

// Logs returns the last lines of a service's output.
func (s *Service) Logs(_ context.Context, req *adminpb.LogsRequest) (*adminpb.LogsResponse, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, err
	}
	if req.GetLines() < 0 {
		return nil, fmt.Errorf("lines %d: %w", req.GetLines(), errdefs.ErrInvalidArgument)
	}
	if _, err := find(sup, req.GetName()); err != nil {
		return nil, err
	}
	lines, err := sup.Logs(req.GetName(), int(req.GetLines()))
	if err != nil {
		return nil, err
	}
	return &adminpb.LogsResponse{Lines: lines}, nil
}
