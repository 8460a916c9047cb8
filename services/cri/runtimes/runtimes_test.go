package runtimes

import (
	"context"
	"errors"
	"strings"
	"testing"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/flotilla-project/flotilla/services/cri/task"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestRuntimeHandlersDefaultIsRunc(t *testing.T) {
	h, err := New("", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "runc"} {
		r, err := h.Get(name)
		if err != nil || r.typ != RuncType || r.options != nil {
			t.Errorf("handler %q: %+v, %v; want runc v2 without options", name, r, err)
		}
	}
	if _, err := h.Get("kata"); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), `no runtime for "kata" is configured`) {
		t.Errorf("unknown handler: %v; want NotFound worded as containerd's", err)
	}
}

func TestRuntimeHandlersEncodeRuncOptionsByFieldName(t *testing.T) {
	// The options arrive through JSON: numbers are floats.
	h, err := New("runc", map[string]Config{
		"runc":     {Type: RuncType},
		"runc-alt": {Options: map[string]any{"BinaryName": "/opt/runc-alt", "Root": "/run/alt", "SystemdCgroup": true, "IoUid": float64(1000)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.Get("runc-alt")
	if err != nil {
		t.Fatal(err)
	}
	if r.typ != RuncType {
		t.Errorf("a handler without runtime_type runs on %q, want %s", r.typ, RuncType)
	}
	var o runcoptions.Options
	if err := r.options.UnmarshalTo(&o); err != nil {
		t.Fatalf("options are not runc options (%s): %v", r.options.GetTypeUrl(), err)
	}
	if o.BinaryName != "/opt/runc-alt" || o.Root != "/run/alt" || !o.SystemdCgroup || o.IoUid != 1000 {
		t.Errorf("runc options: %+v", &o)
	}
	// What the tasks service gets on the container record.
	var c containers.Container
	if err := r.WithRuntime()(context.Background(), nil, &c); err != nil {
		t.Fatal(err)
	}
	if c.Runtime.Name != RuncType || c.Runtime.Options == nil {
		t.Errorf("container runtime: %+v", c.Runtime)
	}
}

func TestRuntimeHandlersRefuseBadConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		def  string
		cfgs map[string]Config
		want string
	}{
		"default not configured": {"kata", map[string]Config{"runc": {}}, "default_runtime_name"},
		"misspelled runc option": {"runc", map[string]Config{"runc": {Options: map[string]any{"BinaryNmae": "x"}}}, "BinaryNmae"},
		"bad annotation pattern": {"runc", map[string]Config{"runc": {PodAnnotations: []string{"a["}}}, "a["},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.def, tc.cfgs)
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want InvalidArgument naming %q", err, tc.want)
			}
		})
	}
}

func TestRuntimeHandlersOtherShimsGetATOMLBody(t *testing.T) {
	h, err := New("runc", map[string]Config{
		"runc":  {},
		"runsc": {Type: "io.containerd.runsc.v1", Options: map[string]any{"TypeUrl": "io.containerd.runsc.v1.options", "platform": "kvm"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := h.Get("runsc")
	var o runtimeoptions.Options
	if err := r.options.UnmarshalTo(&o); err != nil {
		t.Fatal(err)
	}
	if o.TypeUrl != "io.containerd.runsc.v1.options" || !strings.Contains(string(o.ConfigBody), "platform = 'kvm'") {
		t.Errorf("runsc options: type %q body %q", o.TypeUrl, o.ConfigBody)
	}
}

func TestPassthroughAnnotationsMatchPatterns(t *testing.T) {
	r := &Runtime{podAnn: []string{"io.kubernetes.cri-o.*", "exact"}, ctrAnn: []string{"ctr.example.com/*"}}
	spec := &oci.Spec{}
	pod := map[string]string{"io.kubernetes.cri-o.Devices": "x", "exact": "1", "other": "no"}
	ctr := map[string]string{"ctr.example.com/a": "y", "exact": "from-container"}
	if err := r.WithPassthroughAnnotations(pod, ctr)(context.Background(), nil, &containers.Container{}, spec); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"io.kubernetes.cri-o.Devices": "x", "exact": "1", "ctr.example.com/a": "y"}
	if len(spec.Annotations) != len(want) {
		t.Fatalf("annotations %v, want %v", spec.Annotations, want)
	}
	for k, v := range want {
		if spec.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, spec.Annotations[k], v)
		}
	}
}

func TestHandlerFeaturesFollowContainerd(t *testing.T) {
	yes := true
	userns := &features.Features{MountOptions: []string{"rro"}, Linux: &features.Linux{
		Namespaces:      []string{"mount", "user"},
		MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &yes}},
	}}
	old := &features.Features{MountOptions: []string{"ro"}, Linux: &features.Linux{Namespaces: []string{"user"}}}
	for name, tc := range map[string]struct {
		f         *features.Features
		kernelRRO bool
		want      *runtime.RuntimeHandlerFeatures
	}{
		"userns and idmap, rro":       {userns, true, &runtime.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: true, UserNamespaces: true}},
		"rro but an old kernel":       {userns, false, &runtime.RuntimeHandlerFeatures{UserNamespaces: true}},
		"userns without idmap mounts": {old, true, &runtime.RuntimeHandlerFeatures{}},
	} {
		got := handlerFeatures(tc.f, tc.kernelRRO)
		if got.RecursiveReadOnlyMounts != tc.want.RecursiveReadOnlyMounts || got.UserNamespaces != tc.want.UserNamespaces {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

// fakeIntrospection answers the runtime plugin's info as the tasks
// service does, with the features of each runc binary by name; it counts
// the calls.
type fakeIntrospection struct {
	calls int
	fail  bool
}

func (f *fakeIntrospection) PluginInfo(_ context.Context, typ, id string, opts any) (*introspectionapi.PluginInfoResponse, error) {
	f.calls++
	if f.fail {
		return nil, errors.New("tasks not up")
	}
	rr := opts.(*apitypes.RuntimeRequest)
	var o runcoptions.Options
	if rr.Options != nil {
		_ = rr.Options.UnmarshalTo(&o)
	}
	yes := true
	feat := &features.Features{MountOptions: []string{"ro"}, Linux: &features.Linux{Namespaces: []string{"mount", "user"}},
		Annotations: map[string]string{"org.opencontainers.runc.version": "1.1.5"}}
	if o.BinaryName == "new-runc" {
		feat.MountOptions = append(feat.MountOptions, "rro")
		feat.Linux.MountExtensions = &features.MountExtensions{IDMap: &features.IDMap{Enabled: &yes}}
		feat.Annotations["org.opencontainers.runc.version"] = "1.5.3"
	}
	fa, err := typeurl.MarshalAnyToProto(feat)
	if err != nil {
		return nil, err
	}
	extra, err := typeurl.MarshalAnyToProto(&apitypes.RuntimeInfo{Name: rr.RuntimePath, Features: fa})
	if err != nil {
		return nil, err
	}
	return &introspectionapi.PluginInfoResponse{Plugin: &introspectionapi.Plugin{Type: typ, ID: id}, Extra: extra}, nil
}

func TestFeaturesAreAskedPerHandlerAndKeptOnceKnown(t *testing.T) {
	h, err := New("runc", map[string]Config{
		"runc":     {},
		"runc-new": {Options: map[string]any{"BinaryName": "new-runc"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	intro := &fakeIntrospection{fail: true}
	ctx := context.Background()
	if f := h.featuresOf(ctx, intro, h.byName["runc-new"]); f != nil {
		t.Fatalf("features while the runtime cannot be asked: %v, want none", f)
	}
	intro.fail = false
	f := h.featuresOf(ctx, intro, h.byName["runc-new"])
	if f == nil || f.RecursiveReadOnlyMounts != RecursiveReadOnlySupported() {
		t.Fatalf("runc-new features: %v; its runc lists rro", f)
	}
	if f := h.featuresOf(ctx, intro, h.byName["runc"]); f == nil || f.RecursiveReadOnlyMounts {
		t.Fatalf("runc features: %v; its runc lists no rro", f)
	}
	calls := intro.calls
	h.featuresOf(ctx, intro, h.byName["runc-new"])
	if intro.calls != calls {
		t.Errorf("features asked again once known (%d calls, then %d)", calls, intro.calls)
	}
}

// TestUserNamespacesArePerHandler: a pod's user namespace is refused on
// a handler whose runc cannot make idmapped mounts, with an error naming
// the handler, its runc and what it lacks, and allowed on one whose runc
// can (on a kernel that can); Status's feature says the same.
func TestUserNamespacesArePerHandler(t *testing.T) {
	h, err := New("runc", map[string]Config{
		"runc":     {},
		"runc-new": {Options: map[string]any{"BinaryName": "new-runc"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := h.UserNamespaces(ctx, &fakeIntrospection{fail: true}, h.byName["runc-new"]); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("user namespaces on a handler that cannot be asked: %v; want FailedPrecondition", err)
	}
	intro := &fakeIntrospection{}
	err = h.UserNamespaces(ctx, intro, h.byName["runc"])
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("user namespaces on runc 1.1: %v; want FailedPrecondition", err)
	}
	for _, want := range []string{`runtime handler "runc"`, "runc (version 1.1.5) cannot make idmapped mounts", "runc 1.2 or later"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	if f := h.featuresOf(ctx, intro, h.byName["runc"]); f.UserNamespaces {
		t.Errorf("runc 1.1 handler's features claim user namespaces")
	}
	kernel := task.KernelIDMapSupported()
	err = h.UserNamespaces(ctx, intro, h.byName["runc-new"])
	if (err == nil) != (kernel == nil) {
		t.Errorf("user namespaces on runc 1.5: %v (kernel idmapped mounts: %v)", err, kernel)
	}
	if f := h.featuresOf(ctx, intro, h.byName["runc-new"]); f.UserNamespaces != (kernel == nil) {
		t.Errorf("runc 1.5 handler's features: user namespaces %v (kernel idmapped mounts: %v)", f.UserNamespaces, kernel)
	}
}
