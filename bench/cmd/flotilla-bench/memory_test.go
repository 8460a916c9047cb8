package main

import (
	"os"
	"testing"
)

func TestProcReadersSeeThisProcess(t *testing.T) {
	rss, ok := vmRSS(os.Getpid())
	if !ok || rss <= 0 {
		t.Fatalf("vmRSS(self) = %d, %v; want a positive size", rss, ok)
	}
	if ppid, ok := parentPID(os.Getpid()); !ok || ppid != os.Getppid() {
		t.Fatalf("parentPID(self) = %d, %v; want %d", ppid, ok, os.Getppid())
	}
	if isShim(os.Getpid()) {
		t.Fatal("the test binary was taken for a shim")
	}
}
