package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// startContainerdRoot starts Debian's containerd on a root of its own, with
// nothing but the defaults: the containerd a user switches from.
func startContainerdRoot(t *testing.T) *containerd16 {
	t.Helper()
	bin := requireTool(t, "containerd", "containerd")
	requireTool(t, "containerd-shim-runc-v2", "containerd")
	requireTool(t, "runc", "runc")
	dir, err := os.MkdirTemp("", "cdadopt")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd16{t: t, dir: dir, address: filepath.Join(dir, "c.sock"), out: &syncBuffer{}}
	cfg := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.address)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config", cfgPath)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("containerd output:\n%s", c.out.String())
		}
		_ = os.RemoveAll(dir)
	})
	waitFor(t, 20*time.Second, "containerd to answer on "+c.address, func() bool {
		select {
		case <-c.done:
			t.Fatalf("containerd exited at start:\n%s", c.out.String())
		default:
		}
		_, err := c.ctr("version")
		return err == nil
	})
	return c
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
