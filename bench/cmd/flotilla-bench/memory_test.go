package main

import (
	"os"
	"testing"
)

func TestProcReadersSeeThisProcess(t *testing.T) {
	rss, pss, ok := smapsRollup(os.Getpid())
	if !ok || rss <= 0 || pss <= 0 || pss > rss {
		t.Fatalf("smapsRollup(self) = rss %d, pss %d, %v; want 0 < PSS <= RSS", rss, pss, ok)
	}
	if ppid, ok := parentPID(os.Getpid()); !ok || ppid != os.Getppid() {
		t.Fatalf("parentPID(self) = %d, %v; want %d", ppid, ok, os.Getppid())
	}
	if isShim(os.Getpid()) {
		t.Fatal("the test binary was taken for a shim")
	}
}

func TestShimsAreKnownByTheirCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		// containerd 2.x and Flotilla's tasks start the runc v2 shim so,
		// whatever the executable is called.
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "flotilla-bench", "-id", "c1", "-address", "/tmp/fb-c-1/containerd.sock"}, true},
		{[]string{"flotillad", "-namespace=k8s.io", "--id", "c1", "-address", "/run/x.sock"}, true},
		{[]string{"flotilla-tasks", "--address", "/tmp/fb-f-1/state/tasks.sock", "--root", "/tmp/fb-f-1/root"}, false},
		{[]string{"sleep", "300"}, false},
	} {
		if got := isShimCmdline(tc.args); got != tc.want {
			t.Errorf("isShimCmdline(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
