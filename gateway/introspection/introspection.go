// Package introspection serves containerd's Introspection API from the
// gateway. containerd lists the plugins of its one process; Flotilla's
// plugins are processes, so the gateway lists what its caller gives it (every
// service process and the gateway's own services) in the same shape, and
// `ctr plugins ls` shows the daemon's process graph.
package introspection

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	api "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Plugin is one entry of the plugin list.
type Plugin struct {
	Type         string
	ID           string
	Requires     []string
	Exports      map[string]string
	Capabilities []string
	// Err, when set, is reported as the plugin's init error: ctr shows the
	// plugin with status "error".
	Err string
	// InfoFrom names the service process that gives the plugin's extra
	// information (PluginInfo with options), through Options.Info; empty
	// when it has none.
	InfoFrom string
}

// Options configure a Service.
type Options struct {
	Logger *slog.Logger
	// Root is where the server UUID is kept. Empty means the UUID lives
	// only as long as the process (for tests and throwaway daemons).
	Root string
	// Plugins lists the current plugins; it is called on every request, so
	// the answer follows services as they restart.
	Plugins func() []Plugin
	// Info asks the named service process for a plugin's extra
	// information: the process serves containerd's Introspection
	// PluginInfo for its plugin (the tasks process runs the runtime's
	// shim with -info, as containerd's runtime plugin does).
	Info func(ctx context.Context, process string, req *api.PluginInfoRequest) (*api.PluginInfoResponse, error)
}

// Service is the containerd.services.introspection.v1.Introspection server.
type Service struct {
	api.UnimplementedIntrospectionServer
	o Options

	mu   sync.Mutex
	uuid string
}

// New returns an Introspection server.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Plugins == nil {
		o.Plugins = func() []Plugin { return nil }
	}
	return &Service{o: o}
}

// Register adds the service to s.
func (s *Service) Register(r grpc.ServiceRegistrar) { api.RegisterIntrospectionServer(r, s) }

// Plugins lists plugins matching any of the request's filters (containerd's
// syntax over type, id and capabilities).
func (s *Service) Plugins(ctx context.Context, r *api.PluginsRequest) (*api.PluginsResponse, error) {
	f, err := filters.ParseAll(r.Filters...)
	if err != nil {
		return nil, fmt.Errorf("plugin filters: %w", err)
	}
	var out []*api.Plugin
	for _, p := range s.o.Plugins() {
		if match(f, p) {
			out = append(out, toProto(p))
		}
	}
	return &api.PluginsResponse{Plugins: out}, nil
}

// PluginInfo describes one plugin. With options, the plugin's extra
// information comes from the process that owns it (the runtime's features
// from the tasks process); a plugin that gives none answers NotImplemented,
// and one whose process is down FailedPrecondition, as containerd answers
// for a plugin that provides none or did not load.
func (s *Service) PluginInfo(ctx context.Context, r *api.PluginInfoRequest) (*api.PluginInfoResponse, error) {
	for _, p := range s.o.Plugins() {
		if p.Type != r.Type || p.ID != r.ID {
			continue
		}
		resp := &api.PluginInfoResponse{Plugin: toProto(p)}
		if r.Options == nil {
			return resp, nil
		}
		if p.InfoFrom == "" || s.o.Info == nil {
			return nil, fmt.Errorf("plugin %s.%s provides no extra information: %w", r.Type, r.ID, errdefs.ErrNotImplemented)
		}
		if p.Err != "" {
			return nil, fmt.Errorf("cannot get extra information from plugin %s.%s: %s: %w", r.Type, r.ID, p.Err, errdefs.ErrFailedPrecondition)
		}
		info, err := s.o.Info(ctx, p.InfoFrom, r)
		if err != nil {
			return nil, err
		}
		resp.Extra = info.GetExtra()
		return resp, nil
	}
	return nil, fmt.Errorf("plugin %s.%s not found: %w", r.Type, r.ID, errdefs.ErrNotFound)
}

// Server reports the daemon's identity: a UUID stable across restarts, and
// flotillad's pid and pid namespace.
func (s *Service) Server(ctx context.Context, _ *emptypb.Empty) (*api.ServerResponse, error) {
	u, err := s.serverUUID()
	if err != nil {
		return nil, err
	}
	pid := os.Getpid()
	return &api.ServerResponse{UUID: u, Pid: uint64(pid), Pidns: pidns(pid)}, nil
}

// serverUUID reads the UUID from <root>/uuid, creating it on first use.
// Like containerd, an empty file is replaced and a garbled one is an error:
// a UUID that silently changed would look like a different daemon.
func (s *Service) serverUUID() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.uuid != "" {
		return s.uuid, nil
	}
	if s.o.Root == "" {
		s.uuid = uuid.NewString()
		return s.uuid, nil
	}
	path := filepath.Join(s.o.Root, "uuid")
	data, err := os.ReadFile(path)
	switch {
	case err == nil && len(data) > 0:
		if _, err := uuid.Parse(string(data)); err != nil {
			return "", fmt.Errorf("server uuid in %s: %v: %w", path, err, errdefs.ErrDataLoss)
		}
		s.uuid = string(data)
		return s.uuid, nil
	case err != nil && !os.IsNotExist(err):
		return "", fmt.Errorf("read server uuid: %w", err)
	}
	u := uuid.NewString()
	if err := writeFileAtomic(path, []byte(u)); err != nil {
		return "", fmt.Errorf("store server uuid: %w", err)
	}
	s.o.Logger.Info("generated server uuid", "uuid", u, "path", path)
	s.uuid = u
	return u, nil
}

// writeFileAtomic writes through a temporary file and a rename, so a crash
// leaves either no file or the whole UUID, never a torn one.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".uuid-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// pidns is the inode of the process's pid namespace, 0 when unreadable
// (not Linux, or /proc not mounted).
func pidns(pid int) uint64 {
	fi, err := os.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func toProto(p Plugin) *api.Plugin {
	pb := &api.Plugin{
		Type:         p.Type,
		ID:           p.ID,
		Requires:     p.Requires,
		Exports:      p.Exports,
		Capabilities: p.Capabilities,
	}
	if p.Err != "" {
		pb.InitErr = &rpcstatus.Status{Code: int32(code.Code_UNKNOWN), Message: p.Err}
	}
	return pb
}

// match applies f to a plugin. containerd cannot filter on capabilities (a
// field with several values); here a plugin matches when the filter holds
// for any one of its capabilities, so `capabilities==exportable` finds the
// plugins that have it.
func match(f filters.Filter, p Plugin) bool {
	if len(p.Capabilities) == 0 {
		return f.Match(adaptor(p, "", false))
	}
	for _, c := range p.Capabilities {
		if f.Match(adaptor(p, c, true)) {
			return true
		}
	}
	return false
}

func adaptor(p Plugin, capability string, hasCapability bool) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 0 {
			return "", false
		}
		switch fieldpath[0] {
		case "type":
			return p.Type, p.Type != ""
		case "id":
			return p.ID, p.ID != ""
		case "capabilities":
			return capability, hasCapability
		}
		return "", false
	})
}
