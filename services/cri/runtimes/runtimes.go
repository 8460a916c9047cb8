// Package runtimes holds the CRI's runtime handlers, as containerd's: each
// names a runtime v2 shim type and the options its tasks are created
// with, checked at startup; a pod picks one by its RuntimeClass's handler.
// It asks each handler's shim, through the introspection service, what
// its OCI runtime supports (recursive read-only mounts, user namespaces)
// for Status and for pods that want a user namespace.
package runtimes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// Runtime handlers are containerd's: each names a runtime v2 shim type and
// the options its tasks are created with; a pod picks one by its
// RuntimeClass's handler (RunPodSandbox's runtime_handler, "" for the
// default), and its containers run on the same. The handler a pod was
// created with is on its record (store.Sandbox.RuntimeHandler); type and
// options are on each container record's runtime, which is what the tasks
// service creates the task from.

const (
	// DefaultName is the handler pods get unless they name one.
	DefaultName = "runc"
	// RuncType is containerd-shim-runc-v2, whose options are
	// containerd's runc options.
	RuncType = "io.containerd.runc.v2"
)

// Config is a runtime handler as configured.
type Config struct {
	// Type is the runtime v2 shim type (io.containerd.runc.v2, the
	// default) or a shim binary's path.
	Type string
	// Options are the shim's options by field name: containerd's runc
	// options (BinaryName, Root, SystemdCgroup...) for runc, else a TOML
	// body handed to the shim, as containerd does.
	Options map[string]any
	// PodAnnotations and ContainerAnnotations are patterns (path.Match)
	// of the pod's and the container's annotations passed into the OCI
	// spec, for the runtime to read.
	PodAnnotations       []string
	ContainerAnnotations []string
}

// Runtime is a configured handler, its options encoded for the tasks
// service.
type Runtime struct {
	name    string
	typ     string
	options *anypb.Any // nil: the shim's defaults
	podAnn  []string
	ctrAnn  []string
}

// Handlers are the configured handlers and what their runtimes
// support; build them with New.
type Handlers struct {
	def    string
	byName map[string]*Runtime

	// features of each handler, asked of its shim once it answers (the
	// tasks service may come up after this one).
	mu       sync.Mutex
	features map[string]*handlerSupport
}

// New checks the configured handlers, as containerd does at
// startup: the default must be one of them, and a runc handler's options
// must be runc options. A handler without a type runs on runc.
func New(def string, cfgs map[string]Config) (*Handlers, error) {
	if def == "" {
		def = DefaultName
	}
	if len(cfgs) == 0 {
		cfgs = map[string]Config{DefaultName: {Type: RuncType}}
	}
	h := &Handlers{def: def, byName: map[string]*Runtime{}, features: map[string]*handlerSupport{}}
	for name, c := range cfgs {
		if name == "" {
			return nil, fmt.Errorf("runtime handler with an empty name: %w", errdefs.ErrInvalidArgument)
		}
		if c.Type == "" {
			// As containerd: the daemon's default runtime.
			c.Type = RuncType
		}
		for _, p := range slices.Concat(c.PodAnnotations, c.ContainerAnnotations) {
			if _, err := path.Match(p, ""); err != nil {
				return nil, fmt.Errorf("runtime handler %q: annotation pattern %q: %v: %w", name, p, err, errdefs.ErrInvalidArgument)
			}
		}
		opts, err := runtimeOptions(c.Type, c.Options)
		if err != nil {
			return nil, fmt.Errorf("runtime handler %q: %w", name, err)
		}
		h.byName[name] = &Runtime{name: name, typ: c.Type, options: opts, podAnn: c.PodAnnotations, ctrAnn: c.ContainerAnnotations}
	}
	if _, ok := h.byName[def]; !ok {
		return nil, fmt.Errorf("default_runtime_name %q is not one of the runtimes (%v): %w", def, slices.Sorted(maps.Keys(h.byName)), errdefs.ErrInvalidArgument)
	}
	return h, nil
}

// runtimeOptions encodes a handler's options as containerd does: runc's
// by their field names into its options message (an unknown name is an
// error, not a setting silently lost), another shim's as a TOML body.
func runtimeOptions(typ string, opts map[string]any) (*anypb.Any, error) {
	if len(opts) == 0 {
		return nil, nil
	}
	// The options come through JSON, where every number is a float;
	// TOML would not put 1000.0 into a uint32.
	b, err := toml.Marshal(integral(opts))
	if err != nil {
		return nil, fmt.Errorf("options: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var msg proto.Message
	if typ == RuncType {
		var o runcoptions.Options
		dec := toml.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o); err != nil {
			var missing *toml.StrictMissingError
			if errors.As(err, &missing) {
				var keys []string
				for _, e := range missing.Errors {
					keys = append(keys, strings.Join(e.Key(), "."))
				}
				return nil, fmt.Errorf("runc options have no %s: %w", strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("runc options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		msg = &o
	} else {
		var o runtimeoptions.Options
		if err := toml.Unmarshal(b, &o); err != nil {
			return nil, fmt.Errorf("options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		if o.ConfigPath == "" {
			o.ConfigBody = b
		}
		msg = &o
	}
	return typeurl.MarshalAnyToProto(msg)
}

// integral turns whole floats back into integers, through nested tables.
func integral(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch v := v.(type) {
		case float64:
			if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
				out[k] = int64(v)
				continue
			}
		case map[string]any:
			out[k] = integral(v)
			continue
		}
		out[k] = v
	}
	return out
}

// Default is the handler of pods that name none.
func (h *Handlers) Default() string { return h.def }

// Get is the handler a pod runs on: the default for "". An unknown name
// is an error worded as containerd's.
func (h *Handlers) Get(name string) (*Runtime, error) {
	if name == "" {
		name = h.def
	}
	r, ok := h.byName[name]
	if !ok {
		return nil, fmt.Errorf("no runtime for %q is configured: %w", name, errdefs.ErrNotFound)
	}
	return r, nil
}

// WithRuntime names the runtime and its options on the container record;
// the tasks service creates the container's task with them.
func (r *Runtime) WithRuntime() containerd.NewContainerOpts {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		c.Runtime = containers.RuntimeInfo{Name: r.typ}
		if r.options != nil {
			c.Runtime.Options = r.options
		}
		return nil
	}
}

// WithPassthroughAnnotations puts into the spec the annotations the
// runtime asked for: the pod's matching its pod_annotations and, for a
// container, the container's matching container_annotations.
func (r *Runtime) WithPassthroughAnnotations(pod, ctr map[string]string) oci.SpecOpts {
	pass := passthrough(pod, r.podAnn)
	maps.Copy(pass, passthrough(ctr, r.ctrAnn))
	return oci.WithAnnotations(pass)
}

func passthrough(annotations map[string]string, patterns []string) map[string]string {
	out := map[string]string{}
	for k, v := range annotations {
		for _, p := range patterns {
			if ok, _ := path.Match(p, k); ok {
				out[k] = v
				break
			}
		}
	}
	return out
}

// List is every handler, and the default under "", with
// what its runtime supports, sorted by name as containerd's Status does.
// A runtime is asked once: its shim's `-info` runs the OCI runtime's
// `features`; one that cannot say yet (the tasks service not up) is listed
// without features and asked again next time.
func (h *Handlers) List(ctx context.Context, intro Introspection) []*runtime.RuntimeHandler {
	var out []*runtime.RuntimeHandler
	for _, name := range slices.Sorted(maps.Keys(h.byName)) {
		f := h.featuresOf(ctx, intro, h.byName[name])
		out = append(out, &runtime.RuntimeHandler{Name: name, Features: f})
		if name == h.def {
			out = append(out, &runtime.RuntimeHandler{Name: "", Features: f})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Introspection is the part of containerd's introspection service asked
// (the client's IntrospectionService).
type Introspection interface {
	PluginInfo(ctx context.Context, pluginType, id string, options any) (*introspectionapi.PluginInfoResponse, error)
}

func (h *Handlers) featuresOf(ctx context.Context, intro Introspection, r *Runtime) *runtime.RuntimeHandlerFeatures {
	info, err := h.support(ctx, intro, r)
	if err != nil {
		logging.G(ctx).Debug("runtime features unknown", "handler", r.name, "error", err)
		return nil
	}
	return info.features
}

// handlerSupport is what a handler's runtime can do, asked of it once.
type handlerSupport struct {
	features *runtime.RuntimeHandlerFeatures
	// userns says why the handler cannot run pods in user namespaces of
	// their own; nil when it can (features.UserNamespaces).
	userns error
}

// support is what the handler's runtime supports, asked of its shim the
// first time; an error when it cannot say (yet).
func (h *Handlers) support(ctx context.Context, intro Introspection, r *Runtime) (*handlerSupport, error) {
	h.mu.Lock()
	info, ok := h.features[r.name]
	h.mu.Unlock()
	if ok {
		return info, nil
	}
	ff, err := introspectFeatures(ctx, intro, r)
	if err != nil {
		return nil, err
	}
	info = &handlerSupport{features: handlerFeatures(ff, RecursiveReadOnlySupported())}
	if info.features.UserNamespaces {
		// The runtime would make the idmapped mounts; so must the kernel.
		if err := task.KernelIDMapSupported(); err != nil {
			info.features.UserNamespaces = false
			info.userns = fmt.Errorf("the kernel cannot make idmapped mounts: %v", err)
		}
	} else {
		why := r.describeRuntime(ff) + " " + usernsLack(ff)
		if r.typ == RuncType {
			why += "; runc 1.2 or later is needed"
		}
		info.userns = errors.New(why)
	}
	h.mu.Lock()
	h.features[r.name] = info
	h.mu.Unlock()
	return info, nil
}

// UserNamespaces says why a pod of handler r cannot have a user
// namespace of its own, as a FailedPrecondition naming the handler; nil
// when it can. intro reaches the runtime's shim.
func (h *Handlers) UserNamespaces(ctx context.Context, intro Introspection, r *Runtime) error {
	info, err := h.support(ctx, intro, r)
	if err != nil {
		return fmt.Errorf("user namespaces (mode POD) on runtime handler %q: its runtime cannot say what it supports: %v: %w",
			r.name, err, errdefs.ErrFailedPrecondition)
	}
	if info.userns != nil {
		return fmt.Errorf("user namespaces (mode POD) are not supported by runtime handler %q: %v: %w", r.name, info.userns, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// describeRuntime names a handler's OCI runtime for an error: the runc
// binary its options name and the version the runtime reports.
func (r *Runtime) describeRuntime(f *features.Features) string {
	name := r.typ
	if r.typ == RuncType {
		name = "runc"
		var o runcoptions.Options
		if r.options != nil && typeurl.UnmarshalTo(r.options, &o) == nil && o.BinaryName != "" {
			name = o.BinaryName
		}
	}
	if v := f.Annotations["org.opencontainers.runc.version"]; v != "" {
		name += " (version " + v + ")"
	}
	return name
}

// usernsLack is what a runtime without CRI user namespaces lacks.
func usernsLack(f *features.Features) string {
	l := f.Linux
	switch {
	case l == nil || !slices.Contains(l.Namespaces, "user"):
		return "has no user namespaces"
	case !idmapMounts(l):
		return "cannot make idmapped mounts"
	}
	return "cannot run them"
}

func idmapMounts(l *features.Linux) bool {
	return l.MountExtensions != nil && l.MountExtensions.IDMap != nil && l.MountExtensions.IDMap.Enabled != nil && *l.MountExtensions.IDMap.Enabled
}

// introspectFeatures asks the tasks service's runtime plugin, as
// containerd's CRI does, for what the handler's shim prints with the
// handler's options: the OCI runtime's features among it.
func introspectFeatures(ctx context.Context, intro Introspection, r *Runtime) (*features.Features, error) {
	resp, err := intro.PluginInfo(ctx, "io.containerd.runtime.v2", "task", &apitypes.RuntimeRequest{RuntimePath: r.typ, Options: r.options})
	if err != nil {
		return nil, fmt.Errorf("runtime plugin info: %w", errgrpc.ToNative(err))
	}
	if resp.GetExtra() == nil {
		return nil, fmt.Errorf("runtime plugin info has no runtime info")
	}
	var info apitypes.RuntimeInfo
	if err := typeurl.UnmarshalTo(resp.GetExtra(), &info); err != nil {
		return nil, fmt.Errorf("runtime info: %w", err)
	}
	if info.GetFeatures() == nil {
		return nil, fmt.Errorf("runtime %s reports no features", r.typ)
	}
	v, err := typeurl.UnmarshalAny(info.GetFeatures())
	if err != nil {
		return nil, fmt.Errorf("runtime features: %w", err)
	}
	f, ok := v.(*features.Features)
	if !ok {
		return nil, fmt.Errorf("runtime features are a %T", v)
	}
	return f, nil
}

// handlerFeatures is containerd's reading of an OCI runtime's features:
// recursive read-only mounts when the runtime takes "rro" and the kernel
// has mount_setattr; user namespaces when it can make them and idmap
// mounts.
func handlerFeatures(f *features.Features, kernelRRO bool) *runtime.RuntimeHandlerFeatures {
	out := &runtime.RuntimeHandlerFeatures{
		RecursiveReadOnlyMounts: kernelRRO && slices.Contains(f.MountOptions, "rro"),
	}
	if l := f.Linux; l != nil {
		out.UserNamespaces = slices.Contains(l.Namespaces, "user") && idmapMounts(l)
	}
	return out
}

// Describe is the handlers for Status's verbose config: type and options
// (as the shim gets them) of each.
func (h *Handlers) Describe() map[string]any {
	out := map[string]any{}
	for name, r := range h.byName {
		d := map[string]any{"runtimeType": r.typ, "podAnnotations": r.podAnn, "containerAnnotations": r.ctrAnn}
		if r.options != nil {
			if v, err := typeurl.UnmarshalAny(r.options); err == nil {
				d["options"] = v
			}
		}
		out[name] = d
	}
	return out
}

// RecursiveReadOnlySupported tells whether the kernel has mount_setattr
// (Linux 5.12), which runc's rro mount option needs.
var RecursiveReadOnlySupported = sync.OnceValue(func() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 12
})
