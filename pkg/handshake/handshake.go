// Package handshake is the contract between flotillad's supervisor and a
// service process: go-plugin's handshake, the plugin map both sides share, and
// the environment a service is started with. The supervisor's view of a
// service stays this narrow: start it, ask it to Describe itself, watch it.
package handshake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/logging"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// Config is go-plugin's handshake: a process started without the cookie is
// not being supervised and runs standalone instead.
var Config = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "FLOTILLA_SERVICE_COOKIE",
	MagicCookieValue: "8d1c4b0e-flotilla-service-v1",
}

// PluginName is the single plugin every service process serves.
const PluginName = "service"

// EnvVar carries the JSON-encoded Env to a service process.
const EnvVar = "FLOTILLA_SERVICE_ENV"

// Env is what a service process is told at start.
type Env struct {
	Name    string `json:"name"`
	Root    string `json:"root"`
	State   string `json:"state"`
	Socket  string `json:"socket"`
	Gateway string `json:"gateway"`
	// Deps maps the services this one calls to their sockets: those it
	// requires and those it reaches once serving (roster Entry.Reaches).
	Deps map[string]string `json:"deps,omitempty"`
	// Snapshotters maps snapshotter names to their sockets.
	Snapshotters map[string]string `json:"snapshotters,omitempty"`
	// Hosted are the services that run in this process beside it (the
	// roster's HostedBy), each with its own environment.
	Hosted map[string]Env  `json:"hosted,omitempty"`
	Log    logging.Options `json:"log"`
	// CallTimeoutMS is the default deadline of an outgoing call, in ms.
	CallTimeoutMS int64 `json:"call_timeout_ms,omitempty"`
	// RouteWaitMS is how long an outgoing call waits for a service that
	// is restarting, in ms (flotillad's [timeouts] route_wait).
	RouteWaitMS int64 `json:"route_wait_ms,omitempty"`
	// MaxProcs is the process's GOMAXPROCS; 0 leaves Go's default.
	MaxProcs int `json:"max_procs,omitempty"`
	// GOGC is the process's garbage collection target; 0 leaves Go's.
	GOGC int `json:"gogc,omitempty"`
	// MemoryLimit is the Go runtime's soft memory limit in bytes; 0 sets
	// none.
	MemoryLimit int64          `json:"memory_limit,omitempty"`
	Options     map[string]any `json:"options,omitempty"`

	// RemoteSnapshotters names those of Snapshotters that Flotilla does
	// not run ([snapshotters.<name>] address): nobody restarts them, so a
	// socket that refuses connections is an outage, not a restart.
	RemoteSnapshotters []string `json:"remote_snapshotters,omitempty"`
}

// Encode renders e for EnvVar.
func (e Env) Encode() (string, error) {
	b, err := json.Marshal(e)
	return string(b), err
}

// FromEnviron reads the Env of the current process.
func FromEnviron() (Env, bool, error) {
	var e Env
	s, ok := os.LookupEnv(EnvVar)
	if !ok {
		return e, false, nil
	}
	if err := json.Unmarshal([]byte(s), &e); err != nil {
		return e, true, fmt.Errorf("decode %s: %w", EnvVar, err)
	}
	return e, true, nil
}

// DecodeOptions fills v (a pointer to a struct with json tags, holding the
// service's defaults) from Options, refusing a key v has no field for. A
// deprecated name v's Aliases know is taken as its current one; the renames
// are returned for the service to warn about.
func (e Env) DecodeOptions(v any) ([]Rename, error) {
	if len(e.Options) == 0 {
		return nil, nil
	}
	m := cloneOptions(e.Options)
	renamed, err := RenameOptions(m, v)
	if err != nil {
		return nil, fmt.Errorf("options of service %s: %w", e.Name, err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, fmt.Errorf("options of service %s: %w", e.Name, err)
	}
	return renamed, nil
}

// Aliased is implemented by a service's options that have renamed some
// (to containerd's names, say): Aliases maps each old name to the current
// one, both dotted paths ("cni_conf_dir" to "cni.conf_dir"). The old names
// keep working, with a warning.
type Aliased interface {
	Aliases() map[string]string
}

// Rename is a deprecated option name found and taken as its current one.
type Rename struct{ Old, New string }

// RenameOptions moves the values m holds under a deprecated name of v's
// (see Aliased) to the current name, and says which it moved, by old name.
// A value under both names is an error: which one is meant is unclear.
func RenameOptions(m map[string]any, v any) ([]Rename, error) {
	a, ok := v.(Aliased)
	if !ok {
		return nil, nil
	}
	aliases := a.Aliases()
	olds := make([]string, 0, len(aliases))
	for old := range aliases {
		olds = append(olds, old)
	}
	sort.Strings(olds)
	var out []Rename
	for _, old := range olds {
		val, ok := lookupOption(m, old)
		if !ok {
			continue
		}
		cur := aliases[old]
		if _, both := lookupOption(m, cur); both {
			return nil, fmt.Errorf("option %s is the deprecated name of %s: give one of the two", old, cur)
		}
		deleteOption(m, old)
		if err := SetOption(m, cur, val); err != nil {
			return nil, err
		}
		out = append(out, Rename{Old: old, New: cur})
	}
	return out, nil
}

// SetOption sets the option at a dotted path ("cni.conf_dir") in m,
// making the tables on the way.
func SetOption(m map[string]any, path string, v any) error {
	parts := strings.Split(path, ".")
	for i, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			if _, taken := m[p]; taken {
				return fmt.Errorf("option %s: %s is not a table", path, strings.Join(parts[:i+1], "."))
			}
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
	return nil
}

func lookupOption(m map[string]any, path string) (any, bool) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return nil, false
		}
		m = next
	}
	v, ok := m[parts[len(parts)-1]]
	return v, ok
}

func deleteOption(m map[string]any, path string) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return
		}
		m = next
	}
	delete(m, parts[len(parts)-1])
}

// cloneOptions copies m's tables, so that renaming leaves the original be.
func cloneOptions(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if t, ok := v.(map[string]any); ok {
			v = cloneOptions(t)
		}
		out[k] = v
	}
	return out
}

// Plugin is the go-plugin adapter of the Describe handshake service. The host
// side sets nothing; the service side sets Impl.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl servicepb.ServiceServer
}

func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	servicepb.RegisterServiceServer(s, p.Impl)
	return nil
}

func (p *Plugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return servicepb.NewServiceClient(c), nil
}

// Plugins is the plugin map shared by host and service.
func Plugins(impl servicepb.ServiceServer) map[string]plugin.Plugin {
	return map[string]plugin.Plugin{PluginName: &Plugin{Impl: impl}}
}
