package gateway

import (
	"os"
	"strconv"

	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/gateway/admin"
	"github.com/flotilla-project/flotilla/gateway/events"
	"github.com/flotilla-project/flotilla/gateway/introspection"
	"github.com/flotilla-project/flotilla/gateway/version"
)

// builtinType is the introspection type of the services the gateway hosts
// itself; containerd lists its gRPC services under the same type.
const builtinType = "io.containerd.grpc.v1"

// unknownType is shown for a service that has not described itself yet
// (starting, or failed before its handshake), so it still appears in
// `ctr plugins ls` with its error.
const unknownType = "io.flotilla.service.v1"

// registerBuiltins adds the services the gateway hosts itself.
func (g *Gateway) registerBuiltins(s *grpc.Server, o Options) error {
	g.events = events.NewExchange(o.Logger, 0)
	events.NewService(g.events).Register(s)
	version.NewService().Register(s)
	g.admin = admin.New(o.Logger, g.router)
	g.admin.Register(s)
	introspection.New(introspection.Options{
		Logger:  o.Logger,
		Root:    o.Root,
		Plugins: g.plugins,
	}).Register(s)
	return nil
}

// Events is the daemon's event exchange, for publishing from inside flotillad
// (e.g. service lifecycle events).
func (g *Gateway) Events() *events.Exchange { return g.events }

// SetSupervisor gives Flotilla's admin API (flotilla.admin.v1) the
// supervisor it reports on and restarts services with; until then it answers
// Unavailable.
func (g *Gateway) SetSupervisor(s admin.Supervisor) { g.admin.SetSupervisor(s) }

// plugins lists the gateway's own services, then every service process, as
// introspection plugins.
func (g *Gateway) plugins() []introspection.Plugin {
	pid := strconv.Itoa(os.Getpid())
	var out []introspection.Plugin
	for _, id := range []string{"events", "introspection", "version"} {
		out = append(out, introspection.Plugin{
			Type:    builtinType,
			ID:      id,
			Exports: map[string]string{"pid": pid},
		})
	}
	for _, s := range g.Services() {
		out = append(out, servicePlugin(s))
	}
	return out
}

func servicePlugin(s Service) introspection.Plugin {
	p := introspection.Plugin{
		Type:    unknownType,
		ID:      s.Name,
		Exports: map[string]string{},
		Err:     s.Err,
	}
	if s.Info != nil {
		if s.Info.Type != "" {
			p.Type = s.Info.Type
		}
		p.Requires = s.Info.Requires
		p.Capabilities = s.Info.Capabilities
		for k, v := range s.Info.Exports {
			p.Exports[k] = v
		}
		// A snapshotter is known to clients by its name (ctr --snapshotter
		// overlayfs), as in containerd, not by its process's.
		if name := s.Info.Exports["snapshotter"]; name != "" {
			p.ID = name
			p.Exports["service"] = s.Name
		}
		if s.Info.Socket != "" {
			p.Exports["socket"] = s.Info.Socket
		}
		if s.Info.Pid > 0 {
			p.Exports["pid"] = strconv.FormatInt(s.Info.Pid, 10)
		}
	} else if p.Err == "" {
		p.Err = "service has not described itself (state: " + s.State + ")"
	}
	// The supervisor's view is fresher than the handshake's: it changes on
	// every restart.
	if s.Pid > 0 {
		p.Exports["pid"] = strconv.Itoa(s.Pid)
	}
	if s.State != "" {
		p.Exports["state"] = s.State
	}
	p.Exports["restarts"] = strconv.Itoa(s.Restarts)
	return p
}
