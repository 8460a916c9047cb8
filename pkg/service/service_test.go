package service

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/pkg/handshake"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

func TestStandaloneFlagsGiveWhatFlotilladWouldHandOver(t *testing.T) {
	defer func(a []string) { os.Args = a }(os.Args)
	os.Args = []string{"flotilla-metadata",
		"--socket", "/run/s/metadata.sock", "--root", "/var/lib/r/metadata",
		"--gateway", "/run/f/flotilla.sock", "--call-timeout", "5s", "--route-wait", "3s",
		"--dep", "content=/run/s/content.sock",
		"--snapshotter", "overlayfs=/run/s/snapshotter-overlayfs.sock",
		"--snapshotter", "remote=/run/r.sock",
		"--option", "gc_schedule=1m"}
	env, err := standaloneEnv("metadata", os.Args[1:])
	if err != nil {
		t.Fatal(err)
	}
	if env.Gateway != "/run/f/flotilla.sock" || env.State != "/run/s" || env.CallTimeoutMS != (5*time.Second).Milliseconds() {
		t.Errorf("gateway %q, state %q, call timeout %dms; want the flags' (state beside the socket)", env.Gateway, env.State, env.CallTimeoutMS)
	}
	if env.RouteWaitMS != 3000 {
		t.Errorf("route wait %dms; want the flag's 3000", env.RouteWaitMS)
	}
	if env.Deps["content"] != "/run/s/content.sock" || len(env.Deps) != 1 {
		t.Errorf("deps %v; want content's socket", env.Deps)
	}
	if env.Snapshotters["overlayfs"] != "/run/s/snapshotter-overlayfs.sock" || env.Snapshotters["remote"] != "/run/r.sock" {
		t.Errorf("snapshotters %v; want both named", env.Snapshotters)
	}
	if env.Options["gc_schedule"] != "1m" {
		t.Errorf("options %v; want gc_schedule", env.Options)
	}
}

func TestStandaloneFlagsRefuseADependencyWithoutASocket(t *testing.T) {
	defer func(a []string) { os.Args = a }(os.Args)
	for _, bad := range []string{"content", "content=", "=/x.sock"} {
		os.Args = []string{"flotilla-metadata", "--socket", "/s.sock", "--root", "/r", "--dep", bad}
		if _, err := standaloneEnv("metadata", os.Args[1:]); err == nil {
			t.Errorf("--dep %q accepted", bad)
		}
	}
}

func TestStandaloneDottedOptionsAreTables(t *testing.T) {
	env, err := standaloneEnv("cri", []string{"--socket", "/s.sock", "--root", "/r",
		"--option", "cni.conf_dir=/x", "--option", `cni.bin_dirs=["/a"]`, "--option", "sandbox_image=p"})
	if err != nil {
		t.Fatal(err)
	}
	cni, _ := env.Options["cni"].(map[string]any)
	if cni["conf_dir"] != "/x" || len(cni["bin_dirs"].([]any)) != 1 || env.Options["sandbox_image"] != "p" {
		t.Errorf("options %v; want cni as a table", env.Options)
	}
	for _, bad := range []string{".x=1", "x.=1", "a..b=1"} {
		if _, err := standaloneEnv("cri", []string{"--socket", "/s.sock", "--root", "/r", "--option", bad}); err == nil {
			t.Errorf("--option %q accepted", bad)
		}
	}
}

func TestStandaloneVersionNeedsNoOtherFlag(t *testing.T) {
	if _, err := standaloneEnv("cri", []string{"--version"}); !errors.Is(err, errVersion) {
		t.Errorf("--version: %v; want the version printed alone", err)
	}
}

func TestTheGraphKnowsEachProcessByTheNameFlotilladGivesIt(t *testing.T) {
	p := &Process{Env: handshake.Env{
		Gateway:      "/run/f/flotilla.sock",
		Deps:         map[string]string{"metadata": "/run/s/metadata.sock"},
		Snapshotters: map[string]string{"overlayfs": "/run/s/snapshotter-overlayfs.sock"},
		RouteWaitMS:  2500,
	}}
	o := p.GraphOptions()
	if o.Processes["metadata"] != "/run/s/metadata.sock" || o.Processes["snapshotter-overlayfs"] != "/run/s/snapshotter-overlayfs.sock" || len(o.Processes) != 2 {
		t.Errorf("processes %v; want metadata and snapshotter-overlayfs", o.Processes)
	}
	if o.Gateway != "/run/f/flotilla.sock" || o.Wait != 2500*time.Millisecond || o.Timeout != rpc.DefaultCallTimeout {
		t.Errorf("gateway %q, wait %s, timeout %s; want the environment's", o.Gateway, o.Wait, o.Timeout)
	}
}
