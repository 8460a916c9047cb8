package hostcheck

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testEnv(t *testing.T) Env {
	t.Helper()
	dir := t.TempDir()
	e := Default(filepath.Join(dir, "root"), filepath.Join(dir, "fl.sock"))
	e.CNIBinDirs = []string{filepath.Join(dir, "cni-a"), filepath.Join(dir, "cni-b")}
	e.CNIConfDir = filepath.Join(dir, "net.d")
	return e
}

func touch(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCNIChecksFindPluginsAndAConfig(t *testing.T) {
	ctx := context.Background()
	e := testEnv(t)
	if r := checkCNIPlugins(ctx, e); r.Status != Warn || !strings.Contains(r.Fix, "containernetworking-plugins") {
		t.Errorf("no plugins: %+v, want a warning that says what to install", r)
	}
	touch(t, filepath.Join(e.CNIBinDirs[1], "bridge"), filepath.Join(e.CNIBinDirs[1], "loopback"))
	if r := checkCNIPlugins(ctx, e); r.Status != Warn || !strings.Contains(r.Detail, "host-local, portmap") {
		t.Errorf("two of four plugins: %+v, want the missing ones named", r)
	}
	touch(t, filepath.Join(e.CNIBinDirs[1], "host-local"), filepath.Join(e.CNIBinDirs[1], "portmap"))
	if r := checkCNIPlugins(ctx, e); r.Status != Pass || !strings.Contains(r.Detail, e.CNIBinDirs[1]) {
		t.Errorf("every plugin: %+v", r)
	}

	if r := checkCNIConfig(ctx, e); r.Status != Warn || !strings.Contains(r.Fix, "10-flotilla.conflist") {
		t.Errorf("no config dir: %+v, want a warning pointing at the sample", r)
	}
	touch(t, filepath.Join(e.CNIConfDir, "README"), filepath.Join(e.CNIConfDir, "10-net.conflist"))
	if r := checkCNIConfig(ctx, e); r.Status != Pass || !strings.Contains(r.Detail, "10-net.conflist") || strings.Contains(r.Detail, "README") {
		t.Errorf("a conflist: %+v", r)
	}
}

func TestBinariesAreFoundBesideFlotilladFirst(t *testing.T) {
	ctx := context.Background()
	e := testEnv(t)
	dir := t.TempDir()
	e.Path = []string{dir}
	t.Setenv("PATH", t.TempDir())
	if r := checkRunc(ctx, e); r.Status != Fail || !strings.Contains(r.Fix, "apt-get install runc") {
		t.Errorf("no runc: %+v, want a failure with the fix", r)
	}
	if err := os.WriteFile(filepath.Join(dir, "runc"), []byte("#!/bin/sh\necho 'runc version 1.2.3'\necho 'libseccomp: 2.5.4'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := checkRunc(ctx, e); r.Status != Pass || !strings.Contains(r.Detail, "version 1.2.3, libseccomp 2.5.4") {
		t.Errorf("runc beside flotillad: %+v", r)
	}
	if err := os.WriteFile(filepath.Join(dir, "containerd-shim-runc-v2"), []byte("#!/bin/sh\nprintf 'containerd-shim-runc-v2:\\n  Version:  2.4.2\\n'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := checkShim(ctx, e); r.Status != Pass || !strings.Contains(r.Detail, "version 2.4.2") {
		t.Errorf("shim beside flotillad: %+v", r)
	}
}

func TestSocketCheckSaysWhetherTheDaemonAnswersAndWhoMayUseIt(t *testing.T) {
	ctx := context.Background()
	e := testEnv(t)
	if r := checkSocket(ctx, e); r.Status != Warn || !strings.Contains(r.Detail, "not running") {
		t.Errorf("no socket: %+v", r)
	}
	l, err := net.Listen("unix", e.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chmod(e.Socket, 0o660); err != nil {
		t.Fatal(err)
	}
	e.Ping = func(context.Context) (string, error) { return "0.2.0", nil }
	if r := checkSocket(ctx, e); r.Status != Pass || !strings.Contains(r.Detail, "0.2.0 answers") {
		t.Errorf("a daemon that answers: %+v", r)
	}
	e.Ping = func(context.Context) (string, error) { return "", errors.New("connection refused") }
	if r := checkSocket(ctx, e); r.Status != Warn || !strings.Contains(r.Detail, "no daemon answers") {
		t.Errorf("a stale socket: %+v", r)
	}
	if err := os.Chmod(e.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	if r := checkSocket(ctx, e); r.Status != Warn || !strings.Contains(r.Fix, "chmod 660") {
		t.Errorf("a socket anyone may use: %+v", r)
	}
}

func TestDiskIsMeasuredOnTheRootsNearestDirectory(t *testing.T) {
	e := testEnv(t) // the root does not exist yet: its parent is measured
	r := checkDisk(context.Background(), e)
	if r.Status == Fail || !strings.Contains(r.Detail, filepath.Dir(e.Root)) || !strings.Contains(r.Detail, "GiB free") {
		t.Errorf("disk: %+v", r)
	}
}

func TestKernelVersionParses(t *testing.T) {
	for release, want := range map[string][2]int{"6.1.0-18-amd64": {6, 1}, "5.10.0": {5, 10}, "4.19.94-300.el7": {4, 19}, "junk": {0, 0}} {
		if maj, min := kernelVersion(release); maj != want[0] || min != want[1] {
			t.Errorf("kernelVersion(%q) = %d.%d, want %d.%d", release, maj, min, want[0], want[1])
		}
	}
}

func TestFailedOnlyCountsRequiredChecks(t *testing.T) {
	if Failed([]Result{{Name: "cni-config", Status: Fail}, {Name: "runc", Required: true, Status: Warn}}) {
		t.Error("an optional failure and a required warning made doctor fail")
	}
	if !Failed([]Result{{Name: "runc", Required: true, Status: Fail}}) {
		t.Error("a required failure did not")
	}
}

func TestOverlayAndIDMapMountForReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	e := testEnv(t)
	e.Root = t.TempDir()
	r := checkOverlay(context.Background(), e)
	if r.Status == Fail {
		t.Fatalf("overlay on %s: %+v", e.Root, r)
	}
	if !strings.Contains(r.Detail, "index=off") {
		t.Errorf("overlay's options are not reported: %+v", r)
	}
	entries, _ := os.ReadDir(e.Root)
	if len(entries) != 0 {
		t.Errorf("the overlay check left %d entries in the root", len(entries))
	}
	if r := checkIDMap(context.Background(), e); r.Status == Fail {
		t.Errorf("idmapped mounts are optional, yet: %+v", r)
	}
}
