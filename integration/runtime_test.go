package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRuntimeIsChosenByNameAlone runs a container under a runtime named
// io.containerd.flotillatest.v1: its shim, containerd-shim-flotillatest-v1,
// is found by that name on the daemon's PATH, as containerd finds one.
func TestRuntimeIsChosenByNameAlone(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "used")
	// A shim of its own name that records its use and is the runc shim.
	script := fmt.Sprintf("#!/bin/sh\necho \"$@\" >> %s\nexec %s \"$@\"\n", marker, filepath.Join(binDir, "containerd-shim-runc-v2"))
	if err := os.WriteFile(filepath.Join(dir, "containerd-shim-flotillatest-v1"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d := startTasksDaemon(t, withEnv("PATH="+dir+":"+os.Getenv("PATH")))
	out, err := d.ctrBytes("run", "--rm", "--runtime", "io.containerd.flotillatest.v1", busyboxRef, "rt1", "echo", "other-runtime")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "other-runtime\n" {
		t.Fatalf("container under the named runtime printed %q", out)
	}
	used, err := os.ReadFile(marker)
	if err != nil || !strings.Contains(string(used), "start") {
		t.Fatalf("containerd-shim-flotillatest-v1 was not started for the runtime (%v): %q", err, used)
	}
	d.requireNothingLeft("default")
}
