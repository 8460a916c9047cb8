package integration

// What a containerd user meets first: versions, a configuration that says
// everything and refuses typos, their containerd configuration converted,
// and systemd's readiness protocol.

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// semver matches a semantic version (semver.org's grammar, loosely).
var semver = regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// flotillad runs bin/flotillad with args and returns stdout and stderr.
func flotillad(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "flotillad"), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// versionOf runs a binary with --version and returns the version it says.
func versionOf(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, bin), "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || f[0] != bin || !semver.MatchString(f[1]) {
		t.Fatalf("%s --version printed %q; want %q and a semantic version", bin, out, bin)
	}
	return f[1]
}

func TestEveryBinaryAndCtrVersionShowOneSemanticVersion(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	v := versionOf(t, "flotillad")
	for _, bin := range []string{"flotilla-content", "flotilla-cri", "flotilla-snapshotter"} {
		if got := versionOf(t, bin); got != v {
			t.Errorf("%s --version says %s, flotillad %s", bin, got, v)
		}
	}
	d := newDaemon(t).start()
	cmd := exec.Command("ctr", "--address", d.address, "version")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ctr version: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	server := stdout.String()[strings.Index(stdout.String(), "Server:"):]
	if !regexp.MustCompile(`Version:\s+` + regexp.QuoteMeta(v) + `\n`).MatchString(server) {
		t.Errorf("ctr version shows the server as\n%s\nwant version %s", server, v)
	}
	// ctr compares the server's version and revision with its own, as
	// strings: it warns of a "mismatch" against any daemon but the build
	// it came with, containerd's own included. Nothing else may be said.
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && l != "WARNING: version mismatch" && l != "WARNING: revision mismatch" {
			t.Errorf("ctr version warned: %s", l)
		}
	}
}

func TestConfigDefaultListsEveryOptionWithAComment(t *testing.T) {
	out, _, err := flotillad(t, "config", "default")
	if err != nil {
		t.Fatalf("flotillad config default: %v", err)
	}
	lines := strings.Split(out, "\n")
	for _, key := range []string{"sandbox_image", "gc_schedule", "gc_delete_delay", "bin_dirs", "conf_dir", "config_path",
		"max_concurrent_downloads", "snapshotter", "socket_dir", "runc_root", "mount_options", "memory_limit", "cpu_limit"} {
		found := false
		for i, l := range lines {
			if strings.HasPrefix(l, key+" = ") {
				found = true
				if i == 0 || !strings.HasPrefix(lines[i-1], "# ") {
					t.Errorf("config default: %q has no comment", l)
				}
			}
		}
		if !found {
			t.Errorf("config default lists no %s:\n%s", key, out)
		}
	}
}

func TestMisspelledOptionFailsStartupNamingItAndItsLine(t *testing.T) {
	d := newDaemon(t, withConfig("version = 1\n[services.cri.options]\nsandbox_imagee = \"x\"\n"))
	if err := d.startErr(); err == nil {
		t.Fatal("flotillad became ready with a misspelled option")
	}
	if err := d.wait(20 * time.Second); err == nil {
		t.Fatal("flotillad exited 0 with a misspelled option")
	}
	want := filepath.Join(d.dir, "config.toml") + `:3: unknown option "sandbox_imagee" in [services.cri.options] (did you mean "sandbox_image"?)`
	if !strings.Contains(d.out.String(), want) {
		t.Errorf("output does not say\n%s\noutput:\n%s", want, d.out.String())
	}
	if left := serviceProcessesOf(d.dir); len(left) > 0 {
		t.Errorf("service processes started for a configuration that was refused: %v", left)
	}
}

func TestMissingConfigFileNamedByHandIsRefused(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	_, stderr, err := flotillad(t, "--config", missing, "config", "dump")
	if err == nil || !strings.Contains(stderr, missing+" does not exist") {
		t.Errorf("config dump of a missing file: %v\n%s", err, stderr)
	}
}

func TestConfigDumpShowsTheFileTheFlagsAndTheDefaults(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	doc := "version = 1\n[services.metadata.options]\ngc_schedule = '1m'\n[services.cri.options]\ncni_conf_dir = '/x/net.d'\n"
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := flotillad(t, "--config", cfg, "config", "dump", "--root", "/srv/flotilla")
	if err != nil {
		t.Fatalf("config dump: %v\n%s", err, stderr)
	}
	for _, want := range []string{
		"root = '/srv/flotilla'",                  // a flag
		"gc_schedule = '1m'",                      // the file
		"gc_delete_delay = '100ms'",               // a default
		"conf_dir = '/x/net.d'",                   // the file, under its current name
		"address = '/run/flotilla/flotilla.sock'", // what empty stands for
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config dump lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, cfg+":5: option cni_conf_dir in [services.cri.options] is deprecated: it is now cni.conf_dir") {
		t.Errorf("no deprecation warning naming the line:\n%s", stderr)
	}
	// What dump prints is a configuration that dumps the same.
	dumped := filepath.Join(dir, "dumped.toml")
	if err := os.WriteFile(dumped, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	again, stderr, err := flotillad(t, "--config", dumped, "config", "dump")
	if err != nil {
		t.Fatalf("config dump of a dump: %v\n%s", err, stderr)
	}
	strip := func(s string) string { return s[strings.Index(s, "\n"):] } // the header names the file
	if strip(again) != strip(out) {
		t.Errorf("a dump read back dumps differently:\n%s", again)
	}
}

func TestConfigMigrateConvertsContainerdsConfiguration(t *testing.T) {
	fixtures := "../pkg/config/migrate/testdata/"
	for _, tc := range []struct {
		fixture string
		want    []string // in the converted configuration
		notes   []string // on stderr
	}{
		{"containerd-v2.toml",
			[]string{"sandbox_image = 'registry.example:5000/pause:3.9'", "config_path = '/etc/containerd/certs.d'",
				"bin_dirs = ['/usr/lib/cni']", "snapshotter = 'stargz'",
				"[snapshotters.stargz]\n# from proxy_plugins.stargz.address\naddress = '/run/containerd-stargz-grpc/containerd-stargz-grpc.sock'",
				"[services.cri.options.runtimes.kata]", "runtime_type = 'io.containerd.kata.v2'"},
			[]string{"SystemdCgroup = true"}},
		{"containerd-v3.toml",
			[]string{"sandbox_image = 'registry.example:5000/pause:3.10'", "config_path = '/etc/containerd/certs.d'",
				"bin_dirs = ['/usr/lib/cni']", "mount_options = ['volatile']",
				"address = '/run/containerd-stargz-grpc/containerd-stargz-grpc.sock'"},
			[]string{"enable_selinux = true: not carried over"}},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			fixture := fixtures + tc.fixture
			// The fixture is a configuration containerd reads (Debian's
			// containerd 1.6 reads version 2; version 3 was checked
			// with containerd 2.4.2's `config dump` when it was written).
			if c, err := exec.LookPath("containerd"); err == nil && strings.Contains(tc.fixture, "v2") {
				if out, err := exec.Command(c, "--config", fixture, "config", "dump").CombinedOutput(); err != nil {
					t.Fatalf("containerd does not read the fixture: %v\n%s", err, out)
				}
			}
			out, stderr, err := flotillad(t, "config", "migrate", fixture)
			if err != nil {
				t.Fatalf("config migrate: %v\n%s", err, stderr)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("converted configuration lacks %q:\n%s", want, out)
				}
			}
			for _, want := range tc.notes {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not say %q:\n%s", want, stderr)
				}
			}
			migrated := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(migrated, []byte(out), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, stderr, err := flotillad(t, "--config", migrated, "config", "dump"); err != nil {
				t.Fatalf("the converted configuration does not load: %v\n%s", err, stderr)
			}
		})
	}
}

// The converted configuration runs: the remote snapshotter it names is
// listed (its socket need not answer for the rest to serve).
func TestMigratedConfigurationRuns(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	out, stderr, err := flotillad(t, "config", "migrate", "../pkg/config/migrate/testdata/containerd-v3.toml")
	if err != nil {
		t.Fatalf("config migrate: %v\n%s", err, stderr)
	}
	d := newDaemon(t, withConfig(out)).start()
	plugins := d.mustCtr("plugins", "ls")
	if !regexp.MustCompile(`io.containerd.snapshotter.v1\s+stargz\s`).MatchString(plugins) {
		t.Errorf("ctr plugins ls does not list the stargz snapshotter:\n%s", plugins)
	}
}

func TestSystemdHearsReadyThenStopping(t *testing.T) {
	dir, err := os.MkdirTemp("", "flnotify")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(want string) string {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %s", want)
				}
				if strings.Contains(m, want) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %s on NOTIFY_SOCKET within 30s", want)
			}
		}
	}

	d := newDaemon(t, withEnv("NOTIFY_SOCKET="+sock), onDefaults)
	d.done = make(chan struct{})
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.done) }()
	next("READY=1")
	// READY=1 comes once the graph serves, not before: the client socket
	// is there and every service answers. (The log line saying so is
	// written just before, through a pipe the harness reads.)
	if _, err := os.Stat(d.address); err != nil {
		t.Errorf("READY=1 but the client socket is not there: %v", err)
	}
	waitFor(t, 5*time.Second, "flotillad ready in the log", func() bool { return strings.Contains(d.out.String(), "flotillad ready") })
	// The socket is flotillad's alone: services, their shims and runc
	// must not take it for theirs.
	for _, name := range []string{"content", "tasks"} {
		pid := d.servicePid(name)
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(env), "NOTIFY_SOCKET=") {
			t.Errorf("service %s (pid %d) inherited NOTIFY_SOCKET", name, pid)
		}
	}
	if _, err := os.Stat("/etc/flotilla/config.toml"); os.IsNotExist(err) && !strings.Contains(d.out.String(), "running on the defaults") {
		t.Errorf("no configuration file at the default path, and flotillad does not say it runs on the defaults")
	}
	d.stop()
	next("STOPPING=1")
}

// make checks the Go toolchain against go.mod before it builds anything,
// and says what to do about an old one.
func TestMakeRefusesAnOldGoWithAClearMessage(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "go")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho go1.20.1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("make", "-s", "-C", "..", "check-go", "GO="+fake).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs Go") || !strings.Contains(string(out), "is Go 1.20.1") {
		t.Errorf("make check-go with Go 1.20.1: err %v, output %q; want a refusal naming both versions", err, out)
	}
	if out, err := exec.Command("make", "-s", "-C", "..", "check-go").CombinedOutput(); err != nil {
		t.Errorf("make check-go with this machine's Go: %v: %s", err, out)
	}
}
