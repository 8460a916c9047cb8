package spec

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A CDI spec of a vendor with two devices and an edit common to both.
const testCDISpec = `cdiVersion: "0.6.0"
kind: example.com/gpu
containerEdits:
  env: ["GPU_VENDOR=example"]
devices:
- name: gpu0
  containerEdits:
    env: ["GPU=0"]
    deviceNodes:
    - path: /dev/example-gpu0
      hostPath: /dev/null
    mounts:
    - hostPath: /var/lib/example/gpu0
      containerPath: /usr/lib/example
      options: ["ro", "bind"]
- name: gpu1
  containerEdits:
    env: ["GPU=1"]
`

func testCDI(t *testing.T, enabled bool) *CDI {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "example.yaml"), []byte(testCDISpec), 0o644); err != nil {
		t.Fatal(err)
	}
	return NewCDI(enabled, []string{dir, filepath.Join(t.TempDir(), "missing")})
}

func TestCDIDevicesFromConfigThenAnnotationsOnce(t *testing.T) {
	cfg := &runtime.ContainerConfig{
		CDIDevices: []*runtime.CDIDevice{{Name: "example.com/gpu=gpu1"}, {Name: "example.com/gpu=gpu1"}},
		Annotations: map[string]string{
			"cdi.k8s.io/b":  "example.com/gpu=gpu0,example.com/gpu=gpu1",
			"cdi.k8s.io/a":  "example.com/nic=eth1",
			"not.cdi/other": "x",
		},
	}
	got, err := cdiDevices(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.com/gpu=gpu1", "example.com/nic=eth1", "example.com/gpu=gpu0"}
	if !slices.Equal(got, want) {
		t.Fatalf("devices %v, want %v", got, want)
	}
	for _, bad := range []*runtime.ContainerConfig{
		{CDIDevices: []*runtime.CDIDevice{{Name: "gpu0"}}},
		{Annotations: map[string]string{"cdi.k8s.io/x": "not-qualified"}},
	} {
		if _, err := cdiDevices(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v, want InvalidArgument", bad, err)
		}
	}
}

func TestCDIInjectsWhatTheSpecSays(t *testing.T) {
	s := testCDI(t, true)
	ctx := context.Background()
	opt, err := s.Devices(ctx, &runtime.ContainerConfig{CDIDevices: []*runtime.CDIDevice{{Name: "example.com/gpu=gpu0"}}})
	if err != nil || opt == nil {
		t.Fatalf("Devices: %v, %v", opt, err)
	}
	spec := &oci.Spec{Process: &specs.Process{Env: []string{"PATH=/bin"}}, Linux: &specs.Linux{}}
	if err := opt(ctx, nil, &containers.Container{ID: "c"}, spec); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{"PATH=/bin", "GPU_VENDOR=example", "GPU=0"} {
		if !slices.Contains(spec.Process.Env, env) {
			t.Errorf("env %v lacks %s", spec.Process.Env, env)
		}
	}
	if len(spec.Linux.Devices) != 1 || spec.Linux.Devices[0].Path != "/dev/example-gpu0" || spec.Linux.Devices[0].Major != 1 || spec.Linux.Devices[0].Minor != 3 {
		t.Errorf("devices %+v; want /dev/example-gpu0 as /dev/null's 1:3", spec.Linux.Devices)
	}
	if !slices.ContainsFunc(spec.Mounts, func(m specs.Mount) bool {
		return m.Destination == "/usr/lib/example" && m.Source == "/var/lib/example/gpu0"
	}) {
		t.Errorf("mounts %+v lack the device's", spec.Mounts)
	}
	if r := spec.Linux.Resources; r == nil || !slices.ContainsFunc(r.Devices, func(d specs.LinuxDeviceCgroup) bool {
		return d.Allow && d.Major != nil && *d.Major == 1 && d.Minor != nil && *d.Minor == 3
	}) {
		t.Errorf("device cgroup does not allow the device: %+v", spec.Linux.Resources)
	}
}

func TestCDIUnknownDeviceIsNotFoundByName(t *testing.T) {
	s := testCDI(t, true)
	_, err := s.Devices(context.Background(), &runtime.ContainerConfig{
		CDIDevices:  []*runtime.CDIDevice{{Name: "example.com/gpu=gpu0"}},
		Annotations: map[string]string{"cdi.k8s.io/x": "example.com/gpu=gpu7"},
	})
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "example.com/gpu=gpu7") || strings.Contains(err.Error(), "gpu0,") {
		t.Fatalf("Devices of an unknown device: %v; want NotFound naming example.com/gpu=gpu7", err)
	}
}

func TestCDISpecsAreReadAgainForEachContainer(t *testing.T) {
	s := testCDI(t, true)
	ctx := context.Background()
	cfg := &runtime.ContainerConfig{CDIDevices: []*runtime.CDIDevice{{Name: "vendor.org/fpga=f0"}}}
	if _, err := s.Devices(ctx, cfg); !errdefs.IsNotFound(err) {
		t.Fatalf("before its spec exists: %v, want NotFound", err)
	}
	// The JSON form of a spec, which the library reads as well.
	spec := `{"cdiVersion":"0.6.0","kind":"vendor.org/fpga","devices":[{"name":"f0","containerEdits":{"env":["FPGA=0"]}}]}`
	if err := os.WriteFile(filepath.Join(s.dirs[0], "fpga.json"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Devices(ctx, cfg); err != nil {
		t.Fatalf("after its spec was written: %v", err)
	}
}

func TestCDIDisabledRefusesDevices(t *testing.T) {
	s := testCDI(t, false)
	ctx := context.Background()
	if opt, err := s.Devices(ctx, &runtime.ContainerConfig{}); opt != nil || err != nil {
		t.Fatalf("no devices asked: %v, %v", opt, err)
	}
	_, err := s.Devices(ctx, &runtime.ContainerConfig{CDIDevices: []*runtime.CDIDevice{{Name: "example.com/gpu=gpu0"}}})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "enable_cdi") {
		t.Fatalf("a device with CDI disabled: %v; want FailedPrecondition naming enable_cdi", err)
	}
}
