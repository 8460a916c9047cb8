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
)

// Entry is one service of the graph.
type Entry struct {
	// Name names the service: its process runs as flotilla-<Name>, serves
	// on <state>/<Name>.sock and is configured under [services.<Name>].
	Name string
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
	// Options are the service's default [services.<name>.options].
	Options map[string]any
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
		Name:     "content",
		Build:    content.New,
		External: true,
		MaxProcs: 1,
	},
	{
		// One process per [snapshotters.<name>] Flotilla runs; the first
		// also applies layers (the Diff API), reading blobs from content
		// once metadata's namespaced store has said the caller may.
		Name:           "snapshotter",
		Build:          snapshotter.New,
		Requires:       []string{"content"},
		Reaches:        []string{"metadata"},
		External:       true,
		PerSnapshotter: true,
		GOGC:           50,
	},
	{
		Name:     "metadata",
		Build:    metadata.New,
		Requires: []string{"content", Snapshotters},
		External: true,
		MaxProcs: 1,
		GOGC:     50,
		Options: map[string]any{
			// Collection runs this often, and this long after a
			// deletion (a burst of deletions costs one run).
			"gc_schedule":     "10m",
			"gc_delete_delay": "100ms",
		},
	},
	{
		Name:     "tasks",
		Build:    tasks.New,
		Requires: []string{"metadata"},
		External: true,
		GOGC:     50,
	},
	{
		Name:     "cri",
		Build:    cri.New,
		Requires: []string{"tasks"},
		Reaches:  []string{"metadata", "content", Snapshotters},
		External: true,
		GOGC:     50,
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
