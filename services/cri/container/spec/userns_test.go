package spec

import (
	"context"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func mapping(ctr, host, size uint32) []*runtime.IDMapping {
	return []*runtime.IDMapping{{ContainerId: ctr, HostId: host, Length: size}}
}

func podUsernsConfig(o *runtime.UserNamespace, hostNet bool) *runtime.PodSandboxConfig {
	ns := &runtime.NamespaceOption{UsernsOptions: o}
	if hostNet {
		ns.Network = runtime.NamespaceMode_NODE
	}
	return &runtime.PodSandboxConfig{Linux: &runtime.LinuxPodSandboxConfig{SecurityContext: &runtime.LinuxSandboxSecurityContext{NamespaceOptions: ns}}}
}

func TestParseUserns(t *testing.T) {
	pod := func(u, g []*runtime.IDMapping) *runtime.UserNamespace {
		return &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: u, Gids: g}
	}
	for _, tc := range []struct {
		name    string
		in      *runtime.UserNamespace
		enabled bool
		bad     bool
	}{
		{name: "none", in: nil},
		{name: "node", in: &runtime.UserNamespace{Mode: runtime.NamespaceMode_NODE}},
		{name: "pod", in: pod(mapping(0, 100000, 65536), mapping(0, 200000, 65536)), enabled: true},
		{name: "node with mappings", in: &runtime.UserNamespace{Mode: runtime.NamespaceMode_NODE, Uids: mapping(0, 1, 1)}, bad: true},
		{name: "container mode", in: &runtime.UserNamespace{Mode: runtime.NamespaceMode_CONTAINER}, bad: true},
		{name: "target mode", in: &runtime.UserNamespace{Mode: runtime.NamespaceMode_TARGET}, bad: true},
		{name: "pod without gids", in: pod(mapping(0, 1000, 10), nil), bad: true},
		{name: "two mappings", in: pod(append(mapping(0, 1000, 10), mapping(10, 2000, 10)...), mapping(0, 1000, 10)), bad: true},
		{name: "root not mapped", in: pod(mapping(1, 1000, 10), mapping(1, 1000, 10)), bad: true},
		{name: "empty range", in: pod(mapping(0, 1000, 0), mapping(0, 1000, 10)), bad: true},
		{name: "beyond 32 bits", in: pod(mapping(0, 1<<32-10, 100), mapping(0, 1000, 10)), bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := ParseUserns(tc.in)
			if tc.bad {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("ParseUserns(%v) = %v, %v; want InvalidArgument", tc.in, u, err)
				}
				return
			}
			if err != nil || u.Enabled() != tc.enabled {
				t.Fatalf("ParseUserns(%v) = %v, %v; want enabled=%v", tc.in, u, err, tc.enabled)
			}
			if tc.enabled && (u.UIDs[0] != specs.LinuxIDMapping{ContainerID: 0, HostID: 100000, Size: 65536} ||
				u.GIDs[0] != specs.LinuxIDMapping{ContainerID: 0, HostID: 200000, Size: 65536}) {
				t.Errorf("mappings %v %v", u.UIDs, u.GIDs)
			}
		})
	}
}

func genSpec(t *testing.T, opts ...oci.SpecOpts) *oci.Spec {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: "c"}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func userNS(s *oci.Spec) (specs.LinuxNamespace, bool) {
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.UserNamespace {
			return ns, true
		}
	}
	return specs.LinuxNamespace{}, false
}

func TestUsernsSandboxSpec(t *testing.T) {
	o := &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: mapping(0, 100000, 65536), Gids: mapping(0, 100000, 65536)}
	u, err := ParseUserns(o)
	if err != nil {
		t.Fatal(err)
	}

	spec := genSpec(t, usernsSandboxOpts(UsernsPin("/run/fl", "sb1"), podUsernsConfig(o, false), u)...)
	ns, ok := userNS(spec)
	if !ok || ns.Path != "/run/fl/userns/sb1" {
		t.Errorf("pod network: user namespace %+v (%v); want the pinned one joined by path", ns, ok)
	}
	if len(spec.Linux.UIDMappings) != 1 || spec.Linux.UIDMappings[0].HostID != 100000 || len(spec.Linux.GIDMappings) != 1 {
		t.Errorf("mappings %v %v; want the pod's", spec.Linux.UIDMappings, spec.Linux.GIDMappings)
	}

	spec = genSpec(t, usernsSandboxOpts(UsernsPin("/run/fl", "sb1"), podUsernsConfig(o, true), u)...)
	if ns, ok := userNS(spec); !ok || ns.Path != "" {
		t.Errorf("host network: user namespace %+v (%v); want a new one", ns, ok)
	}
	if i := slices.IndexFunc(spec.Mounts, func(m specs.Mount) bool { return m.Destination == "/sys" }); i < 0 || spec.Mounts[i].Type != "bind" || !slices.Contains(spec.Mounts[i].Options, "rro") {
		t.Errorf("host network: /sys mount %v; want a recursive read-only bind of the host's (sysfs cannot be mounted)", spec.Mounts)
	}

	spec = genSpec(t, usernsSandboxOpts(UsernsPin("/run/fl", "sb1"), podUsernsConfig(nil, false), nil)...)
	if _, ok := userNS(spec); ok || len(spec.Linux.UIDMappings) > 0 {
		t.Errorf("no user namespace asked: spec has %v, %v", spec.Linux.Namespaces, spec.Linux.UIDMappings)
	}
}

func TestUsernsContainerSpec(t *testing.T) {
	o := &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: mapping(0, 100000, 65536), Gids: mapping(0, 100000, 65536)}
	sb := podUsernsConfig(o, false)
	ctr := &runtime.ContainerConfig{Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
		NamespaceOptions: &runtime.NamespaceOption{UsernsOptions: o}}}}
	opts, err := usernsContainerOpts(sb, ctr, 4242)
	if err != nil {
		t.Fatal(err)
	}
	spec := genSpec(t, opts...)
	if ns, ok := userNS(spec); !ok || ns.Path != "/proc/4242/ns/user" {
		t.Errorf("container user namespace %+v (%v); want the pause process's", ns, ok)
	}
	if len(spec.Linux.UIDMappings) != 1 || spec.Linux.UIDMappings[0].HostID != 100000 {
		t.Errorf("container mappings %v", spec.Linux.UIDMappings)
	}

	// A container that says nothing gets its pod's.
	if opts, err := usernsContainerOpts(sb, &runtime.ContainerConfig{}, 4242); err != nil || len(opts) == 0 {
		t.Errorf("container without user namespace options in a pod with one: %v, %v; want the pod's", opts, err)
	}
	// One that asks for another than its pod's is refused.
	other := &runtime.ContainerConfig{Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
		NamespaceOptions: &runtime.NamespaceOption{UsernsOptions: &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: mapping(0, 300000, 65536), Gids: mapping(0, 300000, 65536)}}}}}
	if _, err := usernsContainerOpts(sb, other, 4242); !errdefs.IsInvalidArgument(err) {
		t.Errorf("container asking for another user namespace than its pod's: %v; want InvalidArgument", err)
	}
	if _, err := usernsContainerOpts(podUsernsConfig(nil, false), ctr, 4242); !errdefs.IsInvalidArgument(err) {
		t.Errorf("container asking for a user namespace in a pod without one: %v; want InvalidArgument", err)
	}
	if opts, err := usernsContainerOpts(podUsernsConfig(nil, false), &runtime.ContainerConfig{}, 4242); err != nil || len(opts) != 0 {
		t.Errorf("no user namespace anywhere: %v, %v; want nothing", opts, err)
	}
}

func TestIdmapContainerMounts(t *testing.T) {
	o := &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: mapping(0, 100000, 65536), Gids: mapping(0, 100000, 65536)}
	sbDir := "/run/fl/sandboxes/sb1"
	cfg := &runtime.ContainerConfig{Mounts: []*runtime.Mount{
		{ContainerPath: "/data", HostPath: "/srv/data", UidMappings: mapping(0, 100000, 65536), GidMappings: mapping(0, 100000, 65536)},
		{ContainerPath: "/plain", HostPath: "/srv/plain"},
	}}
	in := []specs.Mount{
		{Destination: "/data", Source: "/srv/data", Type: "bind"},
		{Destination: "/plain", Source: "/srv/plain", Type: "bind"},
		{Destination: "/dev/shm", Source: sbDir + "/shm", Type: "bind"},
		{Destination: "/etc/hosts", Source: sbDir + "/hosts", Type: "bind"},
		{Destination: "/etc/resolv.conf", Source: sbDir + "/resolv.conf", Type: "bind"},
	}
	out := idmapContainerMounts(in, sbDir, cfg, podUsernsConfig(o, false))
	mapped := map[string]bool{}
	for _, m := range out {
		mapped[m.Destination] = len(m.UIDMappings) == 1 && len(m.GIDMappings) == 1 && m.UIDMappings[0].HostID == 100000
	}
	want := map[string]bool{"/data": true, "/plain": false, "/dev/shm": false, "/etc/hosts": true, "/etc/resolv.conf": true}
	for dst, w := range want {
		if mapped[dst] != w {
			t.Errorf("mount %s idmapped: %v; want %v", dst, mapped[dst], w)
		}
	}
	if len(in[3].UIDMappings) != 0 {
		t.Errorf("the caller's mounts were changed")
	}
	if out := idmapContainerMounts(in, sbDir, cfg, podUsernsConfig(nil, false)); len(out[3].UIDMappings) != 0 {
		t.Errorf("a pod without a user namespace got idmapped pod files")
	}
}
