package spec

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestSandboxSpecHoldsThePodsNamespaces: the pause container joins the
// pod's network namespace by path with the pod's hostname, carries the
// CRI's annotations and sysctls, and mounts the pod's /dev/shm read-only;
// with the node's network it has the node's network and UTS namespaces.
func TestSandboxSpecHoldsThePodsNamespaces(t *testing.T) {
	img := testImage(t, ocispec.ImageConfig{Entrypoint: []string{"/pause"}})
	cfg := &runtime.PodSandboxConfig{
		Metadata: &runtime.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u1"},
		Linux:    &runtime.LinuxPodSandboxConfig{Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}},
	}
	opts, err := Sandbox(SandboxRequest{ID: "sb1", Config: cfg, NetNS: "/run/fl/netns/sb1", Hostname: "pod-host", Shm: "/run/fl/sandboxes/sb1/shm", Image: img})
	if err != nil {
		t.Fatal(err)
	}
	s := genSpec(t, append([]oci.SpecOpts{oci.WithRootFSPath(t.TempDir())}, opts...)...)
	if !slices.Equal(s.Process.Args, []string{"/pause"}) || s.Hostname != "pod-host" || s.Annotations[annContainerType] != containerTypeSandbox || s.Annotations[annSandboxUID] != "u1" {
		t.Errorf("args %v, hostname %q, annotations %v", s.Process.Args, s.Hostname, s.Annotations)
	}
	if !slices.Contains(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/fl/netns/sb1"}) {
		t.Errorf("namespaces %v; want the pod's network namespace by path", s.Linux.Namespaces)
	}
	if s.Linux.Sysctl["net.ipv4.ip_forward"] != "1" || s.Linux.CgroupsPath != "/k8s.io/sb1" {
		t.Errorf("sysctls %v, cgroup %q", s.Linux.Sysctl, s.Linux.CgroupsPath)
	}
	i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == DevShm })
	if i < 0 || s.Mounts[i].Source != "/run/fl/sandboxes/sb1/shm" || !slices.Contains(s.Mounts[i].Options, "ro") {
		t.Errorf("mounts %v; want the pod's /dev/shm read-only", s.Mounts)
	}

	cfg.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_NODE}}
	opts, err = Sandbox(SandboxRequest{ID: "sb1", Config: cfg, Shm: DevShm, Image: img})
	if err != nil {
		t.Fatal(err)
	}
	s = genSpec(t, append([]oci.SpecOpts{oci.WithRootFSPath(t.TempDir())}, opts...)...)
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace || ns.Type == specs.UTSNamespace {
			t.Errorf("node network: namespace %v in the spec; want the node's", ns)
		}
	}
}

// testImage is an image of config cfg alone, in a content store of the
// test's own.
func testImage(t *testing.T, cfg ocispec.ImageConfig) oci.Image {
	t.Helper()
	ctx := context.Background()
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ocispec.Image{Platform: platforms.DefaultSpec(), Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(ctx, cs, "config", bytes.NewReader(b), desc); err != nil {
		t.Fatal(err)
	}
	return storedImage{cs, desc}
}

type storedImage struct {
	cs     content.Store
	config ocispec.Descriptor
}

func (i storedImage) Config(context.Context) (ocispec.Descriptor, error) { return i.config, nil }
func (i storedImage) ContentStore() content.Store                        { return i.cs }
