// Package handshake is the contract between flotillad's supervisor and a
// service process: go-plugin's handshake, the plugin map both sides share, and
// the environment a service is started with. The supervisor's view of a
// service stays this narrow: start it, ask it to Describe itself, watch it.
package handshake

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

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
	Log          logging.Options   `json:"log"`
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

// DecodeOptions fills v (a pointer to a struct with json tags) from Options.
func (e Env) DecodeOptions(v any) error {
	if len(e.Options) == 0 {
		return nil
	}
	b, err := json.Marshal(e.Options)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("options of service %s: %w", e.Name, err)
	}
	return nil
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
