package spec

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Container Device Interface: a container asks for devices by fully
// qualified name (vendor.com/class=name) in its config's CDIDevices, or,
// the older way, in annotations under cdi.k8s.io/; the spec files in the
// configured directories say what each device adds to the OCI spec
// (device nodes, mounts, environment, hooks), and the CDI library edits
// the spec accordingly, as in containerd.

// CDI is the CDI cache of the configured spec directories, made on
// first use. It is refreshed by hand before each resolution rather than
// watched: devices are asked for at container creation only, and a scan
// of a few small files costs less than an inotify watcher kept for the
// process's lifetime.
type CDI struct {
	enabled bool
	dirs    []string

	once  sync.Once
	cache *cdi.Cache
}

// refreshed is the cache, rescanned now. Spec files that do not load are
// reported and skipped: a vendor's bad file must not keep another's
// devices from being injected (a device of the bad file is then unknown).
// NewCDI is the registry of the spec files in dirs; with enabled false,
// every device asked for is refused.
func NewCDI(enabled bool, dirs []string) *CDI {
	return &CDI{enabled: enabled, dirs: dirs}
}

func (r *CDI) refreshed(ctx context.Context) *cdi.Cache {
	r.once.Do(func() {
		// NewCache's error is always nil (kept for compatibility).
		r.cache, _ = cdi.NewCache(cdi.WithSpecDirs(r.dirs...), cdi.WithAutoRefresh(false))
	})
	if err := r.cache.Refresh(); err != nil {
		logging.G(ctx).Warn("CDI spec files skipped", "dirs", r.dirs, "error", err)
	}
	return r.cache
}

// cdiDevices are the CDI devices a container asks for, each once: its
// config's CDIDevices first, then its cdi.k8s.io/ annotations (by key, so
// the order does not depend on a map's). A name that is not fully
// qualified is an InvalidArgument.
func cdiDevices(cfg *runtime.ContainerConfig) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	for _, d := range cfg.GetCDIDevices() {
		if _, _, _, err := parser.ParseQualifiedName(d.GetName()); err != nil {
			return nil, fmt.Errorf("CDI device %q: %v: %w", d.GetName(), err, errdefs.ErrInvalidArgument)
		}
		add(d.GetName())
	}
	ann := cfg.GetAnnotations()
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		if !strings.HasPrefix(k, cdi.AnnotationPrefix) {
			continue
		}
		_, devs, err := cdi.ParseAnnotations(map[string]string{k: ann[k]})
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %v: %w", k, err, errdefs.ErrInvalidArgument)
		}
		for _, d := range devs {
			add(d)
		}
	}
	return out, nil
}

// Devices resolves the CDI devices the container asks for and returns the
// option injecting them into its spec; nil when it asks for none. Every
// device must resolve: one that no spec file defines is NotFound, named,
// before anything is created. With CDI disabled, asking for a device is a
// FailedPrecondition rather than a request quietly ignored.
func (r *CDI) Devices(ctx context.Context, cfg *runtime.ContainerConfig) (oci.SpecOpts, error) {
	devices, err := cdiDevices(cfg)
	if err != nil || len(devices) == 0 {
		return nil, err
	}
	if !r.enabled {
		return nil, fmt.Errorf("CDI devices %s asked for, but CDI is disabled (enable_cdi = false): %w", strings.Join(devices, ", "), errdefs.ErrFailedPrecondition)
	}
	cache := r.refreshed(ctx)
	var unknown []string
	for _, d := range devices {
		if cache.GetDevice(d) == nil {
			unknown = append(unknown, d)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("CDI devices %s: not defined by any spec in %s: %w", strings.Join(unknown, ", "), strings.Join(r.dirs, ", "), errdefs.ErrNotFound)
	}
	logging.G(ctx).Debug("CDI devices", "devices", devices)
	inject := r.Injector(ctx)
	return func(_ context.Context, _ oci.Client, _ *containers.Container, spec *oci.Spec) error {
		// Given last: the edits (environment, mounts, hooks) must not be
		// reset by an option after them.
		return inject(spec, devices)
	}, nil
}

// Injector injects CDI devices into a spec, for a container's own request
// and for an NRI plugin's adjustment alike: CDI disabled or a device no
// spec defines is an error, never a device dropped.
func (r *CDI) Injector(ctx context.Context) func(*oci.Spec, []string) error {
	return func(spec *oci.Spec, devices []string) error {
		if !r.enabled {
			return fmt.Errorf("CDI devices %s asked for, but CDI is disabled (enable_cdi = false): %w", strings.Join(devices, ", "), errdefs.ErrFailedPrecondition)
		}
		if unresolved, err := r.refreshed(ctx).InjectDevices(spec, devices...); err != nil {
			if len(unresolved) > 0 {
				return fmt.Errorf("CDI devices %s: %v: %w", strings.Join(unresolved, ", "), err, errdefs.ErrNotFound)
			}
			return fmt.Errorf("inject CDI devices %s: %w", strings.Join(devices, ", "), err)
		}
		return nil
	}
}
