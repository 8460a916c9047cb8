package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRICDIDevicesReachTheContainer configures a CDI spec directory of
// the test's own and asks for its devices through the kubelet's CRI
// client, both ways a kubelet can: the container config's CDIDevices and
// a cdi.k8s.io/ annotation. What the spec says is in the container: the
// environment, a mount, and a device node the device cgroup lets it
// write to. A device no spec defines fails CreateContainer, named.
func TestCRICDIDevicesReachTheContainer(t *testing.T) {
	cdiDir := filepath.Join(t.TempDir(), "cdi")
	shared := t.TempDir()
	if err := os.WriteFile(filepath.Join(shared, "marker"), []byte("from-the-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cdiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`cdiVersion: "0.6.0"
kind: flotilla.test/dev
containerEdits:
  env: ["FLOTILLA_CDI_VENDOR=flotilla"]
devices:
- name: one
  containerEdits:
    env: ["FLOTILLA_CDI=one"]
    deviceNodes:
    - path: /dev/flotilla-cdi
      hostPath: /dev/null
    mounts:
    - hostPath: %s
      containerPath: /cdi-mount
      options: ["ro", "rbind"]
- name: two
  containerEdits:
    env: ["FLOTILLA_CDI=two"]
`, shared)
	if err := os.WriteFile(filepath.Join(cdiDir, "flotilla.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startCRIPods(t, podNetwork("flotilla-cdi"), "cdi", fmt.Sprintf("cdi_spec_dirs = [%q]", cdiDir))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)
	podCfg := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "cdi", Namespace: "default", Uid: "uid-cdi"}}
	podID := p.runPod(ctx, t, podCfg)
	ctr := func(name string, devices []string, ann map[string]string) *runtimeapi.ContainerConfig {
		c := &runtimeapi.ContainerConfig{
			Metadata:    &runtimeapi.ContainerMetadata{Name: name},
			Image:       &runtimeapi.ImageSpec{Image: p.busyboxRef},
			Command:     []string{"sleep", "3600"},
			Annotations: ann,
		}
		for _, d := range devices {
			c.CDIDevices = append(c.CDIDevices, &runtimeapi.CDIDevice{Name: d})
		}
		return c
	}
	run := func(id, script string) string {
		t.Helper()
		out, stderr, err := p.rt.ExecSync(ctx, id, []string{"sh", "-c", script}, 10*time.Second)
		if err != nil {
			t.Fatalf("ExecSync %q: %v (stderr %q)", script, err, stderr)
		}
		return strings.TrimSpace(string(out))
	}

	one := p.startContainer(ctx, t, podID, podCfg, ctr("one", []string{"flotilla.test/dev=one"}, nil))
	if got := run(one, "echo $FLOTILLA_CDI_VENDOR $FLOTILLA_CDI"); got != "flotilla one" {
		t.Errorf("CDI environment in the container: %q, want \"flotilla one\"", got)
	}
	if got := run(one, "cat /cdi-mount/marker"); got != "from-the-host" {
		t.Errorf("CDI mount in the container: %q", got)
	}
	if got := run(one, "stat -c '%F %t:%T' /dev/flotilla-cdi && echo written > /dev/flotilla-cdi && echo ok"); got != "character special file 1:3\nok" {
		t.Errorf("CDI device node in the container (stat, then a write the device cgroup must allow): %q", got)
	}

	two := p.startContainer(ctx, t, podID, podCfg, ctr("two", nil, map[string]string{"cdi.k8s.io/flotilla-test": "flotilla.test/dev=two"}))
	if got := run(two, "echo $FLOTILLA_CDI; test -e /dev/flotilla-cdi || echo no-node"); got != "two\nno-node" {
		t.Errorf("the device of a cdi.k8s.io/ annotation: %q, want its environment and not the other device's node", got)
	}

	_, err := p.rt.CreateContainer(ctx, podID, ctr("unknown", []string{"flotilla.test/dev=one", "flotilla.test/dev=nope"}, nil), podCfg)
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "flotilla.test/dev=nope") {
		t.Fatalf("CreateContainer with an unknown CDI device: %v; want NotFound naming flotilla.test/dev=nope", err)
	}
	if ctrs, err := p.rt.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: podID}); err != nil || len(ctrs) != 2 {
		t.Fatalf("containers after the failed create: %v, %v; want the two started", ctrs, err)
	}
}

// TestCRIRuntimeClassPicksTheConfiguredHandler configures a second
// runtime handler whose runc is a wrapper that notes every call, as a
// RuntimeClass would name another runtime: the pod that asks for it and
// its containers run through the wrapper, a pod of the default handler
// does not, an unknown handler fails RunPodSandbox, and Status lists the
// handlers with their runtime's features.
func TestCRIRuntimeClassPicksTheConfiguredHandler(t *testing.T) {
	runc := requireTool(t, "runc", "runc")
	dir := t.TempDir()
	marker := filepath.Join(dir, "runc-alt.calls")
	wrapper := filepath.Join(dir, "runc-alt")
	script := fmt.Sprintf("#!/bin/sh\necho \"$@\" >> %s\nexec %s \"$@\"\n", marker, runc)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := startCRIPods(t, podNetwork("flotilla-rtclass"), "rtclass", fmt.Sprintf(`
[services.cri.options.runtimes.runc-alt]
runtime_type = "io.containerd.runc.v2"
pod_annotations = ["flotilla.test/*"]
[services.cri.options.runtimes.runc-alt.options]
BinaryName = %q
`, wrapper))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	st, err := p.rt.Status(ctx, false)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	handlers := map[string]*runtimeapi.RuntimeHandler{}
	var names []string
	for _, h := range st.GetRuntimeHandlers() {
		handlers[h.GetName()] = h
		names = append(names, fmt.Sprintf("%q", h.GetName()))
	}
	if strings.Join(names, " ") != `"" "runc" "runc-alt"` {
		t.Fatalf("Status lists the handlers %s, want \"\" (the default), \"runc\" and \"runc-alt\" in order", strings.Join(names, " "))
	}
	// Debian's runc lists rro (and this kernel has mount_setattr), but
	// not idmap mounts, which user namespaces need.
	for name, h := range handlers {
		if f := h.GetFeatures(); f == nil || !f.GetRecursiveReadOnlyMounts() || f.GetUserNamespaces() {
			t.Errorf("handler %q features %v: want recursive read-only mounts and no user namespaces (runc %s)", name, f, runcVersion(runc))
		}
	}

	p.pullImages(ctx, t)
	podCfg := func(name string) *runtimeapi.PodSandboxConfig {
		return &runtimeapi.PodSandboxConfig{
			Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name},
			Annotations: map[string]string{"flotilla.test/class": name, "other": "x"},
		}
	}
	if _, err := p.rt.RunPodSandbox(ctx, podCfg("nope"), "nope"); err == nil || !strings.Contains(err.Error(), `no runtime for "nope" is configured`) {
		t.Fatalf("RunPodSandbox with an unknown handler: %v; want containerd's \"no runtime for \\\"nope\\\" is configured\"", err)
	}
	calls := func() string { b, _ := os.ReadFile(marker); return string(b) }
	// Status asked runc-alt itself what it supports; nothing else ran it.
	if c := calls(); c != "features\n" {
		t.Fatalf("runc-alt's calls before a pod asked for it: %q, want Status's one \"features\"", c)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}

	altCfg := podCfg("alt")
	altID, err := p.rt.RunPodSandbox(ctx, altCfg, "runc-alt")
	if err != nil {
		t.Fatalf("RunPodSandbox runc-alt: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = p.rt.RemovePodSandbox(ctx, altID)
	})
	if pst, err := p.rt.PodSandboxStatus(ctx, altID, false); err != nil || pst.GetStatus().GetRuntimeHandler() != "runc-alt" {
		t.Fatalf("PodSandboxStatus of the runc-alt pod: %v, %v", pst, err)
	}
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
		Command:  []string{"sleep", "3600"},
	}
	ctrID := p.startContainer(ctx, t, altID, altCfg, ctrCfg)
	if out, _, err := p.rt.ExecSync(ctx, ctrID, []string{"echo", "in-alt"}, 10*time.Second); err != nil || string(out) != "in-alt\n" {
		t.Fatalf("ExecSync in the runc-alt container: %q, %v", out, err)
	}
	c := calls()
	for what, id := range map[string]string{"the sandbox": altID, "its container": ctrID} {
		if !strings.Contains(c, "create") || !strings.Contains(c, id) {
			t.Errorf("runc-alt did not create %s (%s); its calls:\n%s", what, id, c)
		}
	}
	if !strings.Contains(c, "exec") {
		t.Errorf("the exec did not go through runc-alt; its calls:\n%s", c)
	}
	// The pod annotations the handler passes through are in the spec the
	// runtime gets; the others are not.
	nsCtx := namespaces.WithNamespace(ctx, "k8s.io")
	sb, err := p.d.client().LoadContainer(nsCtx, altID)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := sb.Spec(nsCtx)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Annotations["flotilla.test/class"] != "alt" || spec.Annotations["other"] != "" {
		t.Errorf("the sandbox spec's annotations %v do not pass exactly the pod's flotilla.test/* ones", spec.Annotations)
	}

	defID := p.runPod(ctx, t, podCfg("default"))
	p.startContainer(ctx, t, defID, podCfg("default"), ctrCfg)
	if c := calls(); strings.Contains(c, defID) {
		t.Errorf("the default handler's pod ran through runc-alt:\n%s", c)
	}
	if pst, err := p.rt.PodSandboxStatus(ctx, defID, false); err != nil || pst.GetStatus().GetRuntimeHandler() != "" {
		t.Errorf("PodSandboxStatus of the default pod: handler %q, %v", pst.GetStatus().GetRuntimeHandler(), err)
	}
}

func runcVersion(runc string) string {
	out, _ := exec.Command(runc, "--version").Output()
	first, _, _ := strings.Cut(string(out), "\n")
	return first
}
