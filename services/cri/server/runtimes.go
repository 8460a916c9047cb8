package server

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
	// DefaultRuntimeName is the handler pods get unless they name one.
	DefaultRuntimeName = "runc"
	// RuncRuntimeType is containerd-shim-runc-v2, whose options are
	// containerd's runc options.
	RuncRuntimeType = "io.containerd.runc.v2"
)

// RuntimeConfig is a runtime handler as configured.
type RuntimeConfig struct {
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

// ociRuntime is a configured handler, its options encoded for the tasks
// service.
type ociRuntime struct {
	name    string
	typ     string
	options *anypb.Any // nil: the shim's defaults
	podAnn  []string
	ctrAnn  []string
}

// RuntimeHandlers are the configured handlers and what their runtimes
// support; build them with NewRuntimeHandlers.
type RuntimeHandlers struct {
	def    string
	byName map[string]*ociRuntime

	// features of each handler, asked of its shim once it answers (the
	// tasks service may come up after this one).
	mu       sync.Mutex
	features map[string]*handlerSupport
}

// NewRuntimeHandlers checks the configured handlers, as containerd does at
// startup: the default must be one of them, and a runc handler's options
// must be runc options. A handler without a type runs on runc.
func NewRuntimeHandlers(def string, cfgs map[string]RuntimeConfig) (*RuntimeHandlers, error) {
	if def == "" {
		def = DefaultRuntimeName
	}
	if len(cfgs) == 0 {
		cfgs = map[string]RuntimeConfig{DefaultRuntimeName: {Type: RuncRuntimeType}}
	}
	h := &RuntimeHandlers{def: def, byName: map[string]*ociRuntime{}, features: map[string]*handlerSupport{}}
	for name, c := range cfgs {
		if name == "" {
			return nil, fmt.Errorf("runtime handler with an empty name: %w", errdefs.ErrInvalidArgument)
		}
		if c.Type == "" {
			// As containerd: the daemon's default runtime.
			c.Type = RuncRuntimeType
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
		h.byName[name] = &ociRuntime{name: name, typ: c.Type, options: opts, podAnn: c.PodAnnotations, ctrAnn: c.ContainerAnnotations}
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
	if typ == RuncRuntimeType {
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

// get is the handler a pod runs on: the default for "". An unknown name
// is an error worded as containerd's.
func (h *RuntimeHandlers) get(name string) (*ociRuntime, error) {
	if name == "" {
		name = h.def
	}
	r, ok := h.byName[name]
	if !ok {
		return nil, fmt.Errorf("no runtime for %q is configured: %w", name, errdefs.ErrNotFound)
	}
	return r, nil
}

// runtimeFor is the runtime of a pod created with handler name.
func (s *Server) runtimeFor(name string) (*ociRuntime, error) {
	return s.cfg.Runtimes.get(name)
}

// withRuntime names the runtime and its options on the container record;
// the tasks service creates the container's task with them.
func (r *ociRuntime) withRuntime() containerd.NewContainerOpts {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		c.Runtime = containers.RuntimeInfo{Name: r.typ}
		if r.options != nil {
			c.Runtime.Options = r.options
		}
		return nil
	}
}

// withPassthroughAnnotations puts into the spec the annotations the
// runtime asked for: the pod's matching its pod_annotations and, for a
// container, the container's matching container_annotations.
func (r *ociRuntime) withPassthroughAnnotations(pod, ctr map[string]string) oci.SpecOpts {
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

// handlerFeatures lists every handler, and the default under "", with
// what its runtime supports, sorted by name as containerd's Status does.
// A runtime is asked once: its shim's `-info` runs the OCI runtime's
// `features`; one that cannot say yet (the tasks service not up) is listed
// without features and asked again next time.
func (s *Server) handlerFeatures(ctx context.Context) []*runtime.RuntimeHandler {
	h := s.cfg.Runtimes
	var out []*runtime.RuntimeHandler
	for _, name := range slices.Sorted(maps.Keys(h.byName)) {
		f := h.featuresOf(ctx, s.client.IntrospectionService(), h.byName[name])
		out = append(out, &runtime.RuntimeHandler{Name: name, Features: f})
		if name == h.def {
			out = append(out, &runtime.RuntimeHandler{Name: "", Features: f})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// pluginInfo is the part of containerd's introspection service asked.
type pluginInfo interface {
	PluginInfo(ctx context.Context, pluginType, id string, options any) (*introspectionapi.PluginInfoResponse, error)
}

func (h *RuntimeHandlers) featuresOf(ctx context.Context, intro pluginInfo, r *ociRuntime) *runtime.RuntimeHandlerFeatures {
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
func (h *RuntimeHandlers) support(ctx context.Context, intro pluginInfo, r *ociRuntime) (*handlerSupport, error) {
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
	info = &handlerSupport{features: handlerFeatures(ff, recursiveReadOnlySupported())}
	if info.features.UserNamespaces {
		// The runtime would make the idmapped mounts; so must the kernel.
		if err := task.KernelIDMapSupported(); err != nil {
			info.features.UserNamespaces = false
			info.userns = fmt.Errorf("the kernel cannot make idmapped mounts: %v", err)
		}
	} else {
		why := r.describeRuntime(ff) + " " + usernsLack(ff)
		if r.typ == RuncRuntimeType {
			why += "; runc 1.2 or later is needed"
		}
		info.userns = errors.New(why)
	}
	h.mu.Lock()
	h.features[r.name] = info
	h.mu.Unlock()
	return info, nil
}

// userNamespacesOn says why a pod of handler r cannot have a user
// namespace of its own, as a FailedPrecondition naming the handler; nil
// when it can.
func (s *Server) userNamespacesOn(ctx context.Context, r *ociRuntime) error {
	return s.cfg.Runtimes.userNamespaces(ctx, s.client.IntrospectionService(), r)
}

func (h *RuntimeHandlers) userNamespaces(ctx context.Context, intro pluginInfo, r *ociRuntime) error {
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
func (r *ociRuntime) describeRuntime(f *features.Features) string {
	name := r.typ
	if r.typ == RuncRuntimeType {
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
func introspectFeatures(ctx context.Context, intro pluginInfo, r *ociRuntime) (*features.Features, error) {
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

// describe is the handlers for Status's verbose config: type and options
// (as the shim gets them) of each.
func (h *RuntimeHandlers) describe() map[string]any {
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
