package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// startContainerdRoot starts Debian's containerd on a root of its own, with
// nothing but the defaults: the containerd a user switches from.
func startContainerdRoot(t *testing.T) *containerd16 {
	t.Helper()
	return runContainerd16(t, "cdadopt", func(dir, address string) string {
		return fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
			filepath.Join(dir, "root"), filepath.Join(dir, "state"), address)
	})
}

func TestAdoptContainerdBringsItsImagesAndTheyRunWithoutAPull(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ctr", "containerd")
	const ref = "docker.io/library/busybox:latest"
	_, archive := imageArchive(t, testimage.WithName(ref))

	// The user's containerd, with an image in a namespace of their own;
	// then stopped, as the switch asks.
	c := startContainerdRoot(t)
	c.mustCtr("-n", "team", "images", "import", archive)
	c.stop()
	root := filepath.Join(c.dir, "root")

	d := newDaemon(t).start()
	out := d.flotillaOut("adopt-containerd", "--root", root)
	t.Logf("flotilla adopt-containerd:\n%s", out)
	if !strings.Contains(out, "image "+ref) || !strings.Contains(out, "unpacked into overlayfs") {
		t.Errorf("adopt-containerd does not report %s adopted and unpacked:\n%s", ref, out)
	}

	check := d.mustCtr("-n", "team", "images", "check")
	var row string
	for _, l := range strings.Split(check, "\n") {
		if strings.HasPrefix(l, ref+" ") {
			row = l
		}
	}
	if f := strings.Fields(row); row == "" || !strings.Contains(row, " complete ") || f[len(f)-1] != "true" {
		t.Fatalf("ctr -n team images check does not say %s is complete and unpacked:\n%s", ref, check)
	}
	run, err := d.ctr("-n", "team", "run", "--rm", ref, "a1", "echo", "adopted")
	if err != nil || strings.TrimSpace(run) != "adopted" {
		t.Fatalf("ctr run of the adopted image: %v\n%s", err, run)
	}

	// Again: nothing to copy, nothing changed.
	again := d.flotillaOut("adopt-containerd", "--root", root)
	if !strings.Contains(again, "0 blob(s) copied") || !strings.Contains(again, "already there") {
		t.Errorf("a second adoption copied or changed something:\n%s", again)
	}
}

func TestAdoptContainerdRefusesARunningContainerd(t *testing.T) {
	requireRoot(t)
	c := startContainerdRoot(t)
	d := newDaemon(t).start()
	out, err := exec.Command(filepath.Join(binDir, "flotilla"), "--address", d.address,
		"adopt-containerd", "--root", filepath.Join(c.dir, "root")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "containerd is still running") {
		t.Fatalf("adopting the root of a running containerd: err %v, want a refusal that says containerd runs:\n%s", err, out)
	}
}
