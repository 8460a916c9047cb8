package nri

import (
	"slices"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestAdjustSpecAppliesWhatPluginsAskFor(t *testing.T) {
	spec := &specs.Spec{
		Process: &specs.Process{Args: []string{"sh"}, Env: []string{"KEEP=1", "DROP=1", "CHANGE=old"}},
		Mounts: []specs.Mount{
			{Destination: "/etc/hosts", Type: "bind", Source: "/x/hosts"},
			{Destination: "/gone", Type: "bind", Source: "/x/gone"},
		},
		Annotations: map[string]string{"a": "1", "b": "2"},
		Linux:       &specs.Linux{},
	}
	adj := &api.ContainerAdjustment{}
	adj.AddEnv("NEW", "yes")
	adj.AddEnv("CHANGE", "new")
	adj.RemoveEnv("DROP")
	adj.AddMount(&api.Mount{Destination: "/data", Source: "/host/data", Type: "bind", Options: []string{"rbind", "ro"}})
	adj.RemoveMount("/gone")
	adj.AddAnnotation("c", "3")
	adj.RemoveAnnotation("b")
	adj.SetLinuxMemoryLimit(64 << 20)
	adj.SetLinuxCPUSetCPUs("0")
	adj.AddRlimit("RLIMIT_NOFILE", 1024, 512)
	adj.AddDevice(&api.LinuxDevice{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229})
	oom := 500
	adj.SetLinuxOomScoreAdj(&oom)
	adj.AddHooks(&api.Hooks{Prestart: []*api.Hook{{Path: "/bin/true"}}})

	if err := AdjustSpec(spec, adj, nil); err != nil {
		t.Fatal(err)
	}
	if want := []string{"KEEP=1", "CHANGE=new", "NEW=yes"}; !slices.Equal(spec.Process.Env, want) {
		t.Errorf("env %v, want %v", spec.Process.Env, want)
	}
	var dests []string
	for _, m := range spec.Mounts {
		dests = append(dests, m.Destination)
	}
	if !slices.Contains(dests, "/data") || slices.Contains(dests, "/gone") || !slices.Contains(dests, "/etc/hosts") {
		t.Errorf("mounts %v: want /data added, /gone removed, /etc/hosts kept", dests)
	}
	if spec.Annotations["c"] != "3" || spec.Annotations["a"] != "1" {
		t.Errorf("annotations %v", spec.Annotations)
	}
	if _, ok := spec.Annotations["b"]; ok {
		t.Errorf("annotation b not removed: %v", spec.Annotations)
	}
	r := spec.Linux.Resources
	if r == nil || r.Memory == nil || *r.Memory.Limit != 64<<20 || r.CPU == nil || r.CPU.Cpus != "0" {
		t.Errorf("resources %+v", r)
	}
	if len(spec.Process.Rlimits) != 1 || spec.Process.Rlimits[0].Hard != 1024 {
		t.Errorf("rlimits %+v", spec.Process.Rlimits)
	}
	if len(spec.Linux.Devices) != 1 || spec.Linux.Devices[0].Path != "/dev/fuse" {
		t.Errorf("devices %+v", spec.Linux.Devices)
	}
	if spec.Process.OOMScoreAdj == nil || *spec.Process.OOMScoreAdj != 500 {
		t.Errorf("oom score adj %v", spec.Process.OOMScoreAdj)
	}
	if spec.Hooks == nil || len(spec.Hooks.Prestart) != 1 { //nolint:staticcheck // NRI carries prestart hooks
		t.Errorf("hooks %+v", spec.Hooks)
	}
}

func TestAdjustSpecRefusesCDIDevicesWithoutCDI(t *testing.T) {
	adj := &api.ContainerAdjustment{}
	adj.AddCDIDevice(&api.CDIDevice{Name: "vendor.com/gpu=0"})
	if err := AdjustSpec(&specs.Spec{}, adj, nil); err == nil {
		t.Fatal("a CDI device was dropped silently: AdjustSpec succeeded with no CDI injector")
	}
	var got []string
	inject := func(_ *specs.Spec, devices []string) error { got = devices; return nil }
	if err := AdjustSpec(&specs.Spec{}, adj, inject); err != nil || !slices.Equal(got, []string{"vendor.com/gpu=0"}) {
		t.Fatalf("with an injector: %v, devices %v", err, got)
	}
}

func TestCRIResourcesSurviveTheRoundTrip(t *testing.T) {
	in := fromCRIResources(nil)
	if in != nil {
		t.Fatal("nil resources converted to non-nil")
	}
	out := toCRIResources(fromCRIResources(&criResources))
	if out.GetMemoryLimitInBytes() != criResources.MemoryLimitInBytes || out.GetCpuQuota() != criResources.CpuQuota ||
		out.GetCpuShares() != criResources.CpuShares || out.GetCpusetCpus() != criResources.CpusetCpus ||
		out.GetUnified()["memory.high"] != "1G" {
		t.Fatalf("round trip: %+v", out)
	}
}

var criResources = runtime.LinuxContainerResources{
	CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, CpusetCpus: "0-1",
	MemoryLimitInBytes: 128 << 20, Unified: map[string]string{"memory.high": "1G"},
}
