// Package config is flotillad's configuration file: a TOML document in the
// spirit of containerd's config.toml. `flotillad config default` prints the
// defaults this package defines.
package config

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-project/flotilla/pkg/roster"
)

// Config is the whole daemon configuration.
type Config struct {
	Version int    `toml:"version" comment:"Configuration format version."`
	Root    string `toml:"root" comment:"Persistent data: content blobs, meta.db, snapshots."`
	State   string `toml:"state" comment:"Runtime state: sockets, pid files; gone after a reboot."`

	// MaxProcs bounds the CPUs flotillad's Go runtime runs goroutines on
	// at once (GOMAXPROCS); see Service.MaxProcs.
	MaxProcs int `toml:"max_procs" comment:"Go's GOMAXPROCS for flotillad (the gateway and supervisor); 0 means 1."`

	GRPC     GRPC     `toml:"grpc"`
	Debug    Debug    `toml:"debug"`
	Timeouts Timeouts `toml:"timeouts"`
	Metrics  Metrics  `toml:"metrics"`
	Trace    Trace    `toml:"trace"`

	// Services configures each service process by name. A service missing
	// here runs with its defaults; `disabled = true` leaves it out.
	Services map[string]Service `toml:"services"`

	// Snapshotters are the snapshotters clients name (ctr --snapshotter).
	// Each is a flotilla-snapshotter process of its own, or, with an
	// address, a process Flotilla does not start: a remote snapshotter
	// serving containerd's Snapshots API (containerd's proxy_plugins).
	Snapshotters map[string]Snapshotter `toml:"snapshotters"`
}

// Snapshotter is one snapshotter by name.
type Snapshotter struct {
	Disabled bool `toml:"disabled,omitempty"`
	// Driver is what a Flotilla snapshotter process runs: overlayfs or native.
	Driver string `toml:"driver,omitempty" comment:"overlayfs or native; ignored with an address."`
	// Address is the socket of a remote snapshotter.
	Address string `toml:"address,omitempty" comment:"Socket of a remote snapshotter Flotilla does not start."`
	// Options are handed to the process as they are (mount_options, ...).
	Options map[string]any `toml:"options,omitempty"`
}

// DefaultSnapshotter is the snapshotter containerd's clients use when they
// name none.
const DefaultSnapshotter = "overlayfs"

// GRPC is the client-facing socket.
type GRPC struct {
	Address string `toml:"address" comment:"Client socket; empty means <state>/flotilla.sock."`
	UID     int    `toml:"uid"`
	GID     int    `toml:"gid"`
}

// Debug selects logging.
type Debug struct {
	Level  string `toml:"level" comment:"trace, debug, info, warn or error."`
	Format string `toml:"format" comment:"text or json."`
}

// Timeouts bound waits between processes.
type Timeouts struct {
	ServiceStart Duration `toml:"service_start" comment:"How long a service may take to come up before startup fails."`
	RouteWait    Duration `toml:"route_wait" comment:"How long a call (a client's at the gateway, or one service's to another) waits for a service that is restarting."`
	Call         Duration `toml:"call" comment:"Longest an inter-process call may take (a client's shorter deadline still applies)."`
}

// Metrics is the Prometheus endpoint.
type Metrics struct {
	Address string `toml:"address" comment:"TCP address of /metrics (e.g. \"127.0.0.1:9464\"); empty serves none."`
}

// Trace selects where spans go besides OTLP (OTEL_EXPORTER_OTLP_ENDPOINT).
type Trace struct {
	File bool `toml:"file" comment:"Every process also writes its spans to <state>/traces/<service>.jsonl, for flotilla trace."`
}

// Service is one service process. A snapshotter's process is the service
// snapshotter-<name> ([services.snapshotter-overlayfs]), for its path and
// limits.
type Service struct {
	Disabled bool   `toml:"disabled,omitempty"`
	Path     string `toml:"path,omitempty" comment:"Binary; empty means flotilla-<name> beside flotillad."`
	// Address is the socket of the service run by someone else (a
	// container of its own, say): flotillad starts no process for it,
	// waits for it to answer there at startup, routes its calls there and
	// hands that socket to the services that depend on it.
	Address string `toml:"address,omitempty" comment:"Socket of this service run outside flotillad (flotilla-<name> --socket ...); flotillad then starts no process for it."`
	// MaxProcs is the service's GOMAXPROCS. The processes of the graph
	// are the parallelism: a relay with its own runtime spread over every
	// CPU spends its time waking threads on other CPUs (measured on two
	// cores: a routed call 20% slower, a content read 25%). Those that
	// compute in parallel (layer apply, many containers) keep every CPU.
	MaxProcs int `toml:"max_procs,omitempty" comment:"Go's GOMAXPROCS for the process; 0 means the default: 1 for content and metadata, every CPU for the others."`
	// GOGC is the Go runtime's garbage collection target (pkg/roster
	// says why the defaults differ).
	GOGC int `toml:"gogc,omitempty" comment:"Go's GOGC for the process; 0 means the default: 50 for the services that idle most of the time, Go's 100 for content."`
	// MemoryLimit and CPULimit bound the service's cgroup (see Limits).
	MemoryLimit string `toml:"memory_limit,omitempty" comment:"Most memory the process may use (\"256MiB\"); past it the kernel kills it and it is restarted. Empty: no limit."`
	CPULimit    string `toml:"cpu_limit,omitempty" comment:"CPUs the process may use (\"0.5\" is half of one). Empty: no limit."`
	// Options is handed to the service as it is; each service documents its own.
	Options map[string]any `toml:"options,omitempty"`
}

// Limits parses MemoryLimit (bytes) and CPULimit (CPUs); 0 means no limit.
func (s Service) Limits() (memory int64, cpus float64, err error) {
	if memory, err = ParseBytes(s.MemoryLimit); err != nil {
		return 0, 0, fmt.Errorf("memory_limit: %w", err)
	}
	if s.CPULimit != "" {
		cpus, err = strconv.ParseFloat(strings.TrimSpace(s.CPULimit), 64)
		if err != nil || cpus <= 0 || math.IsInf(cpus, 0) || math.IsNaN(cpus) {
			return 0, 0, fmt.Errorf("cpu_limit %q: want a positive number of CPUs such as \"0.5\"", s.CPULimit)
		}
	}
	return memory, cpus, nil
}

// byteUnits are the suffixes ParseBytes knows. K, M, G and T are binary, as
// docker's and Kubernetes' Ki, Mi... are; KB, MB... are decimal.
var byteUnits = map[string]int64{
	"": 1, "B": 1,
	"K": 1 << 10, "KI": 1 << 10, "KIB": 1 << 10, "KB": 1e3,
	"M": 1 << 20, "MI": 1 << 20, "MIB": 1 << 20, "MB": 1e6,
	"G": 1 << 30, "GI": 1 << 30, "GIB": 1 << 30, "GB": 1e9,
	"T": 1 << 40, "TI": 1 << 40, "TIB": 1 << 40, "TB": 1e12,
}

// ParseBytes parses a size such as "256MiB", "1.5G" or "1048576"; "" is 0.
func ParseBytes(v string) (int64, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	i := strings.IndexFunc(v, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(v)
	}
	unit, ok := byteUnits[strings.ToUpper(strings.TrimSpace(v[i:]))]
	n, err := strconv.ParseFloat(v[:i], 64)
	if !ok || err != nil || n <= 0 || n*float64(unit) >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: want a positive size such as \"256MiB\"", v)
	}
	return int64(n * float64(unit)), nil
}

// Duration is a time.Duration written as "10s" in TOML.
type Duration struct{ time.Duration }

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Default is the configuration flotillad runs with when given no file.
func Default() *Config {
	return &Config{
		Version: 1,
		Root:    "/var/lib/flotilla",
		State:   "/run/flotilla",
		Debug:   Debug{Level: "info", Format: "text"},
		Timeouts: Timeouts{
			ServiceStart: Duration{20 * time.Second},
			RouteWait:    Duration{10 * time.Second},
			Call:         Duration{30 * time.Second},
		},
		Services: defaultServices(),
		Snapshotters: map[string]Snapshotter{
			"overlayfs": {Driver: "overlayfs"},
			"native":    {Driver: "native"},
		},
	}
}

// defaultServices are the roster's services with their default options.
func defaultServices() map[string]Service {
	out := map[string]Service{}
	for _, e := range roster.Services {
		if e.PerSnapshotter {
			continue // configured per snapshotter: [services.snapshotter-<name>]
		}
		var opts map[string]any
		if len(e.Options) > 0 {
			opts = map[string]any{}
			for k, v := range e.Options {
				opts[k] = v
			}
		}
		out[e.Name] = Service{Options: opts}
	}
	return out
}

// Load reads path over the defaults. An empty path yields the defaults.
func Load(path string) (*Config, error) {
	c := Default()
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	for name, s := range c.Services {
		if s.GOGC < 0 {
			return nil, fmt.Errorf("config %s: [services.%s] gogc %d: want 0 or more", path, name, s.GOGC)
		}
	}
	if c.MaxProcs < 0 {
		return nil, fmt.Errorf("config %s: max_procs %d: want 0 or more", path, c.MaxProcs)
	}
	for name, s := range c.Services {
		if s.MaxProcs < 0 {
			return nil, fmt.Errorf("config %s: [services.%s] max_procs %d: want 0 or more", path, name, s.MaxProcs)
		}
		if _, _, err := s.Limits(); err != nil {
			return nil, fmt.Errorf("config %s: [services.%s] %w", path, name, err)
		}
	}
	if err := c.checkAddresses(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ExternalServices are the services an address can be given for (the
// roster says which), besides a Flotilla snapshotter's process
// (snapshotter-<name>).
func ExternalServices() []string {
	var out []string
	for _, e := range roster.Services {
		if e.External && !e.PerSnapshotter {
			out = append(out, e.Name)
		}
	}
	return out
}

// checkAddresses refuses what an address makes meaningless: flotillad
// neither runs the binary of an external service nor owns its cgroup, and a
// snapshotter is either a foreign proxy snapshotter ([snapshotters.<name>]
// address) or a Flotilla snapshotter process run elsewhere
// ([services.snapshotter-<name>] address), not both.
func (c *Config) checkAddresses() error {
	for name, s := range c.Services {
		if s.Address == "" {
			continue
		}
		where := fmt.Sprintf("[services.%s] address", name)
		known := false
		for _, n := range ExternalServices() {
			known = known || n == name
		}
		if sn, ok := strings.CutPrefix(name, "snapshotter-"); ok {
			sc, configured := c.Snapshotters[sn]
			switch {
			case !configured || sc.Disabled:
				return fmt.Errorf("%s: no snapshotter %q is configured", where, sn)
			case sc.Address != "":
				return fmt.Errorf("%s: [snapshotters.%s] already names a remote snapshotter's address; give one of the two", where, sn)
			}
			known = true
		}
		switch {
		case !known:
			return fmt.Errorf("%s: service %q cannot run outside flotillad (want one of %s or snapshotter-<name>)", where, name, strings.Join(ExternalServices(), ", "))
		case s.Disabled:
			return fmt.Errorf("%s: the service is also disabled", where)
		case s.Path != "" || s.MemoryLimit != "" || s.CPULimit != "":
			return fmt.Errorf("%s: path and limits are for a process flotillad starts", where)
		}
	}
	return nil
}

// ServiceProcs is the GOMAXPROCS of the named service's process; 0 leaves
// Go's default (every CPU). Unless configured, the roster says.
func (c *Config) ServiceProcs(name string) int {
	if n := c.Services[name].MaxProcs; n > 0 {
		return n
	}
	e, _ := roster.Lookup(name)
	return e.MaxProcs
}

// ServiceGOGC is the garbage collection target of the named service's
// process; 0 leaves Go's 100. Unless configured, the roster says.
func (c *Config) ServiceGOGC(name string) int {
	if n := c.Services[name].GOGC; n > 0 {
		return n
	}
	e, _ := roster.Lookup(name)
	return e.GOGC
}

// GatewayProcs is flotillad's own GOMAXPROCS.
func (c *Config) GatewayProcs() int {
	if c.MaxProcs > 0 {
		return c.MaxProcs
	}
	return 1
}

// External is the address of the named service when it runs outside
// flotillad, "" when flotillad runs it.
func (c *Config) External(name string) string {
	return c.Services[name].Address
}

// Address is the client socket path.
func (c *Config) Address() string {
	if c.GRPC.Address != "" {
		return c.GRPC.Address
	}
	return filepath.Join(c.State, "flotilla.sock")
}

// Marshal renders c as TOML.
func (c *Config) Marshal() ([]byte, error) {
	return toml.Marshal(c)
}
