// Package config is flotillad's configuration file: a TOML document in the
// spirit of containerd's config.toml. `flotillad config default` prints the
// defaults this package defines, every setting with a comment; Load refuses
// a name it does not know anywhere in the file, service options included,
// naming it and its line (see strict.go).
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-project/flotilla/pkg/roster"
)

// DefaultPath is where flotillad looks for its configuration. Missing, it
// runs on the defaults, as containerd does without /etc/containerd/config.toml.
const DefaultPath = "/etc/flotilla/config.toml"

// FormatVersion is the configuration format this package reads.
const FormatVersion = 1

// Config is the whole daemon configuration.
type Config struct {
	Version int    `toml:"version" comment:"Configuration format version: 1."`
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
	Services map[string]Service `toml:"services" comment:"Each service's process, by name (a snapshotter's is snapshotter-<name>); its options under [services.<name>.options]."`

	// Snapshotters are the snapshotters clients name (ctr --snapshotter).
	// Each is a flotilla-snapshotter process of its own, or, with an
	// address, a process Flotilla does not start: a remote snapshotter
	// serving containerd's Snapshots API (containerd's proxy_plugins).
	Snapshotters map[string]Snapshotter `toml:"snapshotters" comment:"Snapshotters by the name clients give (ctr --snapshotter): a process Flotilla runs each, or a remote one at an address."`

	// Source is the file the configuration was read from; empty for the
	// defaults alone.
	Source string `toml:"-"`
	// Warnings are what Load found worth telling about a file it accepted
	// (deprecated names, with their lines), for flotillad to log.
	Warnings []string `toml:"-"`
}

// Snapshotter is one snapshotter by name.
type Snapshotter struct {
	Disabled bool `toml:"disabled" comment:"Leave this snapshotter out."`
	// Driver is what a Flotilla snapshotter process runs: overlayfs or native.
	Driver string `toml:"driver" comment:"overlayfs or native; ignored with an address."`
	// Address is the socket of a remote snapshotter.
	Address string `toml:"address" comment:"Socket of a remote snapshotter Flotilla does not start (containerd's proxy_plugins); empty: Flotilla runs it."`
	// Options are the snapshotter process's (see roster's snapshotter
	// entry): after Load, a pointer to its options struct.
	Options any `toml:"options,omitempty" comment:"Options of the snapshotter's process."`
}

// DefaultSnapshotter is the snapshotter containerd's clients use when they
// name none.
const DefaultSnapshotter = "overlayfs"

// GRPC is the client-facing socket.
type GRPC struct {
	Address string `toml:"address" comment:"Client socket; empty means <state>/flotilla.sock."`
	UID     int    `toml:"uid" comment:"Owner of the client socket (with gid, the socket is then 0660)."`
	GID     int    `toml:"gid" comment:"Group of the client socket."`
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
	Disabled bool   `toml:"disabled" comment:"Leave this service out (what requires it cannot start)."`
	Path     string `toml:"path" comment:"Binary; empty means flotillad itself, run as flotilla-<name>."`
	// Address is the socket of the service run by someone else (a
	// container of its own, say): flotillad starts no process for it,
	// waits for it to answer there at startup, routes its calls there and
	// hands that socket to the services that depend on it.
	Address string `toml:"address" comment:"Socket of this service run outside flotillad (flotilla-<name> --socket ...); flotillad then starts no process for it."`
	// MaxProcs is the service's GOMAXPROCS. The processes of the graph
	// are the parallelism: a relay with its own runtime spread over every
	// CPU spends its time waking threads on other CPUs (measured on two
	// cores: a routed call 20% slower, a content read 25%). Those that
	// compute in parallel (layer apply, many containers) keep every CPU.
	MaxProcs int `toml:"max_procs" comment:"Go's GOMAXPROCS for the process; 0: the graph's default (1 for content and metadata, every CPU for the others)."`
	// GOGC is the Go runtime's garbage collection target (pkg/roster
	// says why the defaults differ).
	GOGC int `toml:"gogc" comment:"Go's GOGC for the process; 0: the graph's default (Go's 100 for content, 50 for the others, which idle most of the time)."`
	// MemoryLimit and CPULimit bound the service's cgroup (see Limits).
	MemoryLimit string `toml:"memory_limit" comment:"Most memory the process may use (\"256MiB\"); past it the kernel kills it and it is restarted. Empty: no limit."`
	CPULimit    string `toml:"cpu_limit" comment:"CPUs the process may use (\"0.5\" is half of one). Empty: no limit."`
	// Options are the service's own (roster.Entry.Options): after Load, a
	// pointer to its options struct; nil for a service without options.
	Options any `toml:"options,omitempty" comment:"The service's own options."`
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

// Default is the configuration flotillad runs with when given no file:
// every setting, each service's options included, at its default.
func Default() *Config {
	c := &Config{
		Version: FormatVersion,
		Root:    "/var/lib/flotilla",
		State:   "/run/flotilla",
		Debug:   Debug{Level: "info", Format: "text"},
		Timeouts: Timeouts{
			ServiceStart: Duration{20 * time.Second},
			RouteWait:    Duration{10 * time.Second},
			Call:         Duration{30 * time.Second},
		},
		Services: map[string]Service{},
		Snapshotters: map[string]Snapshotter{
			"overlayfs": {Driver: "overlayfs", Options: snapshotterOptions()},
			"native":    {Driver: "native"},
		},
	}
	for _, e := range roster.Services {
		if e.PerSnapshotter {
			continue // configured per snapshotter: [services.snapshotter-<name>]
		}
		// max_procs and gogc stay 0, the graph's defaults, so that a
		// file written from these follows the roster where it changes.
		var s Service
		if e.Options != nil {
			s.Options = e.Options()
		}
		c.Services[e.Name] = s
	}
	return c
}

// snapshotterOptions are a snapshotter's default options.
func snapshotterOptions() any {
	for _, e := range roster.Services {
		if e.PerSnapshotter && e.Options != nil {
			return e.Options()
		}
	}
	return nil
}

// Load reads the configuration at path over the defaults. An empty path
// yields the defaults, and so does DefaultPath when no file is there: a
// daemon installed without a configuration runs. Any other file must
// exist: a mistyped --config should not start a daemon on the defaults.
func Load(path string) (*Config, error) {
	return load(path, DefaultPath)
}

func load(path, defaultPath string) (*Config, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && filepath.Clean(path) == defaultPath {
		return Default(), nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("config file %s does not exist (`flotillad config default > %s` writes one; only a missing %s means the defaults)", path, path, defaultPath)
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, prefixLines("config "+path, err)
	}
	c.Source = path
	for i, w := range c.Warnings {
		c.Warnings[i] = "config " + path + w
	}
	return c, nil
}

// Parse reads a configuration document over the defaults. Errors and
// warnings start with ":<line>: " where the document has a line for them.
func Parse(doc []byte) (*Config, error) {
	if err := checkFormat(doc); err != nil {
		return nil, err
	}
	c := Default()
	// The options are decoded twice: as tables first, with the rest of
	// the document, then each into its service's own struct (strict.go).
	defaults := map[string]any{}
	for name, s := range c.Services {
		defaults["services."+name] = s.Options
		s.Options = nil
		c.Services[name] = s
	}
	for name, s := range c.Snapshotters {
		defaults["snapshotters."+name] = s.Options
		s.Options = nil
		c.Snapshotters[name] = s
	}
	errs, err := decodeStrict(doc, c)
	if err != nil {
		return nil, err
	}
	if c.MaxProcs < 0 {
		errs = append(errs, fmt.Errorf("%s: max_procs %d: want 0 or more", lineOf(doc, "max_procs"), c.MaxProcs))
	}
	if err := c.checkAddresses(); err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf(": %w", err))...)
	}
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if err := c.checkService(doc, name, s); err != nil {
			errs = append(errs, err)
			continue
		}
		opts, err := c.serviceOptions(doc, name, s.Options, defaults["services."+name])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.Options = opts
		c.Services[name] = s
	}
	for _, name := range sortedKeys(c.Snapshotters) {
		sc := c.Snapshotters[name]
		opts, err := c.snapshotterOptions(doc, name, sc, defaults["snapshotters."+name])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sc.Options = opts
		c.Snapshotters[name] = sc
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// checkService checks what a service's table says besides its options.
func (c *Config) checkService(doc []byte, name string, s Service) error {
	at := lineOf(doc, "services", name)
	if _, ok := c.serviceEntry(name); !ok {
		var names []string
		for _, e := range roster.Services {
			if e.PerSnapshotter {
				names = append(names, e.Name+"-<name> (a snapshotter's process)")
			} else {
				names = append(names, e.Name)
			}
		}
		return fmt.Errorf("%s: unknown service %q in [services]%s (the services: %s)",
			at, name, didYouMean(name, c.serviceNames()), strings.Join(names, ", "))
	}
	if s.GOGC < 0 {
		return fmt.Errorf("%s: [services.%s] gogc %d: want 0 or more", at, name, s.GOGC)
	}
	if s.MaxProcs < 0 {
		return fmt.Errorf("%s: [services.%s] max_procs %d: want 0 or more", at, name, s.MaxProcs)
	}
	if _, _, err := s.Limits(); err != nil {
		return fmt.Errorf("%s: [services.%s] %w", at, name, err)
	}
	return nil
}

// serviceEntry is the roster's entry of a [services.<name>] table: a
// service, or the process of a configured snapshotter.
func (c *Config) serviceEntry(name string) (roster.Entry, bool) {
	e, ok := roster.Lookup(name)
	if !ok {
		return e, false
	}
	if !e.PerSnapshotter {
		return e, true
	}
	sn, _ := strings.CutPrefix(name, e.Name+"-")
	_, configured := c.Snapshotters[sn]
	return e, configured
}

// serviceNames are the names a [services.<name>] table may have.
func (c *Config) serviceNames() []string {
	var out []string
	for _, e := range roster.Services {
		if !e.PerSnapshotter {
			out = append(out, e.Name)
			continue
		}
		for sn := range c.Snapshotters {
			out = append(out, e.Name+"-"+sn)
		}
	}
	return out
}

// serviceOptions decodes the [services.<name>.options] table (raw, as
// the first pass decoded it) over the service's defaults.
func (c *Config) serviceOptions(doc []byte, name string, raw, def any) (any, error) {
	e, _ := c.serviceEntry(name)
	if e.PerSnapshotter {
		if raw != nil {
			sn, _ := strings.CutPrefix(name, e.Name+"-")
			return nil, fmt.Errorf("%s: [services.%s.options]: a snapshotter's options go under [snapshotters.%s.options]", lineOf(doc, "services", name, "options"), name, sn)
		}
		return nil, nil
	}
	if def == nil && e.Options != nil {
		def = e.Options()
	}
	if raw == nil {
		return def, nil
	}
	if def == nil {
		return nil, fmt.Errorf("%s: [services.%s.options]: service %s has no options", lineOf(doc, "services", name, "options"), name, name)
	}
	return c.decodeOptions(doc, []string{"services", name, "options"}, raw, def)
}

// snapshotterOptions checks a [snapshotters.<name>] table and decodes its
// options over the defaults.
func (c *Config) snapshotterOptions(doc []byte, name string, sc Snapshotter, def any) (any, error) {
	at := lineOf(doc, "snapshotters", name)
	if sc.Address != "" {
		if sc.Options != nil {
			return nil, fmt.Errorf("%s: [snapshotters.%s.options]: options are for a snapshotter Flotilla runs, not a remote one at an address", at, name)
		}
		return nil, nil
	}
	switch sc.Driver {
	case "", "overlayfs", "native":
	default:
		return nil, fmt.Errorf("%s: [snapshotters.%s] driver %q: want overlayfs or native (or an address for a remote snapshotter)", at, name, sc.Driver)
	}
	if def == nil {
		def = snapshotterOptions()
	}
	if sc.Options == nil {
		if sc.Driver == "native" {
			return nil, nil // nothing to say of it
		}
		return def, nil
	}
	return c.decodeOptions(doc, []string{"snapshotters", name, "options"}, sc.Options, def)
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

// Marshal renders c as TOML, every setting with its comment and each
// service's table with a line saying what the service is.
func (c *Config) Marshal() ([]byte, error) {
	b, err := toml.Marshal(c)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "[services."); ok && strings.HasSuffix(name, "]") && !strings.Contains(name, ".") {
			name = strings.TrimSuffix(name, "]")
			if e, ok := roster.Lookup(name); ok && e.Summary != "" {
				if e.PerSnapshotter {
					out = append(out, "# The process of snapshotter "+strings.TrimPrefix(name, e.Name+"-")+".")
				} else {
					out = append(out, "# "+e.Summary)
				}
			}
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n")), nil
}

// DefaultFile is what `flotillad config default` prints, and
// deploy/config.toml holds: every setting at its default, commented.
func DefaultFile() ([]byte, error) {
	b, err := Default().Marshal()
	if err != nil {
		return nil, err
	}
	head := "# Flotilla's configuration with every setting at its default (`flotillad config default`).\n" +
		"# flotillad reads " + DefaultPath + " unless given --config; without that file it runs on these.\n"
	return append([]byte(head), b...), nil
}

// Effective is c with what its zero values stand for written out: each
// process's max_procs and gogc as the graph has them, the client socket's
// path. It is what `flotillad config dump` prints.
func (c *Config) Effective() *Config {
	out := *c
	out.MaxProcs = c.GatewayProcs()
	out.GRPC.Address = c.Address()
	out.Services = make(map[string]Service, len(c.Services))
	for name, s := range c.Services {
		s.MaxProcs, s.GOGC = c.ServiceProcs(name), c.ServiceGOGC(name)
		out.Services[name] = s
	}
	return &out
}

// OptionsMap renders a service's options (a pointer to its options
// struct) as the map a service process is handed (handshake.Env).
func OptionsMap(opts any) (map[string]any, error) {
	if opts == nil {
		return nil, nil
	}
	b, err := json.Marshal(opts)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return m, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
