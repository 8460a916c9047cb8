package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

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
// container, and from the process of a `runc exec` (a healthcheck's, which
// in a privileged container asks for every capability too). Docker's `privileged: true` asks for every capability the kernel
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
	case "$prev" in
	--bundle|-b) sed -i %[1]s "$a/config.json" ;;
	--process|-p) sed -i %[1]s "$a" ;;
	esac
	prev=$a
done
exec %[2]s "$@"
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

// composeServices are the containers of docker-compose.yml, one per
// service, and the id Introspection lists each service's process under
// (flotillad's own services are the gateway's, listed by their API names).
var composeServices = map[string]string{
	"content":     "content",
	"snapshotter": "overlayfs",
	"metadata":    "metadata",
	"transfer":    "transfer",
	"tasks":       "tasks",
	"cri":         "cri",
	"mounts":      "mounts",
	"restart":     "restart",
	"flotillad":   "",
}

// TestComposeRunsTheGraphAndAContainer brings up the repository's
// docker-compose.yml (one container per service, flotillad the gateway
// alone) on a private dockerd, runs a container through the socket on the
// state volume with ctr, kills a service's container and sees Docker
// restart it and flotillad reach it again, and checks that
// `docker-compose down` leaves no container, mount or process behind.
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
	waitFor(t, 90*time.Second, "the gateway to answer ctr version on "+filepath.Join(p.state, "flotilla.sock"), func() bool {
		_, err := p.ctr("version")
		return err == nil
	})
	if out := p.mustCtr("version"); !strings.Contains(out, "Server:") {
		t.Fatalf("ctr version shows no server:\n%s", out)
	}

	// One running container per service, and flotillad's runs flotillad
	// alone: it started none of the services itself.
	for svc := range composeServices {
		id := p.container(svc)
		if running := strings.TrimSpace(dd.mustDocker("inspect", "--format", "{{.State.Running}}", id)); running != "true" {
			t.Errorf("container of %s is not running (%s)", svc, running)
		}
	}
	if top := dd.mustDocker("top", p.container("flotillad")); strings.Contains(top, "flotilla-") {
		t.Errorf("the flotillad container runs service processes; want the gateway alone:\n%s", top)
	}
	p.requireServicesListed()

	_, archive := imageArchive(t)
	p.mustCtr("images", "import", archive)
	if out := p.mustCtr("snapshots", "ls"); !strings.Contains(out, "Committed") {
		t.Fatalf("the import unpacked no layer into the snapshotter container's overlayfs:\n%s", out)
	}
	entries, err := os.ReadDir(filepath.Join(p.root, "snapshotter-overlayfs"))
	if err != nil || len(entries) == 0 {
		t.Fatalf("the snapshotter container wrote nothing under its root %s: %v", filepath.Join(p.root, "snapshotter-overlayfs"), err)
	}

	// The container runs inside the tasks container, under its runc. The
	// shim opens the FIFOs ctr makes, so they go on the state volume,
	// which has the same path on both sides.
	p.runEcho("compose-1")

	// A service crashes, and its container with it: Docker restarts it
	// (restart policy) and flotillad, which did not start it, reaches the
	// new process. Not `docker kill`, which Docker counts as an operator's
	// stop and turns the container's restart policy off for.
	for _, svc := range []string{"metadata", "content"} {
		id := p.container(svc)
		before := p.restartCount(id)
		p.crash(id)
		waitFor(t, 60*time.Second, "Docker to restart the killed "+svc+" container", func() bool {
			return p.restartCount(id) > before &&
				strings.TrimSpace(dd.mustDocker("inspect", "--format", "{{.State.Running}}", id)) == "true"
		})
		waitFor(t, 30*time.Second, "ctr images ls to list the image again after "+svc+" restarted", func() bool {
			out, err := p.ctr("images", "ls", "-q")
			return err == nil && strings.Contains(out, testimage.DefaultName)
		})
		p.runEcho("compose-after-" + svc)
		waitFor(t, 10*time.Second, "Introspection to count the restart of "+svc, func() bool {
			return p.exports(svc)["restarts"] == "1" && p.exports(svc)["state"] == "running"
		})
	}
	p.requireServicesListed()

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
	// Flotilla's shims name the gateway socket under the state directory.
	waitFor(t, 10*time.Second, "no process left naming the compose directories, and no shim of dockerd's containerd", func() bool {
		return len(processesMentioning(dir)) == 0 && len(shimsOf(dd.containerd)) == 0
	})
}

// container is the id of the one container of a compose service.
func (p *composeProject) container(svc string) string {
	p.t.Helper()
	ids := strings.Fields(p.mustCompose("ps", "-q", svc))
	if len(ids) != 1 {
		p.t.Fatalf("docker-compose ps -q %s lists %d containers, want 1: %v", svc, len(ids), ids)
	}
	return ids[0]
}

// restartCount is how often Docker restarted a container.
func (p *composeProject) restartCount(id string) int {
	p.t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(p.dd.mustDocker("inspect", "--format", "{{.RestartCount}}", id)))
	if err != nil {
		p.t.Fatal(err)
	}
	return n
}

// requireServicesListed checks that Introspection (ctr plugins ls) lists
// every service's process, each run outside flotillad and answering.
func (p *composeProject) requireServicesListed() {
	p.t.Helper()
	waitFor(p.t, 30*time.Second, "ctr plugins ls to list every service container's process as ok", func() bool {
		out, err := p.ctr("plugins", "ls")
		if err != nil {
			return false
		}
		ok := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[len(f)-1] == "ok" {
				ok[f[1]] = true
			}
		}
		for _, id := range composeServices {
			if id != "" && !ok[id] {
				return false
			}
		}
		return true
	})
	for svc, id := range composeServices {
		if id == "" {
			continue
		}
		if ex := p.exports(id); ex["external"] != "true" {
			p.t.Errorf("Introspection does not show %s (%s) as run outside flotillad: exports %v", svc, id, ex)
		}
	}
}

// exports are the exports Introspection lists for a plugin id.
func (p *composeProject) exports(id string) map[string]string {
	p.t.Helper()
	c, err := containerd.New(filepath.Join(p.state, "flotilla.sock"), containerd.WithTimeout(10*time.Second))
	if err != nil {
		p.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx, "id=="+id)
	if err != nil {
		p.t.Fatalf("introspection of %s: %v", id, err)
	}
	if len(resp.Plugins) == 0 {
		return nil
	}
	return resp.Plugins[0].Exports
}

// runEcho runs a container with ctr and checks its output.
func (p *composeProject) runEcho(name string) {
	p.t.Helper()
	out, err := p.ctr("run", "--rm", "--fifo-dir", filepath.Join(p.state, "fifo"), testimage.DefaultName, name, "echo", "ok")
	if err != nil || out != "ok\n" {
		p.t.Fatalf("ctr run %s in the tasks container: %v, output %q, want %q", name, err, out, "ok\n")
	}
	if out := p.mustCtr("containers", "ls", "-q"); strings.TrimSpace(out) != "" {
		p.t.Fatalf("ctr run --rm left containers: %q", out)
	}
}

// crash kills the service process of a container (the child of its init,
// tini) with SIGKILL, as a crash would end it; tini exits with it.
func (p *composeProject) crash(id string) {
	p.t.Helper()
	initPid := strings.TrimSpace(p.dd.mustDocker("inspect", "--format", "{{.State.Pid}}", id))
	b, err := os.ReadFile(filepath.Join("/proc", initPid, "task", initPid, "children"))
	if err != nil {
		p.t.Fatalf("children of container %s's init (pid %s): %v", id, initPid, err)
	}
	children := strings.Fields(string(b))
	if len(children) == 0 {
		p.t.Fatalf("container %s's init (pid %s) runs no service process", id, initPid)
	}
	for _, c := range children {
		pid, err := strconv.Atoi(c)
		if err != nil {
			p.t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			p.t.Fatalf("kill service process %d of container %s: %v", pid, id, err)
		}
	}
}
