// Package roster declares Flotilla's process graph once: every service, how
// its process is built, what must run before it, how it is reached and what
// it runs with by default. flotillad dispatches to a service by its entry
// (one executable, a process per service), the configuration takes its
// defaults from it, the supervisor's specs follow its requirements, and the
// build makes a flotilla-<name> link per entry. Adding a service is one
// directory under services/ and one entry here.
package roster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/content"
	"github.com/flotilla-project/flotilla/services/cri"
	"github.com/flotilla-project/flotilla/services/metadata"
	"github.com/flotilla-project/flotilla/services/mounts"
	"github.com/flotilla-project/flotilla/services/restart"
	"github.com/flotilla-project/flotilla/services/snapshotter"
	"github.com/flotilla-project/flotilla/services/tasks"
	"github.com/flotilla-project/flotilla/services/transfer"
)

// Entry is one service of the graph.
type Entry struct {
	// Name names the service: its process runs as flotilla-<Name>, serves
	// on <state>/<Name>.sock and is configured under [services.<Name>].
	Name string
	// Summary says in a line what the service is, for the configuration
	// flotillad prints.
	Summary string
	// Build constructs the service inside its process.
	Build service.Constructor
	// Requires are the services that must serve before this one starts;
	// Snapshotters stands for every snapshotter process.
	Requires []string
	// Reaches are the services it calls once serving, which need not
	// serve before it starts (the snapshotter that applies layers starts
	// before metadata, whose content store it writes). It is given their
	// sockets, as those of what it requires, and calls each on its own.
	Reaches []string
	// HostedBy names the service in whose process this one runs, beside
	// it, when flotillad runs both: for a small service a Go runtime of its
	// own would cost more memory (~8 MiB) than its work needs. It keeps its
	// own package, options, root and state directories, and runs as its own
	// process when run by hand (flotilla-<name>).
	HostedBy string
	// External says the service may run outside flotillad, which is then
	// given its address ([services.<name>] address) instead of starting it.
	External bool
	// PerSnapshotter makes one process of this service per configured
	// snapshotter, named <Name>-<snapshotter>.
	PerSnapshotter bool
	// MaxProcs is the process's default GOMAXPROCS; 0 is Go's (every CPU).
	// Services that relay and record get 1: the graph's processes are the
	// parallelism, and a relay spread over every CPU spends its time waking
	// threads on the others (measured on two cores: a routed call 20%
	// slower, a content read 25%). Those that compute in parallel (layer
	// apply, many containers) keep every CPU.
	MaxProcs int
	// GOGC is the process's default garbage collection target (Go's
	// GOGC); 0 leaves Go's 100.
	GOGC int
	// MemoryLimit is the Go runtime's default soft memory limit
	// (GOMEMLIMIT, "64MiB"); empty sets none.
	MemoryLimit string
	// Options returns a pointer to a new struct of the service's options
	// holding their defaults: [services.<name>.options], or for a
	// snapshotter [snapshotters.<name>.options]. The configuration decodes
	// into it (toml tags, a comment tag each), refusing names it has no
	// field for, and prints it; the service decodes the same names from
	// its environment (json tags, equal to the toml ones). A method
	// Aliases (handshake.Aliased) names deprecated names; a method
	// Validate() error checks values. Nil: the service has no options.
	Options func() any
}

// Snapshotters, in Requires, stands for every snapshotter process.
const Snapshotters = "snapshotters"

// Gateway is the name flotillad's own process goes by in the graph (its
// spans, its GOMAXPROCS); it is not a service of the roster.
const Gateway = "gateway"

// Services is the graph, in an order that starts each service after what it
// requires.
//
// Memory: each process is a Go runtime whose heap idles small; a lower
// GOGC keeps the idle heap of those that only relay and record close to
// their live data (a few MiB), at some CPU on busy paths. Those that move
// bytes in bulk (content, the snapshotters' layer apply) keep Go's default:
// their garbage is large buffers collected often anyway.
var Services = []Entry{
	{
		Name:    "content",
		Summary: "Content: image blobs and ingests on disk, by digest.",
		Build:   content.New,
		// The namespaced Read and Write streams are served here, next to
		// the files; metadata decides for them.
		Reaches:  []string{"metadata"},
		External: true,
		MaxProcs: 1,
	},
	{
		// One process per [snapshotters.<name>] Flotilla runs; the first
		// also applies layers (the Diff API), reading blobs from content
		// once metadata's namespaced store has said the caller may.
		Name:           "snapshotter",
		Summary:        "Snapshotter: one process per [snapshotters.<name>] Flotilla runs; configured as [services.snapshotter-<name>].",
		Build:          snapshotter.New,
		Requires:       []string{"content"},
		Reaches:        []string{"metadata"},
		External:       true,
		PerSnapshotter: true,
		GOGC:           50,
		Options:        func() any { return snapshotter.DefaultOptions() },
	},
	{
		Name:     "metadata",
		Summary:  "Metadata: meta.db (namespaces, images, containers, leases, labels) and garbage collection.",
		Build:    metadata.New,
		Requires: []string{"content", Snapshotters},
		External: true,
		MaxProcs: 1,
		GOGC:     50,
		Options:  func() any { return metadata.DefaultOptions() },
	},
	{
		Name:     "tasks",
		Summary:  "Tasks: the Tasks API; starts a shim per container and keeps in touch with it.",
		Build:    tasks.New,
		Requires: []string{"metadata"},
		External: true,
		GOGC:     50,
		Options:  func() any { return tasks.DefaultOptions() },
	},
	{
		Name:     "cri",
		Summary:  "CRI: the Kubernetes runtime and image services, for the kubelet and crictl.",
		Build:    cri.New,
		Requires: []string{"tasks"},
		Reaches:  []string{"metadata", "content", Snapshotters},
		External: true,
		GOGC:     50,
		Options:  func() any { return cri.DefaultOptions() },
	},
	{
		// Pulls, pushes, imports and exports (containerd's Transfer and
		// Streaming APIs) next to the stores: a pull writes blobs to
		// content and streams layers to the snapshotters as they
		// download.
		// Pulls and imports run in cri's process when flotillad runs
		// both: cri pulls too, and a Go runtime of its own would cost
		// ~9 MiB for a service that idles between transfers.
		Name:     "transfer",
		HostedBy: "cri",
		Summary:  "Transfer: pulls, pushes, imports and exports images (containerd's Transfer and Streaming APIs).",
		Build:    transfer.New,
		Requires: []string{"metadata", "content", Snapshotters},
		External: true,
		Options:  func() any { return transfer.DefaultOptions() },
	},
	{
		// containerd's mount manager and Mounts API; it mounts, so it
		// runs where the shims see its mounts.
		Name:     "mounts",
		HostedBy: "tasks",
		Reaches:  []string{"metadata"},
		Summary:  "Mounts: containerd's mount manager (activations of mounts for leases and references).",
		Build:    mounts.New,
		External: true,
		MaxProcs: 1,
		GOGC:     50,
		Options:  func() any { return mounts.DefaultOptions() },
	},
	{
		// containerd's restart monitor: a client of metadata and tasks
		// that restarts containers labelled containerd.io/restart.*.
		Name:     "restart",
		HostedBy: "tasks",
		Summary:  "Restart: containerd's restart monitor for containers labelled containerd.io/restart.*.",
		Build:    restart.New,
		Requires: []string{"tasks"},
		Reaches:  []string{"metadata", Snapshotters},
		External: true,
		MaxProcs: 1,
		GOGC:     50,
		Options:  func() any { return restart.DefaultOptions() },
	},
}

// Constructor builds the named service's process: its own service and
// those the roster hosts in it, each with the environment flotillad handed
// it (Env.Hosted; one not handed is disabled or runs elsewhere).
func Constructor(name string) (service.Constructor, bool) {
	host, ok := Lookup(name)
	if !ok {
		return nil, false
	}
	var guests []Entry
	for _, e := range Services {
		if e.HostedBy == host.Name {
			guests = append(guests, e)
		}
	}
	if len(guests) == 0 {
		return host.Build, true
	}
	return func(ctx context.Context, p *service.Process) (*service.Instance, error) {
		inst, err := host.Build(ctx, p)
		if err != nil {
			return nil, err
		}
		for _, g := range guests {
			env, ok := p.Env.Hosted[g.Name]
			if !ok {
				continue
			}
			for _, d := range []string{env.Root, env.State} {
				if d == "" {
					continue
				}
				if err := os.MkdirAll(d, 0o711); err != nil {
					return nil, errors.Join(fmt.Errorf("create %s: %w", d, err), closeInstance(ctx, inst))
				}
			}
			gi, err := g.Build(logging.With(ctx, "hosted", g.Name), &service.Process{Env: env})
			if err != nil {
				return nil, errors.Join(fmt.Errorf("start %s in %s's process: %w", g.Name, host.Name, err), closeInstance(ctx, inst))
			}
			inst = merge(inst, g.Name, gi)
		}
		return inst, nil
	}, true
}

// HostedPrefix marks the exports of a service process that describe a
// service hosted in it: hosted.<name>.type, hosted.<name>.<export>.
const HostedPrefix = "hosted."

// merge adds a hosted service's APIs and routes to its host's instance;
// the hosted one closes first.
func merge(host *service.Instance, name string, guest *service.Instance) *service.Instance {
	out := *host
	out.Routes = append(append([]string(nil), host.Routes...), guest.Routes...)
	if len(guest.MethodRoutes) > 0 {
		out.MethodRoutes = map[string]string{}
		for k, v := range host.MethodRoutes {
			out.MethodRoutes[k] = v
		}
		for k, v := range guest.MethodRoutes {
			out.MethodRoutes[k] = v
		}
	}
	out.Exports = map[string]string{}
	for k, v := range host.Exports {
		out.Exports[k] = v
	}
	// Introspection lists a hosted service as a plugin of its own, from
	// these (see the gateway's servicePlugins).
	for k, v := range guest.Exports {
		out.Exports[HostedPrefix+name+"."+k] = v
	}
	out.Exports[HostedPrefix+name+".type"] = guest.Type
	out.Register = func(srv grpc.ServiceRegistrar) {
		host.Register(srv)
		guest.Register(srv)
	}
	out.Close = func(ctx context.Context) error {
		return errors.Join(closeInstance(ctx, guest), closeInstance(ctx, host))
	}
	return &out
}

func closeInstance(ctx context.Context, inst *service.Instance) error {
	if inst.Close == nil {
		return nil
	}
	return inst.Close(ctx)
}

// Lookup finds the entry of a service or of one of its processes
// (snapshotter-overlayfs is a process of snapshotter).
func Lookup(name string) (Entry, bool) {
	for _, e := range Services {
		if e.Name == name {
			return e, true
		}
		if p, ok := strings.CutPrefix(name, e.Name+"-"); ok && e.PerSnapshotter && p != "" {
			return e, true
		}
	}
	return Entry{}, false
}

// Names lists the services in start order.
func Names() []string {
	out := make([]string, 0, len(Services))
	for _, e := range Services {
		out = append(out, e.Name)
	}
	return out
}

// ProcessName is the argv[0] a service's process runs under, which ps and
// the kernel's comm show.
func ProcessName(service string) string { return "flotilla-" + service }
