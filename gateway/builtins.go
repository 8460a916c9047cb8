package gateway

import (
	"context"
	"os"
	"sort"
	"strconv"
	"strings"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
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
	if err := g.forgetDeletedBlobs(); err != nil {
		return err
	}
	version.NewService().Register(s)
	g.admin = admin.New(o.Logger, g.router)
	g.admin.Register(s)
	introspection.New(introspection.Options{
		Logger:  o.Logger,
		Root:    o.Root,
		Plugins: g.plugins,
		Info:    g.pluginInfo,
	}).Register(s)
	return nil
}

// forgetDeletedBlobs tells the router each blob a namespace deletes, which
// it may have granted the namespace a moment before (router.ForgetBlob).
func (g *Gateway) forgetDeletedBlobs() error {
	sub, err := g.events.Subscribe(`topic=="/content/delete"`)
	if err != nil {
		return err
	}
	go func() {
		for {
			select {
			case env := <-sub.Events():
				v, err := typeurl.UnmarshalAny(env.Event)
				if ev, ok := v.(*eventstypes.ContentDelete); ok && err == nil {
					g.router.ForgetBlob(env.Namespace, ev.Digest)
				}
			case <-sub.Done():
				return
			}
		}
	}()
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
		out = append(out, servicePlugins(s)...)
	}
	return out
}

// pluginInfo asks a service process for a plugin's extra information
// (containerd's Introspection PluginInfo, served on the process's socket).
func (g *Gateway) pluginInfo(ctx context.Context, process string, req *introspectionapi.PluginInfoRequest) (*introspectionapi.PluginInfoResponse, error) {
	var resp introspectionapi.PluginInfoResponse
	if err := g.router.Call(ctx, process, "/containerd.services.introspection.v1.Introspection/PluginInfo", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// pluginPrefix marks the exports of a service that belong to the plugin it
// names with plugin_id rather than to its process (see servicePlugins).
const pluginPrefix = "plugin."

// processType is the type a process is listed under when its plugin is
// listed apart: containerd lists its gRPC services under it (the tasks
// process serves containerd.services.tasks.v1 as containerd's
// io.containerd.grpc.v1 tasks does).
const processType = builtinType

// servicePlugins lists a service process as Introspection's plugins: one
// plugin, or, when the process exports plugin_id (the id containerd's
// clients look its plugin up by, "task" for the tasks process's runtime),
// the process under its own name and type io.containerd.grpc.v1, and the
// plugin under that id and the process's type with the exports named
// plugin.<key>, whose extra information (PluginInfo with options) the
// process gives.
func servicePlugins(s Service) []introspection.Plugin {
	p, hosted := hostedPlugins(servicePlugin(s))
	return append(processPlugins(s, p), hosted...)
}

// hostedPrefix marks the exports that describe a service hosted in the
// process: hosted.<name>.type and hosted.<name>.<export> (pkg/roster).
const hostedPrefix = "hosted."

// hostedPlugins takes the services hosted in a process out of its plugin's
// exports, each a plugin of its own with the process's pid and socket.
func hostedPlugins(p introspection.Plugin) (introspection.Plugin, []introspection.Plugin) {
	byName := map[string]*introspection.Plugin{}
	var names []string
	exports := map[string]string{}
	for k, v := range p.Exports {
		rest, ok := strings.CutPrefix(k, hostedPrefix)
		name, key, found := strings.Cut(rest, ".")
		if !ok || !found {
			exports[k] = v
			continue
		}
		h := byName[name]
		if h == nil {
			h = &introspection.Plugin{ID: name, Type: unknownType, Exports: map[string]string{"hosted_by": p.ID}, Err: p.Err}
			byName[name] = h
			names = append(names, name)
		}
		if key == "type" {
			h.Type = v
			continue
		}
		h.Exports[key] = v
	}
	p.Exports = exports
	sort.Strings(names)
	var out []introspection.Plugin
	for _, name := range names {
		h := byName[name]
		// What describes the process it runs in.
		for _, k := range []string{"pid", "socket", "ttrpc", "state", "restarts", "started", "gomaxprocs"} {
			if v, ok := exports[k]; ok {
				h.Exports[k] = v
			}
		}
		out = append(out, *h)
	}
	return p, out
}

// processPlugins is the plugin of a service process, and the plugin it
// serves under another id when it names one (plugin_id).
func processPlugins(s Service, p introspection.Plugin) []introspection.Plugin {
	id := p.Exports["plugin_id"]
	if id == "" || id == p.ID {
		return []introspection.Plugin{p}
	}
	plugin := introspection.Plugin{
		Type:     p.Type,
		ID:       id,
		Requires: p.Requires,
		Exports:  map[string]string{"service": s.Name},
		Err:      p.Err,
		InfoFrom: s.Name,
	}
	process := p
	process.Type = processType
	process.Exports = map[string]string{}
	for k, v := range p.Exports {
		if pk, ok := strings.CutPrefix(k, pluginPrefix); ok {
			plugin.Exports[pk] = v
			continue
		}
		process.Exports[k] = v
	}
	for _, k := range []string{"pid", "state"} {
		if v, ok := process.Exports[k]; ok {
			plugin.Exports[k] = v
		}
	}
	return []introspection.Plugin{process, plugin}
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
