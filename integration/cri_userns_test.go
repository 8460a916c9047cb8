package integration

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// usernsRuncVersion is the runc the user namespace tests run pods with:
// Debian's (1.1.5) cannot make idmapped mounts.
const usernsRuncVersion = "v1.5.3"

// runcTool is runc with seccomp, which needs cgo, pkg-config and
// libseccomp-dev.
var runcTool = goTool{
	name: "runc " + usernsRuncVersion, dir: "runc-" + usernsRuncVersion, file: "runc", env: "FLOTILLA_RUNC",
	timeout: 10 * time.Minute,
	build: func(g *goBuild, out string) error {
		dir, err := g.moduleDir("github.com/opencontainers/runc@" + usernsRuncVersion)
		if err != nil {
			return err
		}
		_, err = g.run(dir, []string{"CGO_ENABLED=1"}, "build", "-trimpath", "-tags", "seccomp", "-o", out, ".")
		return err
	},
}

// buildRunc returns runc v1.5.3 ($FLOTILLA_RUNC, or built once from the Go
// module proxy). It skips when the build's tools are missing.
func buildRunc(t *testing.T) string {
	t.Helper()
	if os.Getenv(runcTool.env) == "" {
		requireTool(t, "pkg-config", "pkg-config")
		if err := exec.Command("pkg-config", "--exists", "libseccomp").Run(); err != nil {
			t.Skip("building runc needs libseccomp's headers (apt-get install libseccomp-dev)")
		}
	}
	bin, err := runcTool.path()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// usernsHandler is the cri's config of a runtime handler, runc-userns,
// whose pods run on the runc at path, beside the default one.
func usernsHandler(runc string) string {
	return fmt.Sprintf("[services.cri.options.runtimes.runc-userns]\nruntime_type = \"io.containerd.runc.v2\"\n"+
		"[services.cri.options.runtimes.runc-userns.options]\nBinaryName = %q\n", runc)
}

// oldRunc says whether the host's runc (the default handler's) is one
// without idmapped mounts, as Debian's 1.1; its version line otherwise.
func oldRunc(t *testing.T) (bool, string) {
	runc := requireTool(t, "runc", "runc")
	v := runcVersion(runc)
	return strings.Contains(v, "version 1.1.") || strings.Contains(v, "version 1.0."), v
}

// allowRemappedRoot lets a user-namespaced container's root, an
// unprivileged user on the host, traverse the daemon's directory down to
// its rootfs, as it can on a node (/var/lib, /run); the test's temporary
// directory is private.
func allowRemappedRoot(t *testing.T, d *daemon) {
	t.Helper()
	if err := os.Chmod(d.dir, 0o711); err != nil {
		t.Fatal(err)
	}
}

// usernsOptions is a pod user namespace mapping IDs 0..size-1 to
// host..host+size-1.
func usernsOptions(host, size uint32) *runtimeapi.NamespaceOption {
	m := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: host, Length: size}}
	return &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: m, Gids: m}}
}

// TestCRIUserNamespacePod runs a pod with a user namespace of its own
// (UsernsOptions mode POD) on a runtime handler whose runc (1.5) can:
// its containers see the mapping in /proc/self/uid_map and share the
// pause container's user namespace; the image's files and the pod's
// files appear owned by root inside, through idmapped mounts, while on
// the host the snapshot's layers stay owned by root and what the
// container writes is owned by the mapped root. The default handler, on
// Debian's runc, refuses the same pod.
func TestCRIUserNamespacePod(t *testing.T) {
	requireCRIPods(t)
	runc := buildRunc(t)
	p := startCRIPods(t, podNetwork("flotilla-test"), "test", usernsHandler(runc))
	allowRemappedRoot(t, p.d)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	old, oldVersion := oldRunc(t)
	st, err := p.rt.Status(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, h := range st.GetRuntimeHandlers() {
		seen[h.GetName()] = true
		switch userns := h.GetFeatures().GetUserNamespaces(); {
		case h.GetName() == "runc-userns" && !userns:
			t.Errorf("Status: handler runc-userns does not report user namespaces with runc %s", usernsRuncVersion)
		case h.GetName() != "runc-userns" && old && userns:
			t.Errorf("Status: handler %q reports user namespaces on %s", h.GetName(), oldVersion)
		}
	}
	if !seen["runc-userns"] || !seen["runc"] {
		t.Errorf("Status lists handlers %v; want runc and runc-userns", seen)
	}
	p.pullImages(ctx, t)
	p.pullImages(ctx, t)

	const hostID, size = 200000, 65536
	ns := usernsOptions(hostID, size)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "userns", Namespace: "default", Uid: "uid-userns-1"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}},
	}
	if old {
		// The default handler's runc cannot: refused, naming the handler.
		_, err := p.rt.RunPodSandbox(ctx, podCfg, "")
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `runtime handler "runc"`) {
			t.Fatalf("RunPodSandbox with a user namespace on the default handler (%s): %v; want FailedPrecondition naming handler \"runc\"", oldVersion, err)
		}
	}
	podID, err := p.rt.RunPodSandbox(ctx, podCfg, "runc-userns")
	if err != nil {
		t.Fatalf("RunPodSandbox on runc-userns: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.rt.RemovePodSandbox(ctx, podID); err != nil {
			t.Logf("cleanup: RemovePodSandbox: %v", err)
		}
	})
	if pst, err := p.rt.PodSandboxStatus(ctx, podID, false); err != nil || pst.GetStatus().GetRuntimeHandler() != "runc-userns" {
		t.Errorf("PodSandboxStatus: handler %q, %v; want runc-userns", pst.GetStatus().GetRuntimeHandler(), err)
	}
	ctrCfg := func(name string) *runtimeapi.ContainerConfig {
		return &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
			Command:  []string{"sleep", "3600"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{UsernsOptions: ns.UsernsOptions},
			}},
		}
	}
	a := p.startContainer(ctx, t, podID, podCfg, ctrCfg("a"))
	b := p.startContainer(ctx, t, podID, podCfg, ctrCfg("b"))
	sh := func(id, script string) string {
		t.Helper()
		stdout, stderr, err := p.rt.ExecSync(ctx, id, []string{"sh", "-c", script}, 10*time.Second)
		if err != nil {
			t.Fatalf("exec %q: %v: %s%s", script, err, stdout, stderr)
		}
		return strings.TrimSpace(string(stdout) + string(stderr))
	}

	if got := strings.Fields(sh(a, "cat /proc/self/uid_map")); strings.Join(got, " ") != fmt.Sprintf("0 %d %d", hostID, size) {
		t.Errorf("/proc/self/uid_map in the container: %q; want the pod's mapping 0 %d %d", got, hostID, size)
	}
	if got := strings.Fields(sh(a, "cat /proc/self/gid_map")); strings.Join(got, " ") != fmt.Sprintf("0 %d %d", hostID, size) {
		t.Errorf("/proc/self/gid_map in the container: %q", got)
	}
	if ua, ub := sh(a, "readlink /proc/self/ns/user"), sh(b, "readlink /proc/self/ns/user"); ua != ub {
		t.Errorf("the pod's containers are in different user namespaces: %s and %s", ua, ub)
	}
	// The image's files and the pod's files, owned by root on the host,
	// are root's inside; so is what the pod's root writes.
	for _, f := range []string{"/bin/busybox", "/etc", "/etc/hosts", "/etc/resolv.conf"} {
		if got := sh(a, "stat -c %u:%g "+f); got != "0:0" {
			t.Errorf("%s in the container is owned by %s; want 0:0 (idmapped)", f, got)
		}
	}
	if got := sh(a, "echo hi > /written-by-root && mkdir -p /etc/new && stat -c %u:%g /written-by-root /etc/new"); got != "0:0\n0:0" {
		t.Errorf("files the container's root writes are owned by %q inside", got)
	}

	// On the host: no file of any snapshot's layers was chowned to the
	// mapped range, but what the container wrote (in its upper
	// directory) is owned by the mapped root.
	var layerFiles, written int
	err = filepath.WalkDir(p.d.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a snapshot removed meanwhile
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		uid := fi.Sys().(*syscall.Stat_t).Uid
		switch {
		case filepath.Base(path) == "written-by-root":
			written++
			if uid != hostID {
				t.Errorf("on the host, %s (written by the pod's root) is owned by %d; want %d", path, uid, hostID)
			}
		case strings.HasSuffix(path, "/fs/bin/busybox"):
			layerFiles++
			if uid != 0 {
				t.Errorf("on the host, the image's %s is owned by %d; want 0 (not chowned: idmapped)", path, uid)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if layerFiles == 0 || written == 0 {
		t.Errorf("found %d busybox layer files and %d files the container wrote under %s; the test looks in the wrong place", layerFiles, written, p.d.root)
	}

	// A container asking for another user namespace than its pod's is
	// refused, as in containerd.
	other := ctrCfg("other")
	other.Linux.SecurityContext.NamespaceOptions = usernsOptions(300000, size)
	if _, err := p.rt.CreateContainer(ctx, podID, other, podCfg); err == nil {
		t.Errorf("CreateContainer with a user namespace other than the pod's succeeded")
	}
	// And mode NODE, or a bad request, as containerd answers.
	for name, o := range map[string]*runtimeapi.UserNamespace{
		"container":         {Mode: runtimeapi.NamespaceMode_CONTAINER},
		"two mappings":      {Mode: runtimeapi.NamespaceMode_POD, Uids: []*runtimeapi.IDMapping{{HostId: 1000, Length: 10}, {HostId: 2000, Length: 10}}, Gids: []*runtimeapi.IDMapping{{HostId: 1000, Length: 10}}},
		"root not mapped":   {Mode: runtimeapi.NamespaceMode_POD, Uids: []*runtimeapi.IDMapping{{ContainerId: 1, HostId: 1000, Length: 10}}, Gids: []*runtimeapi.IDMapping{{ContainerId: 1, HostId: 1000, Length: 10}}},
		"node with mapping": {Mode: runtimeapi.NamespaceMode_NODE, Uids: []*runtimeapi.IDMapping{{HostId: 1000, Length: 10}}},
	} {
		cfg := &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "bad-userns", Namespace: "default", Uid: "uid-bad-" + strings.ReplaceAll(name, " ", "-")},
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{UsernsOptions: o}}},
		}
		if _, err := p.rt.RunPodSandbox(ctx, cfg, "runc-userns"); status.Code(err) != codes.InvalidArgument {
			t.Errorf("RunPodSandbox with user namespace %s: %v; want InvalidArgument", name, err)
		}
	}

	// Stopping the pod releases its pinned user namespace.
	if err := p.rt.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	pins, _ := filepath.Glob(filepath.Join(p.d.state, "*", "userns", "*"))
	more, _ := filepath.Glob(filepath.Join(p.d.state, "userns", "*"))
	if pins = append(pins, more...); len(pins) > 0 {
		t.Errorf("stopped pod left pinned user namespaces: %v", pins)
	}
}

// TestCRIUserNamespaceNeedsCapableRunc asks Debian's runc (1.1.5, the
// default handler's runtime) for a pod with a user namespace: it is
// refused with FailedPrecondition naming the handler, its runc and what
// it lacks, and Status does not claim the feature.
func TestCRIUserNamespaceNeedsCapableRunc(t *testing.T) {
	requireRoot(t)
	old, version := oldRunc(t)
	if !old {
		t.Skipf("the default runc is not one without idmapped mounts: %s", version)
	}
	d := newDaemon(t).start()
	rt, _ := criClients(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := rt.Status(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.GetRuntimeHandlers() {
		if h.GetFeatures() == nil {
			t.Errorf("Status: handler %q reports no features", h.GetName())
		}
		if h.GetFeatures().GetUserNamespaces() {
			t.Errorf("Status: handler %q reports user namespaces on %s", h.GetName(), version)
		}
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "userns", Namespace: "default", Uid: "uid-userns-old"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: usernsOptions(200000, 65536)}},
	}
	for _, handler := range []string{"", "runc"} {
		_, err = rt.RunPodSandbox(ctx, cfg, handler)
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("RunPodSandbox (handler %q) with a user namespace on %s: %v; want FailedPrecondition", handler, version, err)
		}
		for _, want := range []string{`runtime handler "runc"`, "cannot make idmapped mounts", "version 1.1", "runc 1.2 or later"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("RunPodSandbox (handler %q) refused with %q; want it to say %q", handler, err, want)
			}
		}
	}
	t.Logf("refused as expected: %v", err)
	pods, err := rt.ListPodSandbox(ctx, nil)
	if err != nil || len(pods) != 0 {
		t.Errorf("after the refusal, pods: %v, %v; want none", podSummary(pods), err)
	}
}
