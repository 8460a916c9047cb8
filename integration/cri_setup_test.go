package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/cninet"
	"github.com/flotilla-project/flotilla/internal/testimage"
	"github.com/flotilla-project/flotilla/internal/testregistry"
)

// podBridge and podSubnet are the CRI tests' CNI network: a bridge of
// their own and a subnet unlikely to be in use on the host. The tests
// that share them run one after another; one that must not shares
// neither (the stats test).
const (
	podBridge = "flcritest0"
	podSubnet = "10.199.77.0/24"
)

// podNetwork is the shared bridge network, named name.
func podNetwork(name string) cninet.Bridge {
	return cninet.Bridge{Name: name, Bridge: podBridge, Subnet: podSubnet}
}

// requireCRIPods skips a test that cannot run pods here: it needs root,
// Debian's docker-registry, the CNI plugins of a bridge network (and any
// others named) and a static busybox for its images.
func requireCRIPods(t *testing.T, plugins ...string) {
	t.Helper()
	requireRoot(t)
	requireTool(t, "docker-registry", "docker-registry")
	if err := cninet.Plugins(cninet.DebianBinDir, append(append([]string{}, cninet.BridgePlugins...), plugins...)...); err != nil {
		t.Skip(err)
	}
	if _, err := testimage.BusyboxPath(); err != nil {
		t.Skip(err)
	}
}

// writePodNetwork writes network into the CNI conf dir dir, its
// host-local leases kept in ipamDir, and deletes its bridge when the test
// ends (after the daemon stopped, when it is registered before).
func writePodNetwork(t *testing.T, dir, ipamDir string, network cninet.Bridge) {
	t.Helper()
	network.IPAMDir = ipamDir
	if _, err := network.Write(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", network.Bridge).Run() })
}

// criPods is a running flotillad whose cri service runs pods on a CNI
// bridge network, with busybox and a pause image in a local registry.
type criPods struct {
	d          *daemon
	rt         internalapi.RuntimeService
	images     internalapi.ImageManagerService
	busyboxRef string
	pauseRef   string
	// work is the test's directory: the CNI config is in work/cni.
	work string
}

// startCRIPods pushes busybox and the pause image (tagged tag) to a
// registry of the test's own, writes network, and starts flotillad with
// the cri service using both, and extraConfig added to its config. It
// skips as requireCRIPods does.
func startCRIPods(t *testing.T, network cninet.Bridge, tag string, extraConfig ...string) *criPods {
	t.Helper()
	requireCRIPods(t)
	bb, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	p := &criPods{work: t.TempDir()}
	reg := startPodRegistry(t)
	p.busyboxRef = reg.push(t, bb, nil, "flotilla/busybox", tag)
	// The pause image: busybox's layer, sleeping forever as PID 1.
	p.pauseRef = reg.push(t, bb, func(c *ocispec.ImageConfig) {
		c.Entrypoint, c.Cmd = []string{"/bin/sleep", "2147483647"}, nil
	}, "flotilla/pause", tag)

	cniDir := filepath.Join(p.work, "cni")
	writePodNetwork(t, cniDir, filepath.Join(p.work, "ipam"), network)
	config := fmt.Sprintf("[services.cri.options]\nsandbox_image = %q\ncni_conf_dir = %q\n", p.pauseRef, cniDir)
	p.d = newDaemon(t, withConfig(config+strings.Join(extraConfig, "\n"))).start()
	p.rt, p.images = criClients(t, p.d)
	return p
}

// pullImages pulls the pause and busybox images through the CRI.
func (p *criPods) pullImages(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, ref := range []string{p.pauseRef, p.busyboxRef} {
		if _, err := p.images.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, nil); err != nil {
			t.Fatalf("PullImage %s: %v", ref, err)
		}
	}
}

// runPod runs a pod sandbox and removes it when the test ends, passing or
// failing (removal is idempotent), before the daemon stops.
func (p *criPods) runPod(ctx context.Context, t *testing.T, cfg *runtimeapi.PodSandboxConfig) string {
	t.Helper()
	id, err := p.rt.RunPodSandbox(ctx, cfg, "")
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.rt.RemovePodSandbox(ctx, id); err != nil {
			t.Logf("cleanup: RemovePodSandbox: %v", err)
		}
	})
	return id
}

// startContainer creates and starts a container in the pod podID.
func (p *criPods) startContainer(ctx context.Context, t *testing.T, podID string, podCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	name := cfg.GetMetadata().GetName()
	id, err := p.rt.CreateContainer(ctx, podID, cfg, podCfg)
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", name, err)
	}
	if err := p.rt.StartContainer(ctx, id); err != nil {
		t.Fatalf("StartContainer %s: %v", name, err)
	}
	return id
}

// podRegistry is Debian's docker-registry on 127.0.0.1, which the
// registry client reaches over plain HTTP as a local host.
type podRegistry struct{ *testregistry.Registry }

func startPodRegistry(t *testing.T) *podRegistry {
	t.Helper()
	return startRegistry(t, "", "")
}

// startRegistry runs a registry over the storage in storage (its own when
// empty), with extra YAML (an auth section) in its configuration; its
// output goes to the log of a test that fails.
func startRegistry(t *testing.T, storage, config string) *podRegistry {
	t.Helper()
	requireTool(t, "docker-registry", "docker-registry")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := testregistry.Start(ctx, testregistry.Options{Dir: t.TempDir(), Storage: storage, Config: config})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		if t.Failed() {
			t.Logf("docker-registry %s output:\n%s", r.Host, r.Log())
		}
	})
	return &podRegistry{r}
}

// push uploads img's layers and a config (changed by edit, when given)
// with a new manifest as repo:tag, and returns the reference.
func (r *podRegistry) push(t *testing.T, img *testimage.Image, edit func(*ocispec.ImageConfig), repo, tag string) string {
	t.Helper()
	ref, err := r.Push(img, edit, repo, tag)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// pushImage uploads layers (their content in blobs) and cfg with one
// manifest, tagged with every tag, and returns the references.
func (r *podRegistry) pushImage(t *testing.T, cfg ocispec.Image, layers []ocispec.Descriptor, blobs map[digest.Digest][]byte, repo string, tags ...string) []string {
	t.Helper()
	refs, err := r.PushImage(cfg, layers, blobs, repo, tags...)
	if err != nil {
		t.Fatal(err)
	}
	return refs
}
