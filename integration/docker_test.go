package integration

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// dockerImage is the name the busybox test image is loaded into dockerd as.
const dockerImage = "flotilla/busybox:docker"

// dockerDaemon is Debian's dockerd, started by a test on its own data and
// exec roots, with Flotilla as its containerd.
type dockerDaemon struct {
	t    testing.TB
	dir  string
	host string // -H value for the docker CLI
	cli  string // the docker CLI that matches dockerd
	// containerd is the address of the containerd dockerd uses, which the
	// command lines of its shims name.
	containerd string
	cmd        *exec.Cmd
	out        *syncBuffer
	done       chan struct{}
	exitErr    error
}

// dockerCLI is the docker client of Debian's docker.io package. It is looked
// up by path first because another, newer docker CLI may come earlier on
// $PATH; dockerd 20.10 speaks API 1.41, which its own client matches.
func dockerCLI(t testing.TB) string {
	t.Helper()
	const debian = "/usr/bin/docker"
	if _, err := os.Stat(debian); err == nil {
		return debian
	}
	return requireTool(t, "docker", "docker.io")
}

// dockerdOptions is what differs between the tests' dockerds.
type dockerdOptions struct {
	// containerd is the socket of the containerd dockerd uses: Flotilla's
	// gateway, for Docker on Flotilla. Empty, dockerd starts its own
	// containerd under its exec root.
	containerd string
	// stripMissingCaps runs runc through a wrapper that drops the
	// capabilities this host's bounding set lacks (see capStrippingRuntime),
	// for privileged containers.
	stripMissingCaps bool
}

// startDockerd starts Debian's dockerd on its own data and exec roots,
// without touching the host's bridges or iptables, and returns once its API
// answers. Its cleanup stops it, kills any shim it left behind and unmounts
// everything under its roots.
func startDockerd(t testing.TB, o dockerdOptions) *dockerDaemon {
	t.Helper()
	dockerd := requireTool(t, "dockerd", "docker.io")
	if o.containerd == "" {
		requireTool(t, "containerd", "containerd")
	}
	cli := dockerCLI(t)
	// Unix socket paths must stay short: keep the directory near /tmp.
	dir, err := os.MkdirTemp("", "dk")
	if err != nil {
		t.Fatal(err)
	}
	// An empty config file, so that a host /etc/docker/daemon.json cannot
	// change what this daemon does.
	cfg := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(cfg, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dd := &dockerDaemon{
		t:          t,
		dir:        dir,
		host:       "unix://" + filepath.Join(dir, "d.sock"),
		cli:        cli,
		containerd: o.containerd,
		out:        &syncBuffer{},
		done:       make(chan struct{}),
	}
	args := []string{
		"--config-file", cfg,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"-H", dd.host,
		// No default bridge: a test must not touch the host's bridges or
		// iptables.
		"--iptables=false", "--ip-masq=false", "--bridge=none",
	}
	if o.containerd != "" {
		args = append(args,
			"--containerd", o.containerd,
			"--containerd-namespace", "moby",
			"--containerd-plugins-namespace", "plugins.moby")
	} else {
		// Where dockerd puts the containerd it starts itself.
		dd.containerd = filepath.Join(dir, "exec", "containerd", "containerd.sock")
	}
	if o.stripMissingCaps {
		if missing := missingCapabilities(t); len(missing) > 0 {
			t.Logf("this host's capability bounding set lacks %v, which Docker's privileged containers ask for: dockerd runs runc through a wrapper that drops them", missing)
			args = append(args,
				"--add-runtime", "runc-caps="+capStrippingRuntime(t, dir, missing),
				"--default-runtime", "runc-caps")
		}
	}
	dd.cmd = exec.Command(dockerd, args...)
	dd.cmd.Stdout, dd.cmd.Stderr = dd.out, dd.out
	if err := dd.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { dd.exitErr = dd.cmd.Wait(); close(dd.done) }()
	t.Cleanup(func() {
		dd.stop()
		if t.Failed() {
			t.Logf("dockerd output (without grpc's connection log):\n%s", dd.lastLines(200))
		}
		_ = os.RemoveAll(dir)
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := dd.docker("version", "--format", "{{.Server.Version}}"); err == nil {
			return dd
		}
		select {
		case <-dd.done:
			t.Fatalf("dockerd exited before its API answered: %v: %s", dd.exitErr, dd.lastLines(20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd API did not answer within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastLines is the tail of dockerd's output without grpc's connection chatter.
func (dd *dockerDaemon) lastLines(n int) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(dd.out.String(), "\n"), "\n") {
		if !strings.Contains(l, "module=grpc") {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// stop ends dockerd (SIGTERM, which also stops its containers, then
// SIGKILL), then whatever was left: shims started for it and mounts under
// dockerd's roots.
func (dd *dockerDaemon) stop() {
	select {
	case <-dd.done:
	default:
		_ = dd.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-dd.done:
		case <-time.After(30 * time.Second):
			dd.t.Errorf("dockerd did not exit within 30s of SIGTERM")
			_ = dd.cmd.Process.Kill()
			<-dd.done
		}
	}
	for _, pid := range shimsOf(dd.containerd) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	unmountUnder(dd.dir)
}

// docker runs the docker CLI against this dockerd.
func (dd *dockerDaemon) docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, dd.cli, append([]string{"-H", dd.host}, args...)...)
	// A private client config directory: the host user's ~/.docker must
	// not matter.
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(dd.dir, "cli"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (dd *dockerDaemon) mustDocker(args ...string) string {
	dd.t.Helper()
	out, err := dd.docker(args...)
	if err != nil {
		dd.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// dockerSaveArchive writes the busybox test image in `docker save` format
// (manifest.json, the config, one directory per layer holding layer.tar):
// dockerd 20.10's `docker load` does not read OCI layouts.
func dockerSaveArchive(t testing.TB, name string) string {
	t.Helper()
	// Uncompressed, so that the layer blob is the layer tar itself.
	img, err := testimage.Busybox(testimage.WithUncompressed())
	if err != nil {
		t.Fatal(err)
	}
	cfg, ok := img.Blob(img.Config.Digest)
	if !ok {
		t.Fatalf("test image has no config blob %s", img.Config.Digest)
	}
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	m := entry{Config: img.Config.Digest.Encoded() + ".json", RepoTags: []string{name}}
	files := []struct {
		name string
		data []byte
	}{{m.Config, cfg}}
	for i, l := range img.Layers {
		b, ok := img.Blob(l.Digest)
		if !ok {
			t.Fatalf("test image has no layer blob %s", l.Digest)
		}
		p := img.DiffIDs[i].Encoded() + "/layer.tar"
		m.Layers = append(m.Layers, p)
		files = append(files, struct {
			name string
			data []byte
		}{p, b})
	}
	manifest, err := json.Marshal([]entry{m})
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, struct {
		name string
		data []byte
	}{"manifest.json", manifest})

	p := filepath.Join(t.TempDir(), "image-docker.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, file := range files {
		if dir := filepath.Dir(file.name); dir != "." {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: file.name, Mode: 0o644, Size: int64(len(file.data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(file.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDockerRunsContainersOnFlotilla is Docker on Flotilla: Debian's dockerd
// keeps its own image store and graph driver, and creates and runs every
// container through Flotilla's Containers and Tasks APIs on the gateway
// socket.
func TestDockerRunsContainersOnFlotilla(t *testing.T) {
	requireTool(t, "dockerd", "docker.io")
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	dd := startDockerd(t, dockerdOptions{containerd: d.address})

	archive := dockerSaveArchive(t, dockerImage)
	if out := dd.mustDocker("load", "-i", archive); !strings.Contains(out, "Loaded image: "+dockerImage) {
		t.Fatalf("docker load printed %q, want it to name %s", out, dockerImage)
	}

	if out := dd.mustDocker("run", "--rm", "--network", "none", dockerImage, "echo", "ok"); out != "ok\n" {
		t.Fatalf("docker run printed %q, want %q", out, "ok\n")
	}

	// A detached container is a Flotilla task while it runs: ctr, on the
	// gateway socket, sees it in dockerd's namespace.
	id := strings.TrimSpace(dd.mustDocker("run", "-d", "--network", "none", dockerImage, "sleep", "300"))
	waitFor(t, 10*time.Second, "the docker container as a RUNNING Flotilla task", func() bool {
		out, err := d.ctr("--namespace", "moby", "tasks", "ls")
		return err == nil && strings.Contains(out, id) && strings.Contains(out, "RUNNING")
	})
	dd.mustDocker("rm", "-f", id)

	// Nothing is left behind: no container in Docker, none in Flotilla,
	// no shim.
	if out := dd.mustDocker("ps", "-aq"); strings.TrimSpace(out) != "" {
		t.Errorf("docker ps -aq after the runs: %q, want nothing", out)
	}
	waitFor(t, 10*time.Second, "no container left in Flotilla's moby namespace", func() bool {
		out, err := d.ctr("--namespace", "moby", "containers", "ls", "-q")
		return err == nil && strings.TrimSpace(out) == ""
	})
	waitFor(t, 10*time.Second, "every shim to exit", func() bool {
		return len(shimsOf(d.address)) == 0
	})
}

// shimsOf lists the runtime v2 shims serving the daemon at address: their
// command lines name it (flotillad's own does too, but is no shim).
func shimsOf(address string) []int {
	var out []int
	for _, pid := range processesMentioning(address) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(b), "containerd-shim") {
			out = append(out, pid)
		}
	}
	return out
}
