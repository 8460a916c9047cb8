package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/cninet"
	"github.com/flotilla-project/flotilla/internal/testimage"
)

// The kubelet the end-to-end test runs: k8s.io/kubernetes at
// kubeletVersion, its staging modules (k8s.io/api, client-go, ...) at the
// published kubeletStagingVersion.
const (
	kubeletVersion        = "v1.37.2"
	kubeletStagingVersion = "v0.37.2"
)

// The kubelet test's network: a bridge and subnet of its own, so it can
// run beside the other CRI tests' leftovers.
const (
	kubeletBridge = "flkubelet0"
	kubeletSubnet = "10.199.80.0/24"
)

// kubeletNodeName is the node the kubelet calls itself; static pods are
// named <manifest name>-<node name>.
const kubeletNodeName = "flotilla-node"

// kubeletPodManifest is the static pod: two containers, one printing a
// line for the log check, one with an exec liveness and readiness probe
// (the readiness one reading a file the test removes and puts back).
const kubeletPodManifest = `apiVersion: v1
kind: Pod
metadata: {name: e2e, namespace: default}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: hello
    image: %[1]s
    command: ["sh", "-c", "echo hello-from-kubelet; sleep 3600"]
  - name: probed
    image: %[1]s
    command: ["sh", "-c", "touch /tmp/ready; sleep 3600"]
    livenessProbe: {exec: {command: ["true"]}, periodSeconds: 2}
    readinessProbe: {exec: {command: ["cat", "/tmp/ready"]}, periodSeconds: 1}
`

// kubeletPodName is the static pod's name as the kubelet reports it.
const kubeletPodName = "e2e-" + kubeletNodeName

// TestKubeletRunsStaticPods runs a real kubelet (v1.37.2, built from the
// Go module proxy; FLOTILLA_KUBELET names a prebuilt one), standalone
// with static pods, on Flotilla's CRI, the way a node runs: cgroupfs
// driver, images pulled through the CRI from a local registry, a static
// pause image, pods on a CNI bridge. The kubelet changes the host's
// sysctls and iptables; the test puts both back.
func TestKubeletRunsStaticPods(t *testing.T) {
	requireCRIPods(t)
	kubelet := buildKubelet(t)
	t.Logf("kubelet %s: %s", kubelet, kubeletVersionOf(kubelet))
	n := startKubeletNode(t, kubelet)

	t.Run("Lifecycle", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		k := n.startKubelet(t, "")
		n.addPod(t)
		pod := k.waitPod(t, 90*time.Second, "the pod running with both containers ready", func(p *kubeletPod) bool { return p.running(2) })
		n.putBackSysctls(t)
		if _, subnet, _ := net.ParseCIDR(kubeletSubnet); !subnet.Contains(net.ParseIP(pod.Status.PodIP)) {
			t.Errorf("pod IP %q is not on the bridge's subnet %s", pod.Status.PodIP, kubeletSubnet)
		}
		before := n.podState(ctx, t)

		// The containers' output lands where the kubelet reads logs from,
		// in the CRI log format.
		logPath := filepath.Join(n.podLogs, "default_"+kubeletPodName+"_"+pod.Metadata.UID, "hello", "0.log")
		waitFor(t, 10*time.Second, "the hello container's log line", func() bool {
			b, _ := os.ReadFile(logPath)
			return regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\S+ stdout F hello-from-kubelet$`).Match(b)
		})

		// Exec through the kubelet's server, both ways it offers: /run
		// (ExecSync) and /exec (the CRI streaming server behind the
		// kubelet, spoken to over WebSocket as kubectl exec does).
		if out, err := k.run("probed", "echo run-through-kubelet"); err != nil || out != "run-through-kubelet\n" {
			t.Errorf("/run: %q, %v; want run-through-kubelet", out, err)
		}
		s := k.exec(t, "hello", "sh", "-c", "echo out; echo err >&2; exit 3").readUntilClosed(t, 30*time.Second)
		if code, err := s.exitCode(); s.stdout() != "out\n" || s.stderr() != "err\n" || code != 3 {
			t.Errorf("/exec: stdout %q, stderr %q, exit %d (%v); want out, err, 3", s.stdout(), s.stderr(), code, err)
		}
		// The readiness probe runs: the container turns unready without
		// its file and ready again with it.
		k.exec(t, "probed", "rm", "/tmp/ready").readUntilClosed(t, 30*time.Second)
		k.waitPod(t, 20*time.Second, "probed unready without /tmp/ready", func(p *kubeletPod) bool { return p.ready("probed") == 0 })
		k.exec(t, "probed", "touch", "/tmp/ready").readUntilClosed(t, 30*time.Second)
		k.waitPod(t, 20*time.Second, "probed ready again", func(p *kubeletPod) bool { return p.running(2) })

		// A kill -9 of the cri process goes unnoticed: flotillad starts
		// it again, the pod keeps running, no container restarts.
		cri := n.d.servicePid("cri")
		if err := syscall.Kill(cri, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "a new cri process", func() bool {
			pid := n.d.servicePidOrZero("cri")
			return pid != 0 && pid != cri
		})
		for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			if p := k.pod(t); p == nil || !p.running(2) || p.restarts() != 0 {
				t.Fatalf("after cri was killed the pod changed: %s", p)
			}
		}
		if out, err := k.run("probed", "echo after-kill"); err != nil || out != "after-kill\n" {
			t.Errorf("/run after cri was killed: %q, %v", out, err)
		}
		if after := n.podState(ctx, t); !after.equal(before) {
			t.Errorf("after cri was killed the CRI shows %+v, before %+v", after, before)
		}

		// A restarted kubelet adopts the pod: no new sandbox, no
		// container started again.
		first := k
		k.stop(t)
		k = n.startKubelet(t, "")
		k.waitPod(t, 60*time.Second, "the pod adopted by the restarted kubelet", func(p *kubeletPod) bool { return p.running(2) })
		n.putBackSysctls(t)
		// Long enough for the kubelet to have synced the pod and acted
		// on anything it disliked.
		time.Sleep(5 * time.Second)
		if p := k.pod(t); p == nil || !p.running(2) || p.restarts() != 0 {
			t.Errorf("after the kubelet restarted: %s", p)
		}
		if after := n.podState(ctx, t); !after.equal(before) {
			t.Errorf("after the kubelet restarted the CRI shows %+v, before %+v", after, before)
		}

		// Without its manifest the pod goes, and leaves nothing.
		n.removePod(ctx, t, k)
		n.checkNothingLeft(t, before)
		// Without feature gates, the kubelet needs nothing the CRI lacks.
		for _, k := range []*kubeletProc{first, k} {
			if lines := k.unimplemented(); len(lines) > 0 {
				t.Errorf("the kubelet found CRI methods missing:\n%s", strings.Join(lines, "\n"))
			}
		}
	})

	t.Run("CRIStatsAndListStreaming", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		k := n.startKubelet(t, "featureGates: {PodAndContainerStatsFromCRI: true, CRIListStreaming: true}")
		n.addPod(t)
		k.waitPod(t, 90*time.Second, "the pod running with both containers ready", func(p *kubeletPod) bool { return p.running(2) })
		n.putBackSysctls(t)
		n.podState(ctx, t)
		// Stats from the CRI: /stats/summary and /metrics/resource
		// (the eviction manager asks every 10 s besides), metrics from
		// the CRI: /metrics/cadvisor; PLEG's relist every second lists
		// through the streaming calls.
		var summary kubeletSummary
		var last string
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, err := k.get("/stats/summary")
			last = fmt.Sprintf("%v: %.2000s", err, b)
			if err == nil && json.Unmarshal(b, &summary) == nil &&
				summary.containerStats(kubeletPodName, "hello") && summary.containerStats(kubeletPodName, "probed") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("/stats/summary has no CPU and memory figures of both containers: %s", last)
				break
			}
			time.Sleep(time.Second)
		}
		for path, want := range map[string]string{
			"/metrics/resource": `container_cpu_usage_seconds_total{container="hello"`,
			"/metrics/cadvisor": `container="hello"`,
		} {
			if b, err := k.get(path); err != nil || !strings.Contains(string(b), want) {
				t.Errorf("%s has no figure of the hello container (%s): %v; its container series:\n%s", path, want, err, containerSeries(b))
			}
		}
		time.Sleep(3 * time.Second)
		if lines := k.unimplemented(); len(lines) > 0 {
			t.Errorf("the kubelet found CRI methods missing:\n%s", strings.Join(lines, "\n"))
		}
		// The pod goes with its manifest; its sandbox, which the
		// kubelet removes a minute later, goes with the node's cleanup.
		if err := os.Remove(filepath.Join(n.manifests, "e2e.yaml")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "the pod and its containers gone", func() bool {
			cs, err := n.rt.ListContainers(ctx, nil)
			return k.pod(t) == nil && err == nil && len(cs) == 0
		})
	})
}

// kubeletNode is a Flotilla the kubelet runs on: the daemon, its CNI
// network, a registry with busybox and a pause image, and the
// directories the kubelet works in.
type kubeletNode struct {
	d       *daemon
	rt      internalapi.RuntimeService
	kubelet string
	// work holds the kubelet's root and certificate directories, its
	// configuration, and manifests/, the static pod directory.
	work      string
	manifests string
	podLogs   string
	ipamDir   string
	network   cninet.Bridge
	busybox   string
	// sysctls are the values of the sysctls the kubelet tunes, from
	// before it first ran.
	sysctls map[string]string
}

// kubeletSysctls are the sysctls the kubelet sets when it starts (unless
// protectKernelDefaults): its containerManager's desired kernel state.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

func startKubeletNode(t *testing.T, kubelet string) *kubeletNode {
	t.Helper()
	work, err := os.MkdirTemp("", "flk")
	if err != nil {
		t.Fatal(err)
	}
	n := &kubeletNode{
		kubelet:   kubelet,
		work:      work,
		manifests: filepath.Join(work, "manifests"),
		podLogs:   filepath.Join(work, "podlogs"),
		ipamDir:   filepath.Join(work, "ipam"),
		network:   cninet.Bridge{Name: "flotilla-kubelet", Bridge: kubeletBridge, Subnet: kubeletSubnet},
		sysctls:   map[string]string{},
	}
	if err := os.MkdirAll(n.manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmountBelow(t, work)
		_ = os.RemoveAll(work)
	})
	reg := startPodRegistry(t)
	bb, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	n.busybox = reg.push(t, bb, nil, "library/busybox", "1.36")
	pause := pushPauseImage(t, reg)

	cniDir := filepath.Join(work, "cni")
	writePodNetwork(t, cniDir, n.ipamDir, n.network)
	n.restoreHostAfter(t)
	n.d = newDaemon(t, withConfig(fmt.Sprintf(`[services.cri.options]
sandbox_image = %q
cni_conf_dir = %q
stream_server_address = "127.0.0.1"
stream_server_port = "0"
`, pause, cniDir))).start()
	n.rt, _ = criClients(t, n.d)
	// Whatever a failed test left running goes before the daemon stops.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pods, _ := n.rt.ListPodSandbox(ctx, nil)
		for _, p := range pods {
			_ = n.rt.StopPodSandbox(ctx, p.GetId())
			if err := n.rt.RemovePodSandbox(ctx, p.GetId()); err != nil {
				t.Logf("cleanup: RemovePodSandbox %s: %v", p.GetId(), err)
			}
		}
	})
	return n
}

// pushPauseImage pushes a pause image as registry.k8s.io/pause is: one
// layer holding a static /pause, run as 65535.
func pushPauseImage(t *testing.T, reg *podRegistry) string {
	t.Helper()
	pause := buildStatic(t, "pause", critestPause)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "pause", Mode: 0o755, Size: int64(len(pause)),
		ModTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(pause); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer := buf.Bytes()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config:   ocispec.ImageConfig{Entrypoint: []string{"/pause"}, User: "65535:65535"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{desc.Digest}},
	}
	return reg.pushImage(t, cfg, []ocispec.Descriptor{desc}, map[digest.Digest][]byte{desc.Digest: layer}, "pause", "3.10")[0]
}

// addPod puts the static pod's manifest in the kubelet's directory.
func (n *kubeletNode) addPod(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.manifests, "e2e.yaml"), []byte(fmt.Sprintf(kubeletPodManifest, n.busybox)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// removePod removes the manifest and waits for the kubelet to remove the
// pod, its containers and its sandbox: the sandbox goes at the kubelet's
// next garbage collection, every minute.
func (n *kubeletNode) removePod(ctx context.Context, t *testing.T, k *kubeletProc) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.manifests, "e2e.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 100*time.Second, "the pod, its containers and its sandbox gone", func() bool {
		if k.pod(t) != nil {
			return false
		}
		pods, err := n.rt.ListPodSandbox(ctx, nil)
		if err != nil || len(pods) > 0 {
			return false
		}
		cs, err := n.rt.ListContainers(ctx, nil)
		return err == nil && len(cs) == 0
	})
}

// criPodState is what the CRI shows of the pod: its sandbox, the network
// namespace it runs in, and its containers by name.
type criPodState struct {
	sandboxes  []string
	netns      string
	containers map[string]string
}

func (s criPodState) equal(o criPodState) bool {
	return slices.Equal(s.sandboxes, o.sandboxes) && s.netns == o.netns && fmt.Sprint(s.containers) == fmt.Sprint(o.containers)
}

func (n *kubeletNode) podState(ctx context.Context, t *testing.T) criPodState {
	t.Helper()
	s := criPodState{containers: map[string]string{}}
	pods, err := n.rt.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	for _, p := range pods {
		s.sandboxes = append(s.sandboxes, p.GetId())
	}
	if len(s.sandboxes) != 1 {
		t.Fatalf("the CRI lists %d sandboxes, want the pod's one: %v", len(s.sandboxes), s.sandboxes)
	}
	st, err := n.rt.PodSandboxStatus(ctx, s.sandboxes[0], true)
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	var info struct {
		NetNamespacePath string `json:"netNamespacePath"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.NetNamespacePath == "" {
		t.Fatalf("PodSandboxStatus info %q: no network namespace path (%v)", st.GetInfo()["info"], err)
	}
	s.netns = info.NetNamespacePath
	cs, err := n.rt.ListContainers(ctx, nil)
	if err != nil {
		t.Fatalf("ListContainers: %v", err)
	}
	for _, c := range cs {
		if c.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s (%s) is %s", c.GetMetadata().GetName(), c.GetId(), c.GetState())
		}
		s.containers[c.GetMetadata().GetName()] = c.GetId()
	}
	return s
}

// checkNothingLeft checks that the pod that was s left nothing behind:
// no container in containerd's view, no network namespace, no mount, no
// address leased on the bridge network.
func (n *kubeletNode) checkNothingLeft(t *testing.T, s criPodState) {
	t.Helper()
	if out := n.d.mustCtr("-n", "k8s.io", "containers", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left in k8s.io: %s", out)
	}
	if _, err := os.Stat(s.netns); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("network namespace %s left: %v", s.netns, err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	ids := append([]string{s.sandboxes[0], s.netns}, mapValues(s.containers)...)
	for _, line := range strings.Split(string(mounts), "\n") {
		for _, id := range ids {
			if strings.Contains(line, id) {
				t.Errorf("mount left: %s", line)
			}
		}
	}
	leases, err := os.ReadDir(filepath.Join(n.ipamDir, n.network.Name))
	if err != nil {
		t.Fatalf("host-local's leases: %v", err)
	}
	for _, l := range leases {
		if net.ParseIP(l.Name()) != nil {
			t.Errorf("address %s still leased in %s", l.Name(), filepath.Join(n.ipamDir, n.network.Name))
		}
	}
}

func mapValues(m map[string]string) []string {
	var v []string
	for _, s := range m {
		v = append(v, s)
	}
	return v
}

// restoreHostAfter records what the kubelet changes on the host and puts
// it back when the test ends: the sysctls it tunes, the iptables chains
// it creates (and the rules jumping to them; none with
// makeIPTablesUtilChains off, as here, but KUBE-IPTABLES-HINT,
// KUBE-KUBELET-CANARY and KUBE-FIREWALL with it on), and the directories
// it makes outside its root directory (/var/lib/kubelet/device-plugins
// is fixed).
func (n *kubeletNode) restoreHostAfter(t *testing.T) {
	t.Helper()
	for _, s := range kubeletSysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", s)); err == nil {
			n.sysctls[s] = strings.TrimSpace(string(b))
		}
	}
	type tool struct {
		bin    string
		chains map[string][]string
	}
	var tools []tool
	for _, bin := range []string{"iptables", "ip6tables"} {
		if p, err := exec.LookPath(bin); err == nil {
			tools = append(tools, tool{bin: p, chains: iptablesChains(p)})
		}
	}
	var newDirs []string
	for _, dir := range []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods"} {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			newDirs = append(newDirs, dir)
		}
	}
	t.Cleanup(func() {
		n.putBackSysctls(t)
		for _, tl := range tools {
			removeNewChains(t, tl.bin, tl.chains)
		}
		for _, dir := range newDirs {
			if err := os.RemoveAll(dir); err != nil {
				t.Errorf("remove %s: %v", dir, err)
			}
		}
	})
}

// putBackSysctls writes back the sysctls the kubelet changed. It runs as
// soon as the kubelet has run a pod (it tunes them once, as it starts):
// kernel.panic_on_oops=1 is no setting to leave on a shared machine for
// the length of a test.
func (n *kubeletNode) putBackSysctls(t *testing.T) {
	t.Helper()
	for s, v := range n.sysctls {
		p := filepath.Join("/proc/sys", s)
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) != v {
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				t.Errorf("put back %s=%s: %v", s, v, err)
			} else {
				t.Logf("put back %s=%s (the kubelet set %s)", s, v, strings.TrimSpace(string(b)))
			}
		}
	}
}

// iptablesChains lists the chains of each table.
func iptablesChains(bin string) map[string][]string {
	chains := map[string][]string{}
	for _, table := range []string{"filter", "nat", "mangle"} {
		out, err := exec.Command(bin, "-w", "-t", table, "-S").Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "-N" {
				chains[table] = append(chains[table], f[1])
			}
		}
	}
	return chains
}

// removeNewChains deletes the KUBE- chains that are not in before, and
// the rules of other chains that jump to them.
func removeNewChains(t *testing.T, bin string, before map[string][]string) {
	t.Helper()
	ipt := func(args ...string) {
		if out, err := exec.Command(bin, append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, out)
		}
	}
	for table, chains := range iptablesChains(bin) {
		var added []string
		for _, c := range chains {
			if strings.HasPrefix(c, "KUBE-") && !slices.Contains(before[table], c) {
				added = append(added, c)
			}
		}
		if len(added) == 0 {
			continue
		}
		out, _ := exec.Command(bin, "-w", "-t", table, "-S").Output()
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 || f[0] != "-A" || slices.Contains(added, f[1]) || !slices.Contains(added, f[len(f)-1]) || f[len(f)-2] != "-j" {
				continue
			}
			ipt(append([]string{"-t", table, "-D"}, f[1:]...)...)
		}
		for _, c := range added {
			ipt("-t", table, "-F", c)
		}
		for _, c := range added {
			ipt("-t", table, "-X", c)
		}
		t.Logf("removed the chains the kubelet added to %s's %s table: %s", filepath.Base(bin), table, strings.Join(added, ", "))
	}
}

// unmountBelow unmounts whatever is mounted under dir, deepest first.
func unmountBelow(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		t.Logf("cleanup: unmounting %s", p)
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

// kubeletProc is one run of the kubelet.
type kubeletProc struct {
	cmd                     *exec.Cmd
	done                    chan struct{}
	log                     string
	port, readOnly, healthz int
	https                   *http.Client
}

// startKubelet runs the kubelet, standalone, on the node, with extra
// lines of KubeletConfiguration, and stops it when the test ends.
func (n *kubeletNode) startKubelet(t *testing.T, extra string) *kubeletProc {
	t.Helper()
	k := &kubeletProc{
		done: make(chan struct{}),
		log:  filepath.Join(n.work, fmt.Sprintf("kubelet-%d.log", time.Now().UnixNano())),
		// The kubelet serves its API on a self-signed certificate.
		https: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}},
	}
	k.port, k.readOnly, k.healthz = freePort(t), freePort(t), freePort(t)
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%[1]s
imageServiceEndpoint: unix://%[1]s
staticPodPath: %[2]s
fileCheckFrequency: 1s
syncFrequency: 10s
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
address: 127.0.0.1
port: %[3]d
readOnlyPort: %[4]d
healthzBindAddress: 127.0.0.1
healthzPort: %[5]d
podLogsDir: %[6]s
volumePluginDir: %[7]s
makeIPTablesUtilChains: false
protectKernelDefaults: false
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
%[8]s
`, n.d.address, n.manifests, k.port, k.readOnly, k.healthz, n.podLogs, filepath.Join(n.work, "volume-plugins"), extra)
	cfgPath := filepath.Join(n.work, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(k.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	k.cmd = exec.Command(n.kubelet, "--config="+cfgPath, "--root-dir="+filepath.Join(n.work, "kubelet"),
		"--cert-dir="+filepath.Join(n.work, "pki"), "--hostname-override="+kubeletNodeName, "--v=2")
	k.cmd.Stdout, k.cmd.Stderr = logFile, logFile
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = k.cmd.Wait(); close(k.done) }()
	t.Cleanup(func() {
		k.stop(t)
		if t.Failed() {
			t.Logf("kubelet log %s (end):\n%s", k.log, tail(k.log, 80))
		}
	})
	waitFor(t, 60*time.Second, "the kubelet's healthz", func() bool {
		select {
		case <-k.done:
			t.Fatalf("the kubelet exited: %s\n%s", k.cmd.ProcessState, tail(k.log, 40))
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", k.healthz))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return k
}

// stop stops the kubelet: TERM, then KILL. The pods stay as they are.
func (k *kubeletProc) stop(t *testing.T) {
	select {
	case <-k.done:
		return
	default:
	}
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.done:
	case <-time.After(15 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.done
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// kubeletPod is what the kubelet's read-only /pods says of a pod.
type kubeletPod struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Status struct {
		Phase             string `json:"phase"`
		PodIP             string `json:"podIP"`
		ContainerStatuses []struct {
			Name         string `json:"name"`
			Ready        bool   `json:"ready"`
			RestartCount int    `json:"restartCount"`
			ContainerID  string `json:"containerID"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

// running: the pod runs with ready containers ready.
func (p *kubeletPod) running(ready int) bool {
	n := 0
	for _, c := range p.Status.ContainerStatuses {
		if c.Ready {
			n++
		}
	}
	return p.Status.Phase == "Running" && n == ready
}

// ready is 1 when the container name is ready, 0 otherwise.
func (p *kubeletPod) ready(name string) int {
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == name && c.Ready {
			return 1
		}
	}
	return 0
}

func (p *kubeletPod) restarts() int {
	n := 0
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

func (p *kubeletPod) String() string {
	if p == nil {
		return "no pod"
	}
	b, _ := json.Marshal(p.Status)
	return string(b)
}

// pod is the static pod as the kubelet's /pods lists it, or nil.
func (k *kubeletProc) pod(t *testing.T) *kubeletPod {
	t.Helper()
	b, err := k.getReadOnly("/pods")
	if err != nil {
		return nil
	}
	var list struct {
		Items []*kubeletPod `json:"items"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("/pods: %v: %s", err, b)
	}
	for _, p := range list.Items {
		if p.Metadata.Name == kubeletPodName {
			return p
		}
	}
	return nil
}

// waitPod waits until the pod is there and cond holds of it.
func (k *kubeletProc) waitPod(t *testing.T, timeout time.Duration, what string, cond func(*kubeletPod) bool) *kubeletPod {
	t.Helper()
	var p *kubeletPod
	deadline := time.Now().Add(timeout)
	for {
		if p = k.pod(t); p != nil && cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, p)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (k *kubeletProc) getReadOnly(path string) ([]byte, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", k.readOnly, path))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// get reads path from the kubelet's authenticated API (anonymous here).
func (k *kubeletProc) get(path string) ([]byte, error) {
	resp, err := k.https.Get(fmt.Sprintf("https://127.0.0.1:%d%s", k.port, path))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// run runs cmd (words split at spaces) in the pod's container through the
// kubelet's /run, which calls the CRI's ExecSync, and returns its output.
func (k *kubeletProc) run(container, cmd string) (string, error) {
	u := fmt.Sprintf("https://127.0.0.1:%d/run/default/%s/%s?cmd=%s", k.port, kubeletPodName, container, url.QueryEscape(cmd))
	resp, err := k.https.Post(u, "", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("POST /run: %s: %s", resp.Status, b)
	}
	return string(b), err
}

// exec starts cmd in the pod's container through the kubelet's /exec
// over WebSocket, v5.channel.k8s.io as kubectl speaks it: the kubelet
// asks the CRI for a streaming URL and relays the session to it.
func (k *kubeletProc) exec(t *testing.T, container string, cmd ...string) *streamSession {
	t.Helper()
	// The kubelet's names for the streams: output, error (and input, tty).
	q := url.Values{"output": {"1"}, "error": {"1"}, "command": cmd}
	u := fmt.Sprintf("wss://127.0.0.1:%d/exec/default/%s/%s?%s", k.port, kubeletPodName, container, q.Encode())
	dialer := websocket.Dialer{
		Subprotocols:     []string{"v5.channel.k8s.io"},
		HandshakeTimeout: 10 * time.Second,
		TLSClientConfig:  &tls.Config{InsecureSkipVerify: true},
	}
	conn, resp, err := dialer.Dial(u, nil)
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = resp.Status + ": " + string(b)
		}
		t.Fatalf("/exec %q: %v %s", cmd, err, body)
	}
	return &streamSession{conn: conn, channels: map[byte]*bytes.Buffer{0: {}, 1: {}, 2: {}, 3: {}}}
}

// unimplemented lists the kubelet's log lines saying the runtime lacks a
// CRI method, or that the kubelet fell back for want of one.
func (k *kubeletProc) unimplemented() []string {
	f, err := os.Open(k.log)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	re := regexp.MustCompile(`(?i)unimplemented|not implemented|falling back`)
	seen := map[string]bool{}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !re.MatchString(line) {
			continue
		}
		// Once per message, whatever its time stamp.
		key := line
		if i := strings.Index(line, "]"); i >= 0 {
			key = line[i+1:]
		}
		if !seen[key] {
			seen[key] = true
			lines = append(lines, line)
		}
	}
	return lines
}

// containerSeries is the first few container_ lines of a metrics page.
func containerSeries(page []byte) string {
	var lines []string
	for _, l := range strings.Split(string(page), "\n") {
		if strings.HasPrefix(l, "container_") && len(lines) < 10 {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "(none)"
	}
	return strings.Join(lines, "\n")
}

// kubeletSummary is the part of /stats/summary the test reads.
type kubeletSummary struct {
	Pods []struct {
		PodRef struct {
			Name string `json:"name"`
		} `json:"podRef"`
		Containers []struct {
			Name string `json:"name"`
			CPU  *struct {
				UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
			} `json:"cpu"`
			Memory *struct {
				WorkingSetBytes *uint64 `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"containers"`
	} `json:"pods"`
}

// containerStats: the summary has CPU and memory figures of the
// container of the pod.
func (s *kubeletSummary) containerStats(pod, container string) bool {
	for _, p := range s.Pods {
		if p.PodRef.Name != pod {
			continue
		}
		for _, c := range p.Containers {
			if c.Name == container && c.CPU != nil && c.CPU.UsageCoreNanoSeconds != nil && *c.CPU.UsageCoreNanoSeconds > 0 &&
				c.Memory != nil && c.Memory.WorkingSetBytes != nil && *c.Memory.WorkingSetBytes > 0 {
				return true
			}
		}
	}
	return false
}

// kubeletTool is the kubelet: k8s.io/kubernetes replaces its staging
// modules with ./staging paths, which a module depending on it cannot
// follow, so the build module maps each of them to the published
// k8s.io/<name> at kubeletStagingVersion. About 13 minutes on 2 cores.
var kubeletTool = goTool{
	name: "kubelet " + kubeletVersion, dir: "kubelet-" + kubeletVersion, file: "kubelet", env: "FLOTILLA_KUBELET",
	timeout: 40 * time.Minute,
	build: func(g *goBuild, out string) error {
		if err := g.initModule("flotilla-tests/kubelet"); err != nil {
			return err
		}
		k8s, err := g.moduleDir("k8s.io/kubernetes@" + kubeletVersion)
		if err != nil {
			return err
		}
		gomod, err := os.ReadFile(filepath.Join(k8s, "go.mod"))
		if err != nil {
			return err
		}
		edit := []string{"mod", "edit"}
		for _, m := range regexp.MustCompile(`(?m)^\s*(k8s\.io/\S+)\s+=>\s+\./staging/`).FindAllStringSubmatch(string(gomod), -1) {
			edit = append(edit, "-replace", m[1]+"="+m[1]+"@"+kubeletStagingVersion)
		}
		if len(edit) == 2 {
			return fmt.Errorf("k8s.io/kubernetes@%s's go.mod replaces no staging module", kubeletVersion)
		}
		if _, err := g.run("", nil, edit...); err != nil {
			return err
		}
		if _, err := g.run("", nil, "get", "k8s.io/kubernetes/cmd/kubelet@"+kubeletVersion); err != nil {
			return err
		}
		// The version stamp Kubernetes' own build gives (hack/lib/version.sh),
		// so that --version and the logs say which kubelet this is.
		ldflags := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%[1]s -X k8s.io/component-base/version.gitMajor=%[2]s "+
			"-X k8s.io/component-base/version.gitMinor=%[3]s -X k8s.io/component-base/version.gitTreeState=clean",
			kubeletVersion, strings.Split(kubeletVersion[1:], ".")[0], strings.Split(kubeletVersion, ".")[1])
		_, err = g.run("", nil, "build", "-ldflags", ldflags, "-o", out, "k8s.io/kubernetes/cmd/kubelet")
		return err
	},
}

// buildKubelet returns the kubelet to run: $FLOTILLA_KUBELET, or the one
// built once from the Go module proxy.
func buildKubelet(t *testing.T) string {
	t.Helper()
	start := time.Now()
	bin, err := kubeletTool.path()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Logf("built kubelet %s in %s (once: it is cached)", kubeletVersion, d.Round(time.Second))
	}
	return bin
}

// kubeletVersionOf is the version a kubelet binary reports, for the log.
func kubeletVersionOf(bin string) string {
	out, _ := exec.Command(bin, "--version").Output()
	return strings.TrimSpace(string(out))
}
