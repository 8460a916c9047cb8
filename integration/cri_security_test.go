package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIContainerSpecFeatures runs containers of one pod with the spec
// features CreateContainer applies beyond the basics, and looks at them
// from inside: the runtime/default seccomp profile is in force (and none
// when none is asked), a requested host device node is there and its
// cgroup rule lets it be opened, and the pod's containers share one
// /dev/shm.
func TestCRIContainerSpecFeatures(t *testing.T) {
	requireCRIPods(t)
	const device = "/dev/loop-control"
	if _, err := os.Stat(device); err != nil {
		t.Skipf("host device %s: %v", device, err)
	}
	p := startCRIPods(t, podNetwork("flotilla-test"), "test")
	rt, busyboxRef := p.rt, p.busyboxRef
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "spec", Namespace: "default", Uid: "uid-spec-1"},
	}
	podID := p.runPod(ctx, t, podCfg)

	run := func(name string, edit func(*runtimeapi.ContainerConfig)) string {
		t.Helper()
		cfg := &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: busyboxRef},
			Command:  []string{"sleep", "3600"},
			Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{}},
		}
		if edit != nil {
			edit(cfg)
		}
		return p.startContainer(ctx, t, podID, podCfg, cfg)
	}
	sh := func(id, script string) (string, error) {
		stdout, stderr, err := rt.ExecSync(ctx, id, []string{"sh", "-c", script}, 10*time.Second)
		return strings.TrimSpace(string(stdout) + string(stderr)), err
	}

	confined := run("confined", func(c *runtimeapi.ContainerConfig) {
		c.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		c.Linux.SecurityContext.MaskedPaths = []string{"/etc/group"}
		c.Linux.SecurityContext.ReadonlyPaths = []string{"/tmp"}
		c.Devices = []*runtimeapi.Device{{HostPath: device, ContainerPath: "/dev/flotilla-loop", Permissions: "rw"}}
	})
	plain := run("plain", nil)

	t.Run("SeccompRuntimeDefault", func(t *testing.T) {
		if out, err := sh(confined, "grep '^Seccomp:' /proc/self/status"); err != nil || !strings.HasSuffix(out, "2") {
			t.Errorf("with the runtime/default profile, /proc/self/status says %q (%v); want Seccomp: 2 (filtering)", out, err)
		}
		if out, err := sh(plain, "grep '^Seccomp:' /proc/self/status"); err != nil || !strings.HasSuffix(out, "0") {
			t.Errorf("without a profile, /proc/self/status says %q (%v); want Seccomp: 0 (the CRI's default is unconfined)", out, err)
		}
	})

	t.Run("MaskedAndReadonlyPaths", func(t *testing.T) {
		// A masked file is /dev/null; a directory made read-only
		// refuses writes.
		if out, err := sh(confined, "[ -c /etc/group ] && [ ! -s /etc/group ] && echo masked"); err != nil || out != "masked" {
			t.Errorf("the masked /etc/group: %q, %v; want /dev/null over it", out, err)
		}
		if out, err := sh(plain, "[ -s /etc/group ] && echo present"); err != nil || out != "present" {
			t.Errorf("/etc/group in a container that masks nothing: %q, %v", out, err)
		}
		if out, err := sh(confined, "touch /tmp/x 2>&1; echo done"); err != nil || !strings.Contains(out, "Read-only file system") {
			t.Errorf("writing under the read-only /tmp: %q, %v; want Read-only file system", out, err)
		}
		if out, err := sh(plain, "touch /tmp/x && echo ok"); err != nil || out != "ok" {
			t.Errorf("writing /tmp in a container without read-only paths: %q, %v", out, err)
		}
	})

	t.Run("Device", func(t *testing.T) {
		if out, err := sh(confined, "test -c /dev/flotilla-loop && exec 3<>/dev/flotilla-loop && echo opened"); err != nil || out != "opened" {
			t.Errorf("opening the requested device %s at /dev/flotilla-loop: %q, %v; want the node there and the cgroup allowing it", device, out, err)
		}
		if out, err := sh(plain, "test -e /dev/flotilla-loop || echo absent"); err != nil || out != "absent" {
			t.Errorf("a container that asked for no device has /dev/flotilla-loop: %q, %v", out, err)
		}
	})

	t.Run("ShmSharedInPod", func(t *testing.T) {
		if out, err := sh(confined, "echo from-confined > /dev/shm/flotilla-shared && echo ok"); err != nil || out != "ok" {
			t.Fatalf("write /dev/shm in one container: %q, %v", out, err)
		}
		if out, err := sh(plain, "cat /dev/shm/flotilla-shared"); err != nil || out != "from-confined" {
			t.Errorf("the pod's other container reads %q (%v) from /dev/shm/flotilla-shared; want the file the first wrote", out, err)
		}
		other := runOtherPod(ctx, t, rt, busyboxRef)
		if out, err := sh(other, "test -e /dev/shm/flotilla-shared || echo absent"); err != nil || out != "absent" {
			t.Errorf("a container of another pod sees the first pod's /dev/shm: %q, %v", out, err)
		}
	})
}

// runOtherPod starts a second pod with one sleeping container and returns
// the container's ID.
func runOtherPod(ctx context.Context, t *testing.T, rt internalapi.RuntimeService, image string) string {
	t.Helper()
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "other", Namespace: "default", Uid: "uid-other-1"},
	}
	podID, err := rt.RunPodSandbox(ctx, podCfg, "")
	if err != nil {
		t.Fatalf("RunPodSandbox other: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = rt.RemovePodSandbox(ctx, podID)
	})
	id, err := rt.CreateContainer(ctx, podID, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "other"},
		Image:    &runtimeapi.ImageSpec{Image: image},
		Command:  []string{"sleep", "3600"},
	}, podCfg)
	if err != nil {
		t.Fatalf("CreateContainer other: %v", err)
	}
	if err := rt.StartContainer(ctx, id); err != nil {
		t.Fatalf("StartContainer other: %v", err)
	}
	return id
}
