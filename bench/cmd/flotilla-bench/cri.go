package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.opentelemetry.io/otel/trace/noop"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/flotilla-project/flotilla/internal/cninet"
	"github.com/flotilla-project/flotilla/internal/testimage"
	"github.com/flotilla-project/flotilla/internal/testregistry"
)

// criGroup is the -only name that selects every CRI workload; the daemons
// get their CRI configured only when one of them runs.
const criGroup = "cri"

// criCgroupParent is every bench pod's cgroup parent on both daemons (the
// kubelet would pass its pod cgroup); removed at the end once empty.
const criCgroupParent = "/flotilla-bench-cri"

// criCNIBinDir is Debian's containernetworking-plugins directory.
const criCNIBinDir = cninet.DebianBinDir

// criNetworks are the daemons' pod networks: the same bridge conflist
// except for the bridge's name and subnet, so that the two daemons' pods
// never share a bridge or an address range.
var criNetworks = map[string]struct{ bridge, subnet string }{
	"containerd": {"fbcri-c0", "10.199.91.0/24"},
	"flotilla":   {"fbcri-f0", "10.199.92.0/24"},
}

// criConfig is what a daemon's CRI is configured with: identical for both
// daemons but for the CNI conf dir, whose conflist names its own bridge.
type criConfig struct {
	sandboxImage string // the pause image, from the bench registry
	cniConfDir   string
	cniBinDir    string
	hostsDir     string // containerd-format hosts.toml tree: the registry is plain HTTP
	subnet       string
	bridge       string
}

// criEnv is what the cri workloads share across both daemons: the local
// registry and the images pushed to it, and each daemon's CNI config. It
// lives for the whole run, from before the daemons start (their configs
// point into it) until after they stopped.
type criEnv struct {
	busybox *testimage.Image
	pullMB  int64

	dir        string
	reg        *testregistry.Registry
	pauseRef   string
	busyboxRef string
	configs    map[string]*criConfig

	pullMu   sync.Mutex
	pullRefs map[int]string // cri-pull iteration -> an image no daemon has pulled

	// The realistic image, pushed for cri-pull-gosrc on first use.
	srcOnce sync.Once
	srcRefV string
	srcErr  error
}

// start runs the registry, pushes the pause and busybox images and writes
// each daemon's CNI and registry configuration.
func (e *criEnv) start(ctx context.Context, tmp string) error {
	if err := cninet.Plugins(criCNIBinDir, cninet.BridgePlugins...); err != nil {
		return err
	}
	var err error
	if e.dir, err = os.MkdirTemp(tmp, "fb-cri-"); err != nil {
		return err
	}
	// Both daemons pull the same images from it, so neither pull goes
	// further than loopback.
	if e.reg, err = testregistry.Start(ctx, testregistry.Options{Dir: e.dir}); err != nil {
		return fmt.Errorf("the cri workloads need a local registry: %w", err)
	}
	if e.busyboxRef, err = e.reg.Push(e.busybox, nil, "flotilla/busybox", "bench"); err != nil {
		return err
	}
	// The pause image: busybox's layer, sleeping as PID 1, as the
	// integration tests do it; the same image for both daemons.
	if e.pauseRef, err = e.reg.Push(e.busybox, func(c *ocispec.ImageConfig) {
		c.Entrypoint, c.Cmd = []string{"/bin/sleep", "2147483647"}, nil
	}, "flotilla/pause", "bench"); err != nil {
		return err
	}
	// The registry is plain HTTP: one hosts.toml, read by both daemons'
	// registry code (containerd's config_path format).
	hostsDir := filepath.Join(e.dir, "certs.d")
	hostDir := filepath.Join(hostsDir, e.reg.Host)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		return err
	}
	hosts := fmt.Sprintf("server = \"http://%[1]s\"\n\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", e.reg.Host)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		return err
	}
	e.configs = map[string]*criConfig{}
	for name, n := range criNetworks {
		if err := checkFreeNetwork(n.bridge, n.subnet); err != nil {
			return err
		}
		c := &criConfig{sandboxImage: e.pauseRef, cniConfDir: filepath.Join(e.dir, "net.d-"+name), cniBinDir: criCNIBinDir,
			hostsDir: hostsDir, subnet: n.subnet, bridge: n.bridge}
		network := cninet.Bridge{Name: "flotilla-bench", Bridge: n.bridge, Subnet: n.subnet, IPAMDir: filepath.Join(e.dir, "ipam-"+name)}
		if _, err := network.Write(c.cniConfDir); err != nil {
			return err
		}
		e.configs[name] = c
	}
	return nil
}

// checkFreeNetwork removes a bridge of ours that an interrupted run left
// (no pod of a live daemon can be on it: the daemons are not started yet)
// and refuses a subnet something else on the host routes.
func checkFreeNetwork(bridge, subnet string) error {
	if _, err := net.InterfaceByName(bridge); err == nil {
		fmt.Fprintf(os.Stderr, "removing bridge %s left by an earlier run\n", bridge)
		_ = exec.Command("ip", "link", "del", bridge).Run()
	}
	_, want, err := net.ParseCIDR(subnet)
	if err != nil {
		return err
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && (want.Contains(ipn.IP) || ipn.Contains(want.IP)) {
			return fmt.Errorf("the bench's pod subnet %s overlaps %s on this host", subnet, ipn)
		}
	}
	return nil
}

// pullRef returns the reference of cri-pull's image for iteration iter,
// pushing it on first use: busybox plus a random layer of its own seed, so
// every iteration pulls a layer neither daemon has.
func (e *criEnv) pullRef(iter int) (string, error) {
	e.pullMu.Lock()
	defer e.pullMu.Unlock()
	if ref, ok := e.pullRefs[iter]; ok {
		return ref, nil
	}
	tag := fmt.Sprintf("i%d", iter)
	if iter == warmupIter {
		tag = "warmup"
	}
	img, err := testimage.Busybox(testimage.WithName("docker.io/flotilla/bench:pull-"+tag),
		testimage.WithRandomLayer(e.pullMB<<20, int64(pullSeedBase+iter%1000)))
	if err != nil {
		return "", err
	}
	ref, err := e.reg.Push(img, nil, "flotilla/pull", tag)
	if err != nil {
		return "", err
	}
	if e.pullRefs == nil {
		e.pullRefs = map[int]string{}
	}
	e.pullRefs[iter] = ref
	return ref, nil
}

// pullSeedBase keeps cri-pull's random layers apart from unpack's.
const pullSeedBase = 5000

// close stops the registry and removes the bridges, the pods' cgroup parent
// and the temp directory. The daemons are stopped by then.
func (e *criEnv) close() {
	e.reg.Close()
	for _, n := range criNetworks {
		if _, err := net.InterfaceByName(n.bridge); err == nil {
			if out, err := exec.Command("ip", "link", "del", n.bridge).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "remove bridge %s: %v %s\n", n.bridge, err, out)
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", criCgroupParent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", criCgroupParent))
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
	if e.dir != "" {
		if err := os.RemoveAll(e.dir); err != nil {
			fmt.Fprintf(os.Stderr, "remove %s: %v\n", e.dir, err)
		}
	}
}

// criClients returns the kubelet's CRI clients on d, dialled on first use;
// the same code drives both daemons.
func (d *daemon) criClients(ctx context.Context) (internalapi.RuntimeService, internalapi.ImageManagerService, error) {
	d.criMu.Lock()
	defer d.criMu.Unlock()
	if d.criRT != nil {
		return d.criRT, d.criImg, nil
	}
	if d.cri == nil {
		return nil, nil, errors.New("the daemon was started without its CRI configured")
	}
	// The timeout is also every call's deadline in the kubelet's client.
	rt, err := remote.NewRemoteRuntimeService(ctx, "unix://"+d.address, 2*time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		return nil, nil, fmt.Errorf("CRI runtime client: %w", err)
	}
	img, err := remote.NewRemoteImageService(ctx, "unix://"+d.address, 2*time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		return nil, nil, fmt.Errorf("CRI image client: %w", err)
	}
	d.criRT, d.criImg = rt, img
	return rt, img, nil
}

// criImages pulls the pause and busybox images on d once (untimed), so
// that no pod or container workload times a pull.
func (d *daemon) criImages(ctx context.Context, e *criEnv) error {
	_, img, err := d.criClients(ctx)
	if err != nil {
		return err
	}
	d.criMu.Lock()
	defer d.criMu.Unlock()
	if d.criPulled {
		return nil
	}
	for _, ref := range []string{e.pauseRef, e.busyboxRef} {
		if _, err := img.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, nil); err != nil {
			return fmt.Errorf("PullImage %s: %w", ref, err)
		}
	}
	d.criPulled = true
	return nil
}

// criSweep stops and removes every pod left on d (a workload that failed
// half-way, an interrupted run), before the daemon stops: their network
// namespaces and veths go with them.
func (d *daemon) criSweep(ctx context.Context) error {
	if d.criRT == nil {
		return nil
	}
	pods, err := d.criRT.ListPodSandbox(ctx, nil)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pods {
		errs = append(errs, removePod(ctx, d.criRT, p.Id))
	}
	if len(pods) > 0 {
		fmt.Fprintf(os.Stderr, "%s: removed %d leftover pods\n", d.name, len(pods))
	}
	return errors.Join(errs...)
}

// removePod stops and removes a pod with its containers, as the kubelet
// does it: containers first.
func removePod(ctx context.Context, rt internalapi.RuntimeService, id string) error {
	var errs []error
	ctrs, err := rt.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: id})
	if err != nil {
		errs = append(errs, err)
	}
	for _, c := range ctrs {
		if err := rt.StopContainer(ctx, c.Id, 0); err != nil {
			errs = append(errs, fmt.Errorf("StopContainer %s: %w", c.Id, err))
		}
		if err := rt.RemoveContainer(ctx, c.Id); err != nil {
			errs = append(errs, fmt.Errorf("RemoveContainer %s: %w", c.Id, err))
		}
	}
	if err := rt.StopPodSandbox(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("StopPodSandbox %s: %w", id, err))
	}
	if err := rt.RemovePodSandbox(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("RemovePodSandbox %s: %w", id, err))
	}
	return errors.Join(errs...)
}

// podConfig is the sandbox config of every bench pod: what a kubelet sends
// for a plain pod on the pod network, on both daemons alike.
func (e *criEnv) podConfig(d *daemon, workload string, iter, i int) *runtimeapi.PodSandboxConfig {
	it := fmt.Sprint(iter)
	if iter == warmupIter {
		it = "w"
	}
	name := fmt.Sprintf("%s-%s-%d", workload, it, i)
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "flotilla-bench", Uid: "uid-" + name, Attempt: 0},
		Hostname:     name,
		LogDirectory: filepath.Join(e.dir, "logs", d.name, name),
		Labels:       map[string]string{"flotilla-bench": workload},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: criCgroupParent},
	}
}

// checkPod wants pod id ready with an address on d's bridge subnet: proof
// that the sandbox really runs on the bench's CNI network.
func checkPod(ctx context.Context, d *daemon, rt internalapi.RuntimeService, id string) error {
	st, err := rt.PodSandboxStatus(ctx, id, false)
	if err != nil {
		return fmt.Errorf("PodSandboxStatus %s: %w", id, err)
	}
	if s := st.GetStatus().GetState(); s != runtimeapi.PodSandboxState_SANDBOX_READY {
		return fmt.Errorf("pod %s is %v after RunPodSandbox, want READY", id, s)
	}
	_, subnet, _ := net.ParseCIDR(d.cri.subnet)
	if ip := net.ParseIP(st.GetStatus().GetNetwork().GetIp()); ip == nil || !subnet.Contains(ip) {
		return fmt.Errorf("pod %s has IP %q, not in %s's subnet %s", id, st.GetStatus().GetNetwork().GetIp(), d.cri.bridge, d.cri.subnet)
	}
	return nil
}

// podBench times one step of a pod's life, one pod after another: step
// "run" times RunPodSandbox, "stop" StopPodSandbox of the ready pod,
// "remove" RemovePodSandbox of the stopped one; the other steps run
// untimed around it, so every sample is a whole run/stop/remove cycle.
type podBench struct {
	d    *daemon
	e    *criEnv
	rt   internalapi.RuntimeService
	name string
	step string
	pods int
}

func newPodBench(ctx context.Context, d *daemon, e *criEnv, name, step string, pods int) (*podBench, error) {
	rt, _, err := d.criClients(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.criImages(ctx, e); err != nil {
		return nil, err
	}
	return &podBench{d: d, e: e, rt: rt, name: name, step: step, pods: pods}, nil
}

func (b *podBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, b.pods)
	for i := range b.pods {
		start := time.Now()
		id, err := b.rt.RunPodSandbox(ctx, b.e.podConfig(b.d, b.name, iter, i), "")
		if err != nil {
			return nil, fmt.Errorf("RunPodSandbox: %w", err)
		}
		if b.step == "run" {
			out = append(out, time.Since(start))
		}
		if err := checkPod(ctx, b.d, b.rt, id); err != nil {
			_ = removePod(context.WithoutCancel(ctx), b.rt, id)
			return nil, err
		}
		start = time.Now()
		if err := b.rt.StopPodSandbox(ctx, id); err != nil {
			_ = removePod(context.WithoutCancel(ctx), b.rt, id)
			return nil, fmt.Errorf("StopPodSandbox: %w", err)
		}
		if b.step == "stop" {
			out = append(out, time.Since(start))
		}
		start = time.Now()
		if err := b.rt.RemovePodSandbox(ctx, id); err != nil {
			return nil, fmt.Errorf("RemovePodSandbox: %w", err)
		}
		if b.step == "remove" {
			out = append(out, time.Since(start))
		}
	}
	return out, nil
}

func (b *podBench) cleanup(ctx context.Context) error {
	return removeLabelled(ctx, b.rt, b.name)
}

// removeLabelled removes the pods a workload left (it removes its own as
// it goes; this is for a failure half-way).
func removeLabelled(ctx context.Context, rt internalapi.RuntimeService, workload string) error {
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"flotilla-bench": workload}})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pods {
		errs = append(errs, removePod(ctx, rt, p.Id))
	}
	return errors.Join(errs...)
}

// ctrBench times CreateContainer ("create"), StartContainer ("start") or
// RemoveContainer ("remove") of busybox containers running `sleep`, one
// after another, in one ready pod that lives for the workload; the other
// steps of each container's life run untimed around it (stop: SIGKILL, no
// grace period). Step "status" times ContainerStatus calls on one running
// container, started when the workload is prepared.
type ctrBench struct {
	d       *daemon
	e       *criEnv
	rt      internalapi.RuntimeService
	name    string
	step    string
	ctrs    int // containers per iteration; calls for "status"
	podID   string
	pod     *runtimeapi.PodSandboxConfig
	running string // "status": the container asked about
}

func newCtrBench(ctx context.Context, d *daemon, e *criEnv, name, step string, ctrs int) (*ctrBench, error) {
	rt, _, err := d.criClients(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.criImages(ctx, e); err != nil {
		return nil, err
	}
	b := &ctrBench{d: d, e: e, rt: rt, name: name, step: step, ctrs: ctrs, pod: e.podConfig(d, name, 0, 0)}
	if b.podID, err = rt.RunPodSandbox(ctx, b.pod, ""); err != nil {
		return nil, fmt.Errorf("RunPodSandbox: %w", err)
	}
	if err := checkPod(ctx, d, rt, b.podID); err != nil {
		_ = removePod(context.WithoutCancel(ctx), rt, b.podID)
		return nil, err
	}
	if step == "status" {
		id, err := rt.CreateContainer(ctx, b.podID, b.config("status"), b.pod)
		if err == nil {
			if err = rt.StartContainer(ctx, id); err == nil {
				err = checkRunning(ctx, rt, id)
			}
		}
		if err != nil {
			_ = removePod(context.WithoutCancel(ctx), rt, b.podID)
			return nil, fmt.Errorf("start the container to ask about: %w", err)
		}
		b.running = id
	}
	return b, nil
}

// config is the container config of every bench container: busybox
// sleeping, with a log file in the pod's log directory.
func (b *ctrBench) config(name string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: b.e.busyboxRef},
		Command:  []string{"/bin/sleep", "300"},
		LogPath:  name + ".log",
		Linux:    &runtimeapi.LinuxContainerConfig{},
	}
}

func (b *ctrBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	if b.step == "status" {
		return b.sampleStatus(ctx)
	}
	it := fmt.Sprint(iter)
	if iter == warmupIter {
		it = "w"
	}
	out := make([]time.Duration, 0, b.ctrs)
	for i := range b.ctrs {
		start := time.Now()
		id, err := b.rt.CreateContainer(ctx, b.podID, b.config(fmt.Sprintf("c-%s-%d", it, i)), b.pod)
		if err != nil {
			return nil, fmt.Errorf("CreateContainer: %w", err)
		}
		if b.step == "create" {
			out = append(out, time.Since(start))
		}
		if b.step == "start" || b.step == "remove" {
			start = time.Now()
			err := b.rt.StartContainer(ctx, id)
			elapsed := time.Since(start)
			if err == nil {
				err = checkRunning(ctx, b.rt, id)
			}
			if err != nil {
				_ = b.remove(context.WithoutCancel(ctx), id)
				return nil, err
			}
			if b.step == "start" {
				out = append(out, elapsed)
			}
		}
		if b.step == "remove" {
			if err := b.rt.StopContainer(ctx, id, 0); err != nil {
				_ = b.remove(context.WithoutCancel(ctx), id)
				return nil, fmt.Errorf("StopContainer: %w", err)
			}
			if err := checkExited(ctx, b.rt, id); err != nil {
				_ = b.remove(context.WithoutCancel(ctx), id)
				return nil, err
			}
			start = time.Now()
			if err := b.rt.RemoveContainer(ctx, id); err != nil {
				return nil, fmt.Errorf("RemoveContainer: %w", err)
			}
			out = append(out, time.Since(start))
			// Removed means gone from the list (asked by listing: the
			// kubelet's client logs every NotFound of a status call).
			if left, err := b.rt.ListContainers(ctx, &runtimeapi.ContainerFilter{Id: id}); err != nil || len(left) > 0 {
				return nil, fmt.Errorf("ListContainers after RemoveContainer %s: %d left, %v", id, len(left), err)
			}
			continue
		}
		if err := b.remove(ctx, id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// sampleStatus times ContainerStatus calls on the running container, each
// of which must say RUNNING.
func (b *ctrBench) sampleStatus(ctx context.Context) ([]time.Duration, error) {
	out := make([]time.Duration, 0, b.ctrs)
	for range b.ctrs {
		start := time.Now()
		st, err := b.rt.ContainerStatus(ctx, b.running, false)
		elapsed := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("ContainerStatus: %w", err)
		}
		if s := st.GetStatus().GetState(); s != runtimeapi.ContainerState_CONTAINER_RUNNING {
			return nil, fmt.Errorf("container %s is %v, want RUNNING", b.running, s)
		}
		out = append(out, elapsed)
	}
	return out, nil
}

// checkExited wants container id exited, as after StopContainer.
func checkExited(ctx context.Context, rt internalapi.RuntimeService, id string) error {
	st, err := rt.ContainerStatus(ctx, id, false)
	if err != nil {
		return fmt.Errorf("ContainerStatus %s: %w", id, err)
	}
	if s := st.GetStatus().GetState(); s != runtimeapi.ContainerState_CONTAINER_EXITED {
		return fmt.Errorf("container %s is %v after StopContainer, want EXITED", id, s)
	}
	return nil
}

func checkRunning(ctx context.Context, rt internalapi.RuntimeService, id string) error {
	st, err := rt.ContainerStatus(ctx, id, false)
	if err != nil {
		return fmt.Errorf("ContainerStatus %s: %w", id, err)
	}
	if s := st.GetStatus().GetState(); s != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return fmt.Errorf("container %s is %v after StartContainer, want RUNNING", id, s)
	}
	return nil
}

func (b *ctrBench) remove(ctx context.Context, id string) error {
	if err := b.rt.StopContainer(ctx, id, 0); err != nil {
		return fmt.Errorf("StopContainer: %w", err)
	}
	if err := b.rt.RemoveContainer(ctx, id); err != nil {
		return fmt.Errorf("RemoveContainer: %w", err)
	}
	return nil
}

func (b *ctrBench) cleanup(ctx context.Context) error {
	return removeLabelled(ctx, b.rt, b.name)
}

// pullBench times PullImage of an image the daemon does not have: a new
// one per iteration (busybox, whose layer the daemon already holds, plus
// a random layer of its own), removed again untimed.
type pullBench struct {
	d   *daemon
	e   *criEnv
	img internalapi.ImageManagerService
}

func newPullBench(ctx context.Context, d *daemon, e *criEnv) (*pullBench, error) {
	_, img, err := d.criClients(ctx)
	if err != nil {
		return nil, err
	}
	// busybox pulled first: the base layer is on the node, as it would be
	// for most pulls, and is the same on both daemons whatever ran before.
	if err := d.criImages(ctx, e); err != nil {
		return nil, err
	}
	return &pullBench{d: d, e: e, img: img}, nil
}

func (b *pullBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	ref, err := b.e.pullRef(iter)
	if err != nil {
		return nil, err
	}
	spec := &runtimeapi.ImageSpec{Image: ref}
	if st, err := b.img.ImageStatus(ctx, spec, false); err != nil {
		return nil, fmt.Errorf("ImageStatus %s: %w", ref, err)
	} else if st.GetImage() != nil {
		return nil, fmt.Errorf("image %s present before its pull: the measurement would be of a no-op", ref)
	}
	start := time.Now()
	got, err := b.img.PullImage(ctx, spec, nil, nil)
	elapsed := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("PullImage %s: %w", ref, err)
	}
	if got == "" {
		return nil, fmt.Errorf("PullImage %s returned no image reference", ref)
	}
	if err := b.img.RemoveImage(ctx, spec); err != nil {
		return nil, fmt.Errorf("RemoveImage %s: %w", ref, err)
	}
	return []time.Duration{elapsed}, nil
}

func (b *pullBench) cleanup(context.Context) error { return nil }

// imageCallBench times one CRI image call, one call at a time: ListImages
// ("list") or ImageStatus of the pulled busybox image ("status").
type imageCallBench struct {
	img   internalapi.ImageManagerService
	ref   string
	call  string
	calls int
}

func newImageCallBench(ctx context.Context, d *daemon, e *criEnv, call string, calls int) (*imageCallBench, error) {
	_, img, err := d.criClients(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.criImages(ctx, e); err != nil {
		return nil, err
	}
	return &imageCallBench{img: img, ref: e.busyboxRef, call: call, calls: calls}, nil
}

func (b *imageCallBench) sample(ctx context.Context, _ int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, b.calls)
	spec := &runtimeapi.ImageSpec{Image: b.ref}
	for range b.calls {
		start := time.Now()
		var err error
		found := false
		if b.call == "list" {
			var imgs []*runtimeapi.Image
			imgs, err = b.img.ListImages(ctx, nil)
			found = len(imgs) >= 2 // pause and busybox at least
		} else {
			var st *runtimeapi.ImageStatusResponse
			st, err = b.img.ImageStatus(ctx, spec, false)
			found = st.GetImage() != nil
		}
		elapsed := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.call, err)
		}
		if !found {
			return nil, fmt.Errorf("%s: the pulled images are not there", b.call)
		}
		out = append(out, elapsed)
	}
	return out, nil
}

func (b *imageCallBench) cleanup(context.Context) error { return nil }
