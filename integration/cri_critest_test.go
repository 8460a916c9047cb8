package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// critestVersion is the cri-tools release whose validation suite runs.
const critestVersion = "v1.37.0"

// critestSkips are the critest specs that cannot pass on this machine or
// with a registry of our own; each entry is a regular expression on the
// spec's full name, with the reason. Specs critest skips by itself
// (AppArmor on a kernel without it, image volumes, user namespaces on a
// handler without them: Debian's runc, which the second pass replaces)
// are not listed.
var critestSkips = []struct{ spec, reason string }{
	{`public image with digest should be pulled`,
		"pins the manifest digest of the upstream image on gcr.io; a locally built image cannot have those bytes"},
	{`runtime should support MaskedPaths`,
		"runs `sh -c ls` expecting the masked /bin/ls to fail, but Debian's static busybox (the only static shell " +
			"at hand) runs applets without looking them up; TestCRIContainerSpecFeatures checks masked paths instead"},
}

// TestCRIPassesCritest runs cri-tools' CRI validation suite (critest)
// against flotillad, with every image it pulls served by a local
// registry that mirrors registry.k8s.io, gcr.io and k8s.gcr.io (through
// the cri service's hosts.toml directory, so image names are the suite's
// own). Any failed spec fails the test. FLOTILLA_CRITEST_FOCUS narrows
// the run to the specs matching a regular expression; FLOTILLA_CRITEST_LOG
// names a file the suite's output goes to as it runs; FLOTILLA_CRITEST
// names a prebuilt critest; FLOTILLA_CRITEST_ARGS adds arguments (say,
// --ginkgo.json-report=<file>). The suite runs serially (critest's
// default of one node), in about a minute on 2 cores. Its user namespace
// specs then run alone against a daemon whose pods run on runc 1.5
// (buildRunc): Debian's runc cannot run them, and critest skips them on
// a handler that does not report user namespaces.
func TestCRIPassesCritest(t *testing.T) {
	requireCRIPods(t, "portmap")
	requireTool(t, "iptables", "iptables")
	critest := buildCritest(t)

	reg := startPodRegistry(t)
	pushCritestImages(t, reg)

	work := t.TempDir()
	hostsDir := filepath.Join(work, "hosts")
	for _, host := range []string{"registry.k8s.io", "gcr.io", "k8s.gcr.io"} {
		dir := filepath.Join(hostsDir, host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "https://"+host, "http://"+reg.Host)
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cniDir := filepath.Join(work, "cni")
	// With portmap, which the port mapping specs need.
	network := podNetwork("flotilla-critest")
	network.PortMap = true
	writePodNetwork(t, cniDir, filepath.Join(work, "ipam"), network)

	config := fmt.Sprintf("[services.cri.options]\nsandbox_image = %q\ncni_conf_dir = %q\nconfig_path = %q\n",
		"registry.k8s.io/pause:3.10", cniDir, hostsDir)
	if p := os.Getenv("FLOTILLA_CRITEST_LOG"); p != "" {
		_ = os.Remove(p) // both passes append to it
	}
	var args []string
	for _, s := range critestSkips {
		t.Logf("skipping critest specs matching %q: %s", s.spec, s.reason)
		args = append(args, "--ginkgo.skip", s.spec)
	}
	focus := os.Getenv("FLOTILLA_CRITEST_FOCUS")
	if focus != "" {
		args = append(args, "--ginkgo.focus", focus)
	}
	runCritest(t, critest, work, config, nil, append(args, strings.Fields(os.Getenv("FLOTILLA_CRITEST_ARGS"))...))

	// The user namespace specs run only on a runtime handler that
	// reports user namespaces, which Debian's runc (1.1) cannot give:
	// they run again, alone, on a second handler of a current runc,
	// which critest's pods ask for by name.
	if focus != "" && !regexp.MustCompile(focus).MatchString(critestUsernsFocus) {
		return
	}
	runc := buildRunc(t)
	t.Logf("critest's user namespace specs, on handler runc-userns (runc %s)", usernsRuncVersion)
	out := runCritest(t, critest, work, config+usernsHandler(runc), allowRemappedRoot,
		[]string{"--ginkgo.focus", critestUsernsFocus, "--runtime-handler", "runc-userns"})
	// Every spec of the context ran: none skipped for want of a
	// handler with user namespaces or of idmapped mounts.
	if m := regexp.MustCompile(`Ran (\d+) of \d+ Specs`).FindStringSubmatch(out); m == nil || m[1] != strconv.Itoa(critestUsernsSpecs) {
		t.Errorf("critest ran %v of its %d user namespace specs; want all", m, critestUsernsSpecs)
	}
}

// critestUsernsFocus names critest's user namespace specs, of which there
// are critestUsernsSpecs.
const (
	critestUsernsFocus = `UserNamespaces`
	critestUsernsSpecs = 6
)

// runCritest starts flotillad with config (edit, if given, runs once it
// is up) and runs critest with args against it, failing the test when a
// spec fails; it returns the suite's output and stops the daemon.
func runCritest(t *testing.T, critest, work, config string, edit func(*testing.T, *daemon), args []string) string {
	t.Helper()
	d := newDaemon(t, func(d *daemon, a *[]string) {
		// The NRI synchronisation specs hold a plugin's Synchronize
		// for 2s while they create containers, and expect the plugin
		// to hear of them; NRI's default request timeout (2s) would
		// drop that plugin, as it does with containerd's defaults.
		withConfig(config+fmt.Sprintf("[services.cri.options.nri]\nsocket_path = %q\nplugin_request_timeout = \"10s\"\n",
			filepath.Join(d.state, "nri.sock")))(d, a)
	})
	// The daemon and critest share a mount namespace of their own whose
	// mounts are shared, as systemd makes a node's: the bidirectional
	// mount propagation spec needs it, and this machine's / is private.
	// Making the host's mounts shared instead would reach every process.
	unshare := requireTool(t, "unshare", "util-linux")
	nsenter := requireTool(t, "nsenter", "util-linux")
	d.cmd.Args = append([]string{unshare, "--mount", "--propagation", "shared", d.cmd.Path}, d.cmd.Args[1:]...)
	d.cmd.Path = unshare
	d.start()
	defer d.stop()
	if edit != nil {
		edit(t, d)
	}

	args = append([]string{
		"--runtime-endpoint", "unix://" + d.address,
		"--image-endpoint", "unix://" + d.address,
		"--ginkgo.no-color",
		"--ginkgo.v",
		"--ginkgo.timeout", "20m",
		// The NRI specs connect plugins of their own to the cri
		// service's NRI socket (the harness gives each daemon one).
		"--nri-socket", filepath.Join(d.state, "nri.sock"),
	}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	// unshare execs flotillad in place: the daemon's pid is unshare's.
	nsArgs := append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", d.cmd.Process.Pid), "--", critest}, args...)
	cmd := exec.CommandContext(ctx, nsenter, nsArgs...)
	cmd.Dir = work
	var out bytes.Buffer
	var w io.Writer = &out
	if p := os.Getenv("FLOTILLA_CRITEST_LOG"); p != "" {
		// The suite's progress, live, for whoever watches.
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		w = io.MultiWriter(&out, f)
	}
	cmd.Stdout, cmd.Stderr = w, w
	start := time.Now()
	err := cmd.Run()
	t.Logf("critest ran for %s", time.Since(start).Round(time.Second))
	summary := regexp.MustCompile(`(?m)^Ran \d+ of \d+ Specs.*\n.*$`).FindString(out.String())
	t.Logf("critest: %s", summary)
	if err != nil {
		t.Fatalf("critest failed: %v\n%s", err, critestFailures(out.String()))
	}
	return out.String()
}

// critestFailures is the suite's closing summary of failed specs, or the
// whole output when there is none.
func critestFailures(out string) string {
	if i := strings.Index(out, "Summarizing"); i >= 0 {
		return out[i:]
	}
	return out
}

// critestTool is critest, cri-tools' validation suite: a test binary of
// the cri-tools module, built with go test -c where the module lies.
var critestTool = goTool{
	name: "critest " + critestVersion, dir: "critest-" + critestVersion, file: "critest", env: "FLOTILLA_CRITEST",
	timeout: 15 * time.Minute,
	build: func(g *goBuild, out string) error {
		dir, err := g.moduleDir("sigs.k8s.io/cri-tools@" + critestVersion)
		if err != nil {
			return err
		}
		_, err = g.run(dir, nil, "test", "-c", "-o", out, "./cmd/critest")
		return err
	},
}

// buildCritest returns critest ($FLOTILLA_CRITEST, or built once from the
// Go module proxy).
func buildCritest(t *testing.T) string {
	t.Helper()
	bin, err := critestTool.path()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// critestWebServer stands in for nginx in the images critest runs as web
// servers: busybox's httpd serving index.html, under a process named
// nginx that writes /var/run/nginx.pid, which the PID namespace specs
// look for. As PID 1 it must handle TERM itself.
const critestWebServer = `#!/bin/sh
echo $$ > /var/run/nginx.pid
echo "httpd: serving on port ${NGINX_PORT:-80}"
httpd -f -p "${NGINX_PORT:-80}" -h /usr/share/nginx/html &
child=$!
trap 'kill $child; exit 0' TERM INT
wait $child
`

// Stand-ins for applets the host's busybox may lack but critest runs in
// its busybox image.
const (
	critestPgrep = `#!/bin/sh
found=1
for p in /proc/[0-9]*; do
	if [ "$(cat $p/comm 2>/dev/null)" = "$1" ]; then echo ${p#/proc/}; found=0; fi
done
exit $found
`
	// ipcs -m: the IDs of the IPC namespace's shared memory segments.
	critestIpcs = `#!/bin/sh
awk 'NR > 1 { print $2 }' /proc/sysvipc/shm
`
)

// critestPause is the pause container's program: the pod's PID 1 when
// its containers share a PID namespace, so it reaps orphans, and named
// pause, as the suite's process listings expect (busybox's sleep would
// show up in them).
const critestPause = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 8)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range c {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
`

// critestNoNewPrivs is the program of the suite's nonewprivs image, run
// set-user-ID root: it tells whether the kernel honoured the bit.
const critestNoNewPrivs = `package main

import (
	"fmt"
	"os"
)

func main() { fmt.Printf("Effective uid: %d\n", os.Geteuid()) }
`

// pushCritestImages pushes every image the suite pulls, under the paths
// its names have on their registries: busybox with all applets, users
// and groups as in cri-tools' images/ Dockerfiles, and a web server.
func pushCritestImages(t *testing.T, reg *podRegistry) {
	t.Helper()
	bb, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	extra, err := critestLayer(buildStatic(t, "nonewprivs", critestNoNewPrivs), buildStatic(t, "pause", critestPause))
	if err != nil {
		t.Fatal(err)
	}
	extraDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(extra), Size: int64(len(extra))}
	layers := append(append([]ocispec.Descriptor{}, bb.Layers...), extraDesc)
	blobs := map[digest.Digest][]byte{extraDesc.Digest: extra}
	for _, l := range bb.Layers {
		blobs[l.Digest], _ = bb.Blob(l.Digest)
	}
	cfgBlob, _ := bb.Blob(bb.Config.Digest)
	var base ocispec.Image
	if err := json.Unmarshal(cfgBlob, &base); err != nil {
		t.Fatal(err)
	}
	base.RootFS.DiffIDs = append(base.RootFS.DiffIDs, digest.FromBytes(extra))
	push := func(edit func(*ocispec.ImageConfig), repo string, tags ...string) {
		cfg := base
		cfg.Config.Env = append([]string(nil), base.Config.Env...)
		if edit != nil {
			edit(&cfg.Config)
		}
		reg.pushImage(t, cfg, layers, blobs, repo, tags...)
	}
	user := func(u string) func(*ocispec.ImageConfig) { return func(c *ocispec.ImageConfig) { c.User = u } }
	label := func(v string) func(*ocispec.ImageConfig) {
		return func(c *ocispec.ImageConfig) { c.Labels = map[string]string{"flotilla.test/image": v} }
	}
	web := func(port string) func(*ocispec.ImageConfig) {
		return func(c *ocispec.ImageConfig) {
			// The argument puts nginx's title in /proc/1/cmdline,
			// which the PID namespace specs look for.
			c.Entrypoint, c.Cmd = []string{"/usr/sbin/nginx"}, []string{"nginx: master process"}
			c.Env = append(c.Env, "NGINX_PORT="+port)
			c.StopSignal = "SIGTERM"
		}
	}
	sleep := func(c *ocispec.ImageConfig) { c.Entrypoint, c.Cmd = []string{"/pause"}, nil }

	push(nil, "e2e-test-images/busybox", "1.29-2")
	push(web("80"), "e2e-test-images/nginx", "1.14-2")
	push(web("80"), "e2e-test-images/httpd", "2.4.39-4")
	push(func(c *ocispec.ImageConfig) { c.Entrypoint, c.Cmd = []string{"/usr/local/bin/nonewprivs"}, nil }, "e2e-test-images/nonewprivs", "1.3")
	// The sandbox image and the suite's pause:3.9 differ: a spec
	// counts the tags of the latter.
	push(func(c *ocispec.ImageConfig) { sleep(c); c.Labels = map[string]string{"flotilla.test/image": "sandbox"} }, "pause", "3.10")
	push(sleep, "pause", "3.9")
	const staging = "k8s-staging-cri-tools/"
	push(web("12003"), staging+"hostnet-nginx-"+runtime.GOARCH, "latest")
	push(user("1002"), staging+"test-image-user-uid", "latest")
	push(user("www-data"), staging+"test-image-user-username", "latest")
	push(user("1003:1004"), staging+"test-image-user-uid-group", "latest")
	push(user("www-data:1004"), staging+"test-image-user-username-group", "latest")
	push(user("1000"), staging+"test-image-predefined-group", "latest")
	push(label("latest"), staging+"test-image-latest", "latest")
	push(label("tag"), staging+"test-image-tag", "test", "all")
	push(label("tags"), staging+"test-image-tags", "1", "2", "3")
	for _, n := range []string{"1", "2", "3"} {
		push(label(n), staging+"test-image-"+n, "latest")
	}
}

// critestLayer adds to the busybox image what the suite's images have:
// every applet of the host's busybox, the users and groups of cri-tools'
// test images, and the web server.
func critestLayer(nonewprivs, pause []byte) ([]byte, error) {
	bbPath, err := testimage.BusyboxPath()
	if err != nil {
		return nil, err
	}
	list, err := exec.Command(bbPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	epoch := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	file := func(name string, mode int64, content string) error {
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(content))}); err != nil {
			return err
		}
		_, err := tw.Write([]byte(content))
		return err
	}
	dir := func(name string) error { return hdr(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755}) }
	// Busybox again, with every applet a hard link to it rather than
	// the base layer's symbolic links: masking one applet's path (a
	// spec masks /bin/ls) must not mask busybox itself.
	bb, err := os.ReadFile(bbPath)
	if err != nil {
		return nil, err
	}
	if err := file("bin/busybox", 0o755, string(bb)); err != nil {
		return nil, err
	}
	for _, a := range strings.Fields(string(list)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeLink, Name: "bin/" + a, Linkname: "bin/busybox", Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	steps := []error{
		dir("etc"),
		file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"+
			"www-data:x:33:33:www-data:/var/www:/bin/false\n"+
			"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"+
			"nobody:x:65534:65534:nobody:/home:/bin/false\n"),
		file("etc/group", 0o644, "root:x:0:\nwww-data:x:33:\nusers:x:100:\n"+
			"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n"),
		dir("home"),
		dir("home/default-user"),
		dir("usr"),
		dir("usr/sbin"),
		file("pause", 0o755, string(pause)),
		file("usr/sbin/nginx", 0o755, critestWebServer),
		dir("usr/local"),
		dir("usr/local/bin"),
		file("usr/local/bin/pgrep", 0o755, critestPgrep),
		file("usr/local/bin/ipcs", 0o755, critestIpcs),
		// Set-user-ID root (04755), as the suite's nonewprivs image.
		file("usr/local/bin/nonewprivs", 0o4755, string(nonewprivs)),
		dir("usr/share"),
		dir("usr/share/nginx"),
		dir("usr/share/nginx/html"),
		file("usr/share/nginx/html/index.html", 0o644, "<html><body>Welcome to nginx!</body></html>\n"),
		dir("var/run"),
		dir("var/www"),
	}
	for _, err := range steps {
		if err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// buildStatic compiles a one-file Go program, statically, for an image.
func buildStatic(t *testing.T, name, src string) []byte {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "main.go")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, file)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
