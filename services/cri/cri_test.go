// End-to-end tests of the cri service: a real flotillad, the cri binary
// started by hand beside it, Debian's docker-registry serving a
// locally built busybox image, and the kubelet's own CRI client. They need
// root (flotillad mounts overlays) and skip with a message otherwise.
package cri_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"go.opentelemetry.io/otel/trace/noop"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/flotilla-project/flotilla/internal/testimage"
	"github.com/flotilla-project/flotilla/internal/testregistry"
)

// binDir holds flotillad, the service binaries and flotilla-cri:
// $FLOTILLA_BIN, or a fresh build made by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		// The tests skip themselves; building would be wasted.
		return m.Run()
	}
	binDir = os.Getenv("FLOTILLA_BIN")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "flotilla-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("make", "-C", "../..", "build", "BIN="+dir)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building flotilla binaries failed:", err)
			return 1
		}
		binDir = dir
	}
	return m.Run()
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cri end-to-end tests start flotillad and need root")
	}
}

func requireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: install Debian's %s (make test-deps)", name, pkg)
	}
	return p
}

// syncBuffer collects a process's output for the test log.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProcess runs cmd until the test ends, then stops it with SIGTERM
// (SIGKILL after 20s) and logs its output if the test failed.
func startProcess(t *testing.T, name string, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return out
}

func waitFor(t *testing.T, what string, out *syncBuffer, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 30s; output:\n%s", what, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// env is a running flotillad with the cri service beside it.
type env struct {
	dir     string
	address string // flotillad's socket
	cri     string // the cri service's socket
	criOut  *syncBuffer
}

// newEnv starts flotillad in temp dirs and flotilla-cri standalone beside
// it, given the sockets of the services it calls and of the gateway, with
// the given extra --option values.
func newEnv(t *testing.T, criOptions ...string) *env {
	t.Helper()
	requireRoot(t)
	// Unix socket paths must stay short: keep the directory near /tmp.
	dir, err := os.MkdirTemp("", "flcri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e := &env{
		dir:     dir,
		address: filepath.Join(dir, "state", "flotilla.sock"),
		cri:     filepath.Join(dir, "state", "cri.sock"),
	}
	fd := exec.Command(filepath.Join(binDir, "flotillad"),
		"--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"),
		"--address", e.address, "--log-level", "debug")
	fdOut := startProcess(t, "flotillad", fd)
	waitFor(t, "flotillad ready", fdOut, func() bool { return strings.Contains(fdOut.String(), "flotillad ready") })

	sock := func(name string) string { return filepath.Join(dir, "state", name+".sock") }
	args := []string{
		"--socket", e.cri,
		"--root", filepath.Join(dir, "root", "cri"),
		"--state", filepath.Join(dir, "state", "cri"),
		"--log-level", "debug",
		"--gateway", e.address,
		"--dep", "metadata=" + sock("metadata"),
		"--dep", "tasks=" + sock("tasks"),
		"--dep", "content=" + sock("content"),
		"--snapshotter", "overlayfs=" + sock("snapshotter-overlayfs"),
		"--snapshotter", "native=" + sock("snapshotter-native"),
		"--option", "cni.conf_dir=" + filepath.Join(dir, "cni"),
	}
	for _, o := range criOptions {
		args = append(args, "--option", o)
	}
	criOut := startProcess(t, "flotilla-cri", exec.Command(filepath.Join(binDir, "flotilla-cri"), args...))
	waitFor(t, "flotilla-cri serving", criOut, func() bool { return strings.Contains(criOut.String(), "serving") })
	e.criOut = criOut
	return e
}

func (e *env) imageService(t *testing.T) internalapi.ImageManagerService {
	t.Helper()
	ctx := context.Background()
	svc, err := remote.NewRemoteImageService(ctx, "unix://"+e.cri, 10*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatalf("kubelet's CRI image client: %v", err)
	}
	return svc
}

func (e *env) runtimeService(t *testing.T) internalapi.RuntimeService {
	t.Helper()
	svc, err := remote.NewRemoteRuntimeService(context.Background(), "unix://"+e.cri, 10*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatalf("kubelet's CRI runtime client: %v", err)
	}
	return svc
}

func (e *env) containerd(t *testing.T) *containerd.Client {
	t.Helper()
	c, err := containerd.New(e.address, containerd.WithDefaultNamespace("k8s.io"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// registry is Debian's docker-registry serving on an address of ip.
type registry struct {
	host string // host:port
	reg  *testregistry.Registry
}

// startRegistry runs docker-registry on ip with storage in a temp dir.
func startRegistry(t *testing.T, ip string) *registry {
	t.Helper()
	requireTool(t, "docker-registry", "docker-registry")
	reg, err := testregistry.Start(context.Background(), testregistry.Options{Dir: t.TempDir(), IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		reg.Close()
		if t.Failed() {
			t.Logf("docker-registry output:\n%s", reg.Log())
		}
	})
	return &registry{host: reg.Host, reg: reg}
}

// push uploads img as repo:tag, its manifest unchanged, and returns the
// image's reference.
func (r *registry) push(t *testing.T, img *testimage.Image, repo, tag string) string {
	t.Helper()
	ref, err := r.reg.PushAsIs(img, repo, tag)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func busybox(t *testing.T) *testimage.Image {
	t.Helper()
	if _, err := testimage.BusyboxPath(); err != nil {
		t.Skip(err)
	}
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestImageLifecycleThroughKubeletClient(t *testing.T) {
	img := busybox(t)
	reg := startRegistry(t, "127.0.0.1")
	ref := reg.push(t, img, "flotilla/busybox", "test")
	e := newEnv(t)
	images := e.imageService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	id, err := images.PullImage(ctx, &runtime.ImageSpec{Image: ref}, nil, nil)
	if err != nil {
		t.Fatalf("PullImage %s: %v", ref, err)
	}
	if want := img.Config.Digest.String(); id != want {
		t.Fatalf("PullImage returned image ref %s, want the config digest %s", id, want)
	}
	repoDigest := reg.host + "/flotilla/busybox@" + img.Manifest.Digest.String()

	list, err := images.ListImages(ctx, nil)
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	if len(list) != 1 {
		t.Fatalf("ListImages after one pull: %d images, want 1: %v", len(list), list)
	}
	got := list[0]
	if got.Id != id || !equal(got.RepoTags, []string{ref}) || !equal(got.RepoDigests, []string{repoDigest}) {
		t.Fatalf("ListImages: id %s tags %v digests %v; want %s [%s] [%s]", got.Id, got.RepoTags, got.RepoDigests, id, ref, repoDigest)
	}
	if got.Size == 0 {
		t.Errorf("ListImages: image size 0")
	}

	// Every form the kubelet or crictl name an image by finds it.
	for _, name := range []string{ref, id, repoDigest, strings.TrimPrefix(id, "sha256:")[:12]} {
		st, err := images.ImageStatus(ctx, &runtime.ImageSpec{Image: name}, true)
		if err != nil {
			t.Fatalf("ImageStatus %s: %v", name, err)
		}
		if st.GetImage().GetId() != id {
			t.Fatalf("ImageStatus %s: image %v, want %s", name, st.GetImage(), id)
		}
		var info struct {
			ChainID   string `json:"chainID"`
			ImageSpec struct {
				Config struct {
					Cmd []string `json:"Cmd"`
				} `json:"config"`
			} `json:"imageSpec"`
		}
		if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil {
			t.Fatalf("ImageStatus %s verbose info %q: %v", name, st.GetInfo()["info"], err)
		}
		if !strings.HasPrefix(info.ChainID, "sha256:") || !equal(info.ImageSpec.Config.Cmd, []string{"/bin/sh"}) {
			t.Fatalf("ImageStatus %s verbose info: %+v", name, info)
		}
	}
	if st, err := images.ImageStatus(ctx, &runtime.ImageSpec{Image: "no/such:image"}, false); err != nil || st.GetImage() != nil {
		t.Fatalf("ImageStatus of an unknown image: %v, %v; want no image and no error", st, err)
	}

	// The records are containerd's CRI's: containerd tools see them.
	client := e.containerd(t)
	recs, err := client.ImageService().List(namespaces.WithNamespace(ctx, "k8s.io"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range recs {
		names[r.Name] = true
		if r.Labels["io.cri-containerd.image"] != "managed" {
			t.Errorf("image record %s lacks io.cri-containerd.image=managed: %v", r.Name, r.Labels)
		}
	}
	for _, n := range []string{ref, repoDigest, id} {
		if !names[n] {
			t.Errorf("no image record %s in namespace k8s.io (have %v)", n, names)
		}
	}
	ci, err := client.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := ci.IsUnpacked(ctx, "overlayfs"); err != nil || !ok {
		t.Fatalf("image not unpacked into overlayfs: %v %v", ok, err)
	}

	fs, err := images.ImageFsInfo(ctx)
	if err != nil {
		t.Fatalf("ImageFsInfo: %v", err)
	}
	if len(fs.ImageFilesystems) != 1 || fs.ImageFilesystems[0].GetUsedBytes().GetValue() == 0 || fs.ImageFilesystems[0].GetInodesUsed().GetValue() == 0 {
		t.Fatalf("ImageFsInfo after an unpacked pull: %v", fs)
	}

	if err := images.RemoveImage(ctx, &runtime.ImageSpec{Image: ref}); err != nil {
		t.Fatalf("RemoveImage: %v", err)
	}
	if st, err := images.ImageStatus(ctx, &runtime.ImageSpec{Image: id}, false); err != nil || st.GetImage() != nil {
		t.Fatalf("ImageStatus after RemoveImage: %v, %v; want no image", st, err)
	}
	if list, err := images.ListImages(ctx, nil); err != nil || len(list) != 0 {
		t.Fatalf("ListImages after RemoveImage: %v, %v; want none", list, err)
	}
	if err := images.RemoveImage(ctx, &runtime.ImageSpec{Image: ref}); err != nil {
		t.Fatalf("RemoveImage of a removed image should succeed: %v", err)
	}
	if recs, err := client.ImageService().List(namespaces.WithNamespace(ctx, "k8s.io")); err != nil || len(recs) != 0 {
		t.Fatalf("image records left after RemoveImage: %v %v", recs, err)
	}
}

func TestConcurrentPullsOfOneImageAgree(t *testing.T) {
	img := busybox(t)
	reg := startRegistry(t, "127.0.0.1")
	ref := reg.push(t, img, "flotilla/busybox", "test")
	e := newEnv(t)
	images := e.imageService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const n = 4
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = images.PullImage(ctx, &runtime.ImageSpec{Image: ref}, nil, nil)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != img.Config.Digest.String() {
			t.Fatalf("pull %d of %d concurrent: %q, %v; want %s", i, n, ids[i], errs[i], img.Config.Digest)
		}
	}
	if list, err := images.ListImages(ctx, nil); err != nil || len(list) != 1 {
		t.Fatalf("ListImages after concurrent pulls: %v, %v; want one image", list, err)
	}
	// Whether the calls overlapped is up to the scheduler; the sharing
	// itself is proven by the server package's flight tests.
	t.Logf("%d of %d pulls shared another's download", strings.Count(e.criOut.String(), "shared=true"), n)
}

func TestPullFromInsecureRegistryNeedsTheOption(t *testing.T) {
	ip := nonLoopbackIP(t)
	img := busybox(t)
	reg := startRegistry(t, ip)
	ref := reg.push(t, img, "flotilla/busybox", "test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	secure := newEnv(t).imageService(t)
	if _, err := secure.PullImage(ctx, &runtime.ImageSpec{Image: ref}, nil, nil); err == nil {
		t.Fatalf("pull over plain HTTP from %s succeeded without insecure_registries", reg.host)
	}
	insecure := newEnv(t, `insecure_registries=["`+ip+`"]`).imageService(t)
	if id, err := insecure.PullImage(ctx, &runtime.ImageSpec{Image: ref}, nil, nil); err != nil || id != img.Config.Digest.String() {
		t.Fatalf("pull from %s listed in insecure_registries: %q, %v", reg.host, id, err)
	}
}

func TestRegistryMirrorFromHostsToml(t *testing.T) {
	img := busybox(t)
	reg := startRegistry(t, "127.0.0.1")
	reg.push(t, img, "flotilla/busybox", "test")
	certs := t.TempDir()
	// registry.example names no real host: only the mirror can serve it.
	hostDir := filepath.Join(certs, "registry.example")
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = \"https://registry.example\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", reg.host)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	images := newEnv(t, "registry.config_path="+certs).imageService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ref := "registry.example/flotilla/busybox:test"
	id, err := images.PullImage(ctx, &runtime.ImageSpec{Image: ref}, nil, nil)
	if err != nil || id != img.Config.Digest.String() {
		t.Fatalf("pull %s through the mirror in hosts.toml: %q, %v", ref, id, err)
	}
	st, err := images.ImageStatus(ctx, &runtime.ImageSpec{Image: ref}, false)
	if err != nil || !equal(st.GetImage().GetRepoTags(), []string{ref}) {
		t.Fatalf("ImageStatus %s: %v, %v; want it tagged with the name pulled, not the mirror's", ref, st, err)
	}
}

func TestRuntimeReportsVersionAndStatus(t *testing.T) {
	e := newEnv(t)
	rt := e.runtimeService(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := rt.Version(ctx, "0.1.0")
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v.RuntimeName != "flotilla" || v.RuntimeApiVersion != "v1" || v.RuntimeVersion == "" {
		t.Fatalf("Version: %v", v)
	}

	cond := func() map[string]*runtime.RuntimeCondition {
		st, err := rt.Status(ctx, false)
		if err != nil {
			t.Fatalf("Status: %v", err)
		}
		m := map[string]*runtime.RuntimeCondition{}
		for _, c := range st.GetStatus().GetConditions() {
			m[c.Type] = c
		}
		return m
	}
	c := cond()
	if !c[runtime.RuntimeReady].GetStatus() {
		t.Fatalf("RuntimeReady: %v", c[runtime.RuntimeReady])
	}
	if n := c[runtime.NetworkReady]; n.GetStatus() || n.GetReason() == "" {
		t.Fatalf("NetworkReady without a CNI config: %v; want false with a reason", n)
	}
	cni := filepath.Join(e.dir, "cni")
	if err := os.MkdirAll(cni, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cni, "10-bridge.conflist"), []byte(`{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := cond()[runtime.NetworkReady]; !n.GetStatus() {
		t.Fatalf("NetworkReady with a CNI config: %v", n)
	}
}

func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address to serve a registry that is not localhost")
	return ""
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
