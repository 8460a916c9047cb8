package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// nerdctlVersion is the nerdctl the integration tests drive.
const nerdctlVersion = "v2.4.2"

// nerdctlTool is nerdctl v2.4.2, the Docker-compatible CLI for
// containerd. It is built inside a module of its own, as its go.mod cannot
// build as is: it replaces a nested test-only module (tigron, absent from
// the module zip: an empty stub stands in) and requires a
// github.com/moby/moby/v2 beta the proxy does not serve (an earlier beta
// builds; nerdctl uses little of it).
var nerdctlTool = goTool{
	name: "nerdctl " + nerdctlVersion, dir: "nerdctl-" + nerdctlVersion, file: "nerdctl", env: "FLOTILLA_NERDCTL",
	timeout: 20 * time.Minute,
	build: func(g *goBuild, out string) error {
		stub := filepath.Join(g.mod, "tigron-stub")
		if err := os.MkdirAll(stub, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(stub, "go.mod"), []byte("module github.com/containerd/nerdctl/mod/tigron\n\ngo 1.24\n"), 0o644); err != nil {
			return err
		}
		if err := g.initModule("flotilla-tests/nerdctl"); err != nil {
			return err
		}
		for _, args := range [][]string{
			{"mod", "edit", "-require", "github.com/containerd/nerdctl/v2@" + nerdctlVersion,
				"-replace", "github.com/containerd/nerdctl/mod/tigron@v0.0.0=./tigron-stub",
				"-replace", "github.com/moby/moby/v2=github.com/moby/moby/v2@v2.0.0-beta.25"},
			{"get", "github.com/containerd/nerdctl/v2/cmd/nerdctl@" + nerdctlVersion},
			{"build", "-o", out, "github.com/containerd/nerdctl/v2/cmd/nerdctl"},
		} {
			if _, err := g.run("", nil, args...); err != nil {
				return err
			}
		}
		return nil
	},
}

// nerdctl is nerdctl v2.4.2 ($FLOTILLA_NERDCTL when set); the test skips,
// saying why, when it cannot be had.
func nerdctl(t *testing.T) string {
	t.Helper()
	p, err := nerdctlTool.path()
	if err != nil {
		t.Skipf("nerdctl %s could not be built from the Go module proxy (set FLOTILLA_NERDCTL to one): %v", nerdctlVersion, err)
	}
	return p
}

// TestNerdctlImagesRunAndCompose drives nerdctl v2.4.2 the way its users
// do against Flotilla and a local registry: pull, run with auto-pull,
// load, save, tag, image import, and compose up and down. Its image
// commands go through the Transfer and Streaming APIs, its pulls apply
// layers with imgcrypt payloads (which Flotilla ignores for plain layers,
// as containerd does).
func TestNerdctlImagesRunAndCompose(t *testing.T) {
	bin := nerdctl(t)
	requireTool(t, "docker-registry", "docker-registry")
	bb, err := testimage.Busybox()
	if err != nil {
		t.Skip(err)
	}
	fresh, err := testimage.Busybox(testimage.WithRandomLayer(1<<20, 21))
	if err != nil {
		t.Fatal(err)
	}
	r := startPodRegistry(t)
	pulled, err := r.PushAsIs(bb, "library/busybox", "1")
	if err != nil {
		t.Fatal(err)
	}
	autoPulled, err := r.PushAsIs(fresh, "library/fresh", "1")
	if err != nil {
		t.Fatal(err)
	}
	cniBin := "/usr/lib/cni"
	if _, err := os.Stat(filepath.Join(cniBin, "bridge")); err != nil {
		cniBin = "/opt/cni/bin"
	}
	d := newDaemon(t).start()
	work := t.TempDir()
	base := []string{"--address", d.address, "--namespace", "nd",
		"--data-root", filepath.Join(work, "nerdctl"),
		"--cni-path", cniBin, "--cni-netconfpath", filepath.Join(work, "cni")}
	run := func(stdin io.Reader, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(append([]string{}, base...), args...)...)
		cmd.Stdin = stdin
		cmd.Dir = work
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := run(nil, args...)
		if err != nil {
			t.Fatalf("nerdctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	images := func() string {
		t.Helper()
		return must("images", "--format", "{{.Repository}}:{{.Tag}}")
	}
	hasImage := func(name string) bool {
		for _, l := range strings.Split(images(), "\n") {
			if strings.TrimSpace(l) == name {
				return true
			}
		}
		return false
	}

	// Pull from the registry; the image runs.
	must("pull", "--insecure-registry", pulled)
	if out := must("run", "--rm", "--network", "none", pulled, "echo", "pulled"); strings.TrimSpace(out) != "pulled" {
		t.Fatalf("run of the pulled image printed %q", out)
	}

	// run pulls an image it does not have.
	out := must("run", "--rm", "--network", "none", "--insecure-registry", autoPulled, "echo", "hi")
	if !strings.HasSuffix(strings.TrimSpace(out), "hi") {
		t.Fatalf("run with auto-pull printed %q, want it to end with hi", out)
	}
	if !hasImage(autoPulled) {
		t.Fatalf("the image run pulled is not listed:\n%s", images())
	}

	// load an archive; the loaded image runs.
	archive, err := bb.ArchiveBytes()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(bytes.NewReader(archive), "load"); err != nil {
		t.Fatalf("nerdctl load: %v\n%s", err, out)
	}
	loaded := strings.TrimPrefix(testimage.DefaultName, "docker.io/")
	if !hasImage(loaded) {
		t.Fatalf("loaded image %s not listed:\n%s", loaded, images())
	}

	// tag, then save the tag and load it back under another namespace.
	must("tag", loaded, "bb:3")
	if !hasImage("bb:3") {
		t.Fatalf("tagged image bb:3 not listed:\n%s", images())
	}
	saved := filepath.Join(work, "saved.tar")
	must("save", "-o", saved, "bb:3")
	st, err := os.Stat(saved)
	if err != nil || st.Size() == 0 {
		t.Fatalf("save wrote no archive: %v", err)
	}
	must("rmi", "bb:3")
	if hasImage("bb:3") {
		t.Fatal("bb:3 still listed after rmi")
	}
	must("load", "-i", saved)
	if !hasImage("bb:3") {
		t.Fatalf("bb:3 not back after loading what save wrote:\n%s", images())
	}
	if out := must("run", "--rm", "--network", "none", "bb:3", "echo", "reloaded"); strings.TrimSpace(out) != "reloaded" {
		t.Fatalf("run of the reloaded image printed %q", out)
	}

	// image import makes an image of a root filesystem's tar.
	layer, _ := bb.Blob(bb.Layers[0].Digest)
	rootfs, err := gunzipIfNeeded(layer)
	if err != nil {
		t.Fatal(err)
	}
	rootfsTar := filepath.Join(work, "rootfs.tar")
	if err := os.WriteFile(rootfsTar, rootfs, 0o644); err != nil {
		t.Fatal(err)
	}
	must("image", "import", rootfsTar, "imported:1")
	if !hasImage("imported:1") {
		t.Fatalf("imported:1 not listed:\n%s", images())
	}
	if out := must("run", "--rm", "--network", "none", "imported:1", "/bin/echo", "imported"); strings.TrimSpace(out) != "imported" {
		t.Fatalf("run of the imported image printed %q", out)
	}

	// compose up starts the project's containers, down removes them.
	compose := filepath.Join(work, "compose.yaml")
	if err := os.WriteFile(compose, []byte(fmt.Sprintf(`services:
  sleeper:
    image: %s
    command: ["sleep", "300"]
    network_mode: none
  worker:
    image: bb:3
    command: ["sleep", "300"]
    network_mode: none
`, pulled)), 0o644); err != nil {
		t.Fatal(err)
	}
	must("compose", "-f", compose, "-p", "fl", "up", "-d")
	waitFor(t, time.Minute, "both compose services to run", func() bool {
		out, _ := run(nil, "ps", "--format", "{{.Names}} {{.Status}}")
		return strings.Count(out, "Up") >= 2 && strings.Contains(out, "sleeper") && strings.Contains(out, "worker")
	})
	must("compose", "-f", compose, "-p", "fl", "down")
	if out := must("ps", "-a", "--format", "{{.Names}}"); strings.Contains(out, "sleeper") || strings.Contains(out, "worker") {
		t.Fatalf("compose down left containers:\n%s", out)
	}
}

// gunzipIfNeeded returns b decompressed when it is gzip.
func gunzipIfNeeded(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		return b, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}
