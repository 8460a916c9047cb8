package rpc

import (
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Whether a call may be made again when its callee went away under it — a
// restart — depends on what the method does, which its descriptor says
// when its .proto sets idempotency_level. containerd's and the CRI's do
// not, so what they do is written down here, checked against their
// descriptors by a test.

// Level is what making a method's call twice does, in the terms of
// protobuf's MethodOptions.idempotency_level.
type Level = descriptorpb.MethodOptions_IdempotencyLevel

const (
	// Unknown: the call may change something; it is made at most once.
	Unknown = descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN
	// NoSideEffects: the call only reads.
	NoSideEffects = descriptorpb.MethodOptions_NO_SIDE_EFFECTS
	// Idempotent: making the call twice leaves what making it once does.
	Idempotent = descriptorpb.MethodOptions_IDEMPOTENT
)

// knownLevels are the methods of containerd's and the CRI's APIs that may
// be made again, by full method name; a method not listed is made once.
//
// A subscription (Events/Subscribe, the CRI's GetContainerEvents) reads
// but is not listed: made again, it would quietly miss what happened in
// between, which its caller must hear about. Deletes are not listed
// either: the second answers NotFound for what the first did.
var knownLevels = map[string]Level{
	"/containerd.services.containers.v1.Containers/Get":        NoSideEffects,
	"/containerd.services.containers.v1.Containers/List":       NoSideEffects,
	"/containerd.services.containers.v1.Containers/ListStream": NoSideEffects,
	"/containerd.services.containers.v1.Containers/Update":     Idempotent,

	"/containerd.services.content.v1.Content/Info":         NoSideEffects,
	"/containerd.services.content.v1.Content/List":         NoSideEffects,
	"/containerd.services.content.v1.Content/Read":         NoSideEffects,
	"/containerd.services.content.v1.Content/Status":       NoSideEffects,
	"/containerd.services.content.v1.Content/ListStatuses": NoSideEffects,
	"/containerd.services.content.v1.Content/Update":       Idempotent,

	"/containerd.services.images.v1.Images/Get":    NoSideEffects,
	"/containerd.services.images.v1.Images/List":   NoSideEffects,
	"/containerd.services.images.v1.Images/Update": Idempotent,

	"/containerd.services.introspection.v1.Introspection/Plugins":    NoSideEffects,
	"/containerd.services.introspection.v1.Introspection/Server":     NoSideEffects,
	"/containerd.services.introspection.v1.Introspection/PluginInfo": NoSideEffects,

	"/containerd.services.leases.v1.Leases/List":           NoSideEffects,
	"/containerd.services.leases.v1.Leases/ListResources":  NoSideEffects,
	"/containerd.services.leases.v1.Leases/AddResource":    Idempotent,
	"/containerd.services.leases.v1.Leases/DeleteResource": Idempotent,

	"/containerd.services.mounts.v1.Mounts/Info":   NoSideEffects,
	"/containerd.services.mounts.v1.Mounts/List":   NoSideEffects,
	"/containerd.services.mounts.v1.Mounts/Update": Idempotent,

	"/containerd.services.namespaces.v1.Namespaces/Get":    NoSideEffects,
	"/containerd.services.namespaces.v1.Namespaces/List":   NoSideEffects,
	"/containerd.services.namespaces.v1.Namespaces/Update": Idempotent,

	"/containerd.services.sandbox.v1.Store/Get":           NoSideEffects,
	"/containerd.services.sandbox.v1.Store/List":          NoSideEffects,
	"/containerd.services.sandbox.v1.Store/Update":        Idempotent,
	"/containerd.services.sandbox.v1.Controller/Platform": NoSideEffects,
	"/containerd.services.sandbox.v1.Controller/Status":   NoSideEffects,
	"/containerd.services.sandbox.v1.Controller/Metrics":  NoSideEffects,
	"/containerd.services.sandbox.v1.Controller/Wait":     NoSideEffects,

	"/containerd.services.snapshots.v1.Snapshots/Mounts":  NoSideEffects,
	"/containerd.services.snapshots.v1.Snapshots/Stat":    NoSideEffects,
	"/containerd.services.snapshots.v1.Snapshots/List":    NoSideEffects,
	"/containerd.services.snapshots.v1.Snapshots/Usage":   NoSideEffects,
	"/containerd.services.snapshots.v1.Snapshots/Update":  Idempotent,
	"/containerd.services.snapshots.v1.Snapshots/Cleanup": Idempotent,

	"/containerd.services.tasks.v1.Tasks/Get":       NoSideEffects,
	"/containerd.services.tasks.v1.Tasks/List":      NoSideEffects,
	"/containerd.services.tasks.v1.Tasks/ListPids":  NoSideEffects,
	"/containerd.services.tasks.v1.Tasks/Metrics":   NoSideEffects,
	"/containerd.services.tasks.v1.Tasks/Wait":      NoSideEffects,
	"/containerd.services.tasks.v1.Tasks/Update":    Idempotent,
	"/containerd.services.tasks.v1.Tasks/ResizePty": Idempotent,

	"/containerd.services.version.v1.Version/Version": NoSideEffects,

	"/runtime.v1.RuntimeService/Version":                 NoSideEffects,
	"/runtime.v1.RuntimeService/Status":                  NoSideEffects,
	"/runtime.v1.RuntimeService/RuntimeConfig":           NoSideEffects,
	"/runtime.v1.RuntimeService/PodSandboxStatus":        NoSideEffects,
	"/runtime.v1.RuntimeService/ListPodSandbox":          NoSideEffects,
	"/runtime.v1.RuntimeService/StreamPodSandboxes":      NoSideEffects,
	"/runtime.v1.RuntimeService/ContainerStatus":         NoSideEffects,
	"/runtime.v1.RuntimeService/ListContainers":          NoSideEffects,
	"/runtime.v1.RuntimeService/StreamContainers":        NoSideEffects,
	"/runtime.v1.RuntimeService/ContainerStats":          NoSideEffects,
	"/runtime.v1.RuntimeService/ListContainerStats":      NoSideEffects,
	"/runtime.v1.RuntimeService/StreamContainerStats":    NoSideEffects,
	"/runtime.v1.RuntimeService/PodSandboxStats":         NoSideEffects,
	"/runtime.v1.RuntimeService/ListPodSandboxStats":     NoSideEffects,
	"/runtime.v1.RuntimeService/StreamPodSandboxStats":   NoSideEffects,
	"/runtime.v1.RuntimeService/ListMetricDescriptors":   NoSideEffects,
	"/runtime.v1.RuntimeService/ListPodSandboxMetrics":   NoSideEffects,
	"/runtime.v1.RuntimeService/StreamPodSandboxMetrics": NoSideEffects,
	// The CRI documents these as idempotent; updates set what they are
	// given, a pull leaves the same image.
	"/runtime.v1.RuntimeService/StopPodSandbox":            Idempotent,
	"/runtime.v1.RuntimeService/RemovePodSandbox":          Idempotent,
	"/runtime.v1.RuntimeService/StopContainer":             Idempotent,
	"/runtime.v1.RuntimeService/RemoveContainer":           Idempotent,
	"/runtime.v1.RuntimeService/UpdateContainerResources":  Idempotent,
	"/runtime.v1.RuntimeService/UpdatePodSandboxResources": Idempotent,
	"/runtime.v1.RuntimeService/UpdateRuntimeConfig":       Idempotent,
	"/runtime.v1.RuntimeService/ReopenContainerLog":        Idempotent,

	"/runtime.v1.ImageService/ListImages":   NoSideEffects,
	"/runtime.v1.ImageService/StreamImages": NoSideEffects,
	"/runtime.v1.ImageService/ImageStatus":  NoSideEffects,
	"/runtime.v1.ImageService/ImageFsInfo":  NoSideEffects,
	"/runtime.v1.ImageService/PullImage":    Idempotent,
	"/runtime.v1.ImageService/RemoveImage":  Idempotent,
}

var levels sync.Map // full method name -> Level

// IdempotencyOf says what making the call of a method (its full name,
// "/package.Service/Method") twice does: from the method's descriptor when
// the binary links it and it says, else from what is known of containerd's
// and the CRI's methods; a method neither knows is Unknown.
func IdempotencyOf(method string) Level {
	if l, ok := levels.Load(method); ok {
		return l.(Level)
	}
	l := knownLevels[method]
	name := strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
		if md, ok := d.(protoreflect.MethodDescriptor); ok {
			if opts, ok := md.Options().(*descriptorpb.MethodOptions); ok && opts != nil && opts.IdempotencyLevel != nil {
				l = opts.GetIdempotencyLevel()
			}
		}
	}
	levels.Store(method, l)
	return l
}

// ReadOnly says whether a method (its full name) only reads.
func ReadOnly(method string) bool { return IdempotencyOf(method) == NoSideEffects }

// Repeatable says whether a method's call (its full name) may be made
// again when whether the callee saw it is not known: it only reads, or
// making it twice does what making it once does.
func Repeatable(method string) bool {
	l := IdempotencyOf(method)
	return l == NoSideEffects || l == Idempotent
}
