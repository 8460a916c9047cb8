// Package roster declares Flotilla's process graph once: every service, how
// its process is built, what must run before it, how it is reached and what
// it runs with by default. flotillad dispatches to a service by its entry
// (one executable, a process per service), the configuration takes its
// defaults from it, the supervisor's specs follow its requirements, and the
// build makes a flotilla-<name> link per entry. Adding a service is one
// directory under services/ and one entry here.
package roster

import (
	"strings"

	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/content"
	"github.com/flotilla-project/flotilla/services/cri"
	"github.com/flotilla-project/flotilla/services/metadata"
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
	// Calls are services this one reaches without waiting for them at
	// start (they may require it): it is given their sockets all the same.
	Calls []string
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
		Calls:    []string{"metadata"},
		External: true,
		MaxProcs: 1,
	},
	{
		// One process per [snapshotters.<name>] Flotilla runs; the first
		// also applies layers (the Diff API), reading blobs from content.
		Name:           "snapshotter",
		Summary:        "Snapshotter: one process per [snapshotters.<name>] Flotilla runs; configured as [services.snapshotter-<name>].",
		Build:          snapshotter.New,
		Requires:       []string{"content"},
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
		// Pulls, pushes, imports and exports (containerd's Transfer and
		// Streaming APIs) next to the stores: a pull writes blobs to
		// content and streams layers to the snapshotters as they
		// download.
		Name:     "transfer",
		Summary:  "Transfer: pulls, pushes, imports and exports images (containerd's Transfer and Streaming APIs).",
		Build:    transfer.New,
		Requires: []string{"metadata", "content", Snapshotters},
		External: true,
		Options:  func() any { return transfer.DefaultOptions() },
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
		External: true,
		GOGC:     50,
		Options:  func() any { return cri.DefaultOptions() },
	},
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
