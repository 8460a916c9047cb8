// Package gateway is the client-facing side of flotillad: one gRPC server on
// the client socket that hosts the daemon-wide services (Version,
// Introspection, Events) and routes every other call to the service process
// that owns it.
package gateway

import (
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/flotilla-project/flotilla/gateway/admin"
	"github.com/flotilla-project/flotilla/gateway/events"

	"github.com/flotilla-project/flotilla/gateway/router"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// Options configure a Gateway.
type Options struct {
	Logger *slog.Logger
	// Root holds the gateway's persistent state (the server UUID).
	Root string
	// RouteWait bounds how long a call waits for a restarting service.
	RouteWait time.Duration
}

// Service is the gateway's view of one service process.
type Service struct {
	Name     string
	State    string
	Pid      int
	Restarts int
	Info     *servicepb.DescribeResponse
	Err      string
}

// Gateway serves the client socket.
type Gateway struct {
	logger *slog.Logger
	router *router.Router
	server *rpc.Server
	events *events.Exchange
	admin  *admin.Service

	mu       sync.RWMutex
	services map[string]Service
	ttrpc    *ttrpc.Server
}

// New builds the gateway's server and registers the services it hosts.
func New(o Options) (*Gateway, error) {
	if o.RouteWait == 0 {
		o.RouteWait = 10 * time.Second
	}
	g := &Gateway{
		logger:   o.Logger,
		router:   router.New(o.Logger, o.RouteWait),
		services: map[string]Service{},
	}
	g.server = rpc.NewServer(o.Logger, g.router.ServerOptions()...)
	if err := g.registerBuiltins(g.server.Server, o); err != nil {
		return nil, err
	}
	g.router.RegisterUnary(g.server.Server, "containerd.services.", map[string]bool{
		"containerd.services.events.v1.Events":               true,
		"containerd.services.introspection.v1.Introspection": true,
		"containerd.services.version.v1.Version":             true,
		"containerd.services.events.ttrpc.v1.Events":         true,
	})
	return g, nil
}

// Serve accepts clients on l until Stop.
func (g *Gateway) Serve(l net.Listener) error { return g.server.Serve(l) }

// SetService records a service's latest status and routes its calls.
func (g *Gateway) SetService(s Service) error {
	g.mu.Lock()
	g.services[s.Name] = s
	g.mu.Unlock()
	if s.Info != nil {
		if err := g.router.Set(s.Name, s.Info.Socket, s.Info.Routes, s.Info.MethodRoutes); err != nil {
			return err
		}
		g.router.SetFast(s.Name, s.Info.Exports["ttrpc"])
		if fd := s.Info.Exports["blobfd"]; fd != "" {
			g.router.SetBlobFD(fd)
		}
	}
	return nil
}

// Services lists every known service by name.
func (g *Gateway) Services() []Service {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]Service, 0, len(g.services))
	for _, s := range g.services {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Ready ends startup: calls for unknown services fail at once from now on.
func (g *Gateway) Ready() { g.router.Ready() }

// Stop ends client calls (briefly letting in-flight ones finish) and drops
// the backend connections.
func (g *Gateway) Stop() {
	done := make(chan struct{})
	go func() { g.server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		g.server.Stop()
	}
	g.router.Close()
	g.mu.RLock()
	t := g.ttrpc
	g.mu.RUnlock()
	if t != nil {
		_ = t.Close()
	}
}
