// Package config is flotillad's configuration file: a TOML document in the
// spirit of containerd's config.toml. `flotillad config default` prints the
// defaults this package defines.
package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// Config is the whole daemon configuration.
type Config struct {
	Version int    `toml:"version" comment:"Configuration format version."`
	Root    string `toml:"root" comment:"Persistent data: content blobs, meta.db, snapshots."`
	State   string `toml:"state" comment:"Runtime state: sockets, pid files; gone after a reboot."`

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
	RouteWait    Duration `toml:"route_wait" comment:"How long the gateway holds a call for a service that is restarting."`
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

// Service is one service process.
type Service struct {
	Disabled bool   `toml:"disabled,omitempty"`
	Path     string `toml:"path,omitempty" comment:"Binary; empty means flotilla-<name> beside flotillad."`
	// Options is handed to the service as it is; each service documents its own.
	Options map[string]any `toml:"options,omitempty"`
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
		Services: map[string]Service{
			"content": {},
			"metadata": {Options: map[string]any{
				// Collection runs this often, and this long after a
				// deletion (a burst of deletions costs one run).
				"gc_schedule":     "10m",
				"gc_delete_delay": "100ms",
			}},
			"tasks": {},
			"cri":   {},
		},
		Snapshotters: map[string]Snapshotter{
			"overlayfs": {Driver: "overlayfs"},
			"native":    {Driver: "native"},
		},
	}
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
	return c, nil
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
