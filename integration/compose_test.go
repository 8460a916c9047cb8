package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// capNames are the Linux capabilities by number (linux/capability.h), as
// OCI runtime specs spell them.
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// missingCapabilities lists the capabilities the kernel knows but this
// process's bounding set lacks: a sandbox may withhold some, and a
// privileged container asks for every one the kernel knows.
func missingCapabilities(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var bnd uint64
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			if bnd, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	var missing []string
	for i := 0; i <= last && i < len(capNames); i++ {
		if bnd&(1<<i) == 0 {
			missing = append(missing, capNames[i])
		}
	}
	return missing
}

// capStrippingRuntime writes a runc wrapper that drops the named
// capabilities from a bundle's config.json before runc creates the
// container. Docker's `privileged: true` asks for every capability the kernel
// knows; where the host's own bounding set lacks one, runc fails with
// "unable to apply caps: operation not permitted", which says nothing about
// Flotilla. The wrapper is the test machine's workaround, not the deployment's.
func capStrippingRuntime(t testing.TB, dir string, caps []string) string {
	t.Helper()
	runc := requireTool(t, "runc", "runc")
	var sed []string
	for _, c := range caps {
		sed = append(sed, fmt.Sprintf(`-e 's/"%[1]s",//g' -e 's/,"%[1]s"//g' -e 's/"%[1]s"//g'`, c))
	}
	script := fmt.Sprintf(`#!/bin/sh
# Drops capabilities this host cannot grant from the bundle, then runs runc.
prev=
for a in "$@"; do
	case "$prev" in --bundle|-b) sed -i %s "$a/config.json" ;; esac
	prev=$a
done
exec %s "$@"
`, strings.Join(sed, " "), runc)
	p := filepath.Join(dir, "runc-caps")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// composeProject is the repository's docker-compose.yml brought up on a
// test's dockerd, with its state and root in a temp directory.
type composeProject struct {
	t     *testing.T
	dd    *dockerDaemon
	repo  string
	name  string
	dir   string
	state string
	root  string
}

func (p *composeProject) compose(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker-compose", append([]string{
		"--project-name", p.name,
		"--project-directory", p.repo,
		"--file", filepath.Join(p.repo, "docker-compose.yml"),
	}, args...)...)
	cmd.Env = append(os.Environ(),
		"DOCKER_HOST="+p.dd.host,
		"DOCKER_CONFIG="+filepath.Join(p.dd.dir, "cli"),
		"FLOTILLA_STATE="+p.state,
		"FLOTILLA_ROOT="+p.root,
	)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *composeProject) mustCompose(args ...string) string {
	p.t.Helper()
	out, err := p.compose(args...)
	if err != nil {
		p.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ctr runs Debian's ctr on the gateway socket in the state directory.
func (p *composeProject) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", filepath.Join(p.state, "flotilla.sock")}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *composeProject) mustCtr(args ...string) string {
	p.t.Helper()
	out, err := p.ctr(args...)
	if err != nil {
		p.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// mountsUnder lists the host's mount points below dir.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// buildImage makes the Flotilla image from local files only, as
// deploy/README.md tells an operator to: deploy/build-context.sh, then
// docker build.
func buildImage(t *testing.T, dd *dockerDaemon, repo, tag string) {
	t.Helper()
	requireTool(t, "busybox", "busybox-static")
	ctxDir := filepath.Join(t.TempDir(), "image")
	out, err := exec.Command(filepath.Join(repo, "deploy", "build-context.sh"), binDir, ctxDir).CombinedOutput()
	if err != nil {
		t.Fatalf("deploy/build-context.sh: %v\n%s", err, out)
	}
	dd.mustDocker("build", "--quiet", "--tag", tag, ctxDir)
}

// TestComposeRunsTheGraphAndAContainer brings up the repository's
// docker-compose.yml (flotillad with its services, and the default
// snapshotter in a container of its own) on a private dockerd, runs a
// container through the socket on the state volume with ctr, and checks
// that `docker-compose down` leaves no container, mount or process behind.
func TestComposeRunsTheGraphAndAContainer(t *testing.T) {
	requireRoot(t)
	requireTool(t, "docker-compose", "docker-compose")
	requireTool(t, "ctr", "containerd")
	requireTool(t, "runc", "runc")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// The compose graph runs on Docker with its own containerd, not on a
	// Flotilla.
	dd := startDockerd(t, dockerdOptions{stripMissingCaps: true})
	buildImage(t, dd, repo, "flotilla:local")

	dir, err := os.MkdirTemp("", "dc")
	if err != nil {
		t.Fatal(err)
	}
	p := &composeProject{
		t: t, dd: dd, repo: repo, dir: dir,
		name:  "flotilla" + strings.TrimPrefix(filepath.Base(dir), "dc"),
		state: filepath.Join(dir, "state"),
		root:  filepath.Join(dir, "root"),
	}
	for _, d := range []string{p.state, p.root} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
	})
	down := false
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := p.compose("logs", "--no-color", "--tail", "100")
			t.Logf("docker-compose logs:\n%s", out)
		}
		if !down {
			if out, err := p.compose("down", "--volumes", "--timeout", "30"); err != nil {
				t.Errorf("docker-compose down: %v\n%s", err, out)
			}
		}
	})

	p.mustCompose("up", "-d")
	waitFor(t, 60*time.Second, "the gateway to answer ctr version on "+filepath.Join(p.state, "flotilla.sock"), func() bool {
		_, err := p.ctr("version")
		return err == nil
	})
	if out := p.mustCtr("version"); !strings.Contains(out, "Server:") {
		t.Fatalf("ctr version shows no server:\n%s", out)
	}
	// overlayfs, the default, is the snapshotter container's process; native
	// runs inside the flotillad container.
	if out := p.mustCtr("plugins", "ls", "type==io.containerd.snapshotter.v1"); !strings.Contains(out, "overlayfs") || !strings.Contains(out, "native") {
		t.Fatalf("ctr plugins ls lists neither the remote overlayfs nor the native snapshotter:\n%s", out)
	}

	_, archive := imageArchive(t)
	p.mustCtr("images", "import", archive)
	if out := p.mustCtr("snapshots", "ls"); !strings.Contains(out, "Committed") {
		t.Fatalf("the import unpacked no layer into the snapshotter container's overlayfs:\n%s", out)
	}
	entries, err := os.ReadDir(filepath.Join(p.root, "snapshotter-overlayfs"))
	if err != nil || len(entries) == 0 {
		t.Fatalf("the snapshotter container wrote nothing under its root %s: %v", filepath.Join(p.root, "snapshotter-overlayfs"), err)
	}

	// The container runs inside the flotillad container, under its runc.
	// The shim opens the FIFOs ctr makes, so they go on the state volume,
	// which has the same path on both sides.
	out, err := p.ctr("run", "--rm", "--fifo-dir", filepath.Join(p.state, "fifo"), testimage.DefaultName, "compose-1", "echo", "ok")
	if err != nil || out != "ok\n" {
		t.Fatalf("ctr run in the flotillad container: %v, output %q, want %q", err, out, "ok\n")
	}
	if out := p.mustCtr("containers", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("ctr run --rm left containers: %q", out)
	}

	p.mustCompose("down", "--volumes", "--timeout", "30")
	down = true
	if out := dd.mustDocker("ps", "-aq"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left after docker-compose down: %q", out)
	}
	if out := dd.mustDocker("volume", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("volumes left after docker-compose down --volumes: %q", out)
	}
	if m := mountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left under the compose directories after docker-compose down: %v", m)
	}
	waitFor(t, 10*time.Second, "no process left naming the compose directories, and no shim of dockerd's containerd", func() bool {
		return len(processesMentioning(dir)) == 0 && len(shimsOf(dd.containerd)) == 0
	})
}
