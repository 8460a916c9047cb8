package integration

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// TestRuntimeInfoIsWhatTheShimSays drives containerd's Go client as
// containerd's TestRuntimeInfo does: client.RuntimeInfo asks Introspection
// for the PluginInfo of io.containerd.runtime.v2 "task" with a
// RuntimeRequest, and gets the RuntimeInfo `containerd-shim-runc-v2 -info`
// prints, with runc's features. `ctr plugins ls` lists the runtime plugin
// under that id and the tasks process under its own; `ctr plugins ls -d`
// shows the runtime's features.
func TestRuntimeInfoIsWhatTheShimSays(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	requireTool(t, "runc", "runc")
	d := newDaemon(t).start()
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 30*time.Second)
	defer cancel()

	rti, err := c.RuntimeInfo(ctx, "", nil)
	if err != nil {
		t.Fatalf("client.RuntimeInfo: %v", err)
	}
	if rti.Name != "io.containerd.runc.v2" {
		t.Errorf("RuntimeInfo.Name = %q, want io.containerd.runc.v2", rti.Name)
	}
	feat, ok := rti.Features.(*features.Features)
	if !ok {
		t.Fatalf("RuntimeInfo.Features is %T, want *features.Features", rti.Features)
	}
	if !slices.Contains(feat.MountOptions, "rro") {
		t.Errorf("runc's features list no \"rro\" mount option: %v", feat.MountOptions)
	}

	// The runtime's options reach the shim, which answers with them.
	rti, err = c.RuntimeInfo(ctx, "io.containerd.runc.v2", &options.Options{BinaryName: "runc"})
	if err != nil {
		t.Fatalf("client.RuntimeInfo with runc options: %v", err)
	}
	if o, ok := rti.Options.(*options.Options); !ok || o.BinaryName != "runc" {
		t.Errorf("RuntimeInfo.Options = %#v, want the runc options sent (binary runc)", rti.Options)
	}

	if _, err := c.RuntimeInfo(ctx, "io.containerd.nosuch.v9", nil); !errdefs.IsNotFound(err) {
		t.Errorf("RuntimeInfo of a runtime not installed: %v, want NotFound", err)
	}

	rows := map[string]string{}
	for _, line := range strings.Split(d.mustCtr("plugins", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			rows[f[0]+" "+f[1]] = f[3]
		}
	}
	for _, want := range []string{"io.containerd.runtime.v2 task", "io.containerd.grpc.v1 tasks"} {
		if rows[want] != "ok" {
			t.Errorf("ctr plugins ls shows %q as %q, want ok (rows %v)", want, rows[want], rows)
		}
	}
	detail := d.mustCtr("plugins", "ls", "-d", "id==task")
	for _, want := range []string{"runtime.name", "io.containerd.runc.v2", "features.mount_options", "rro", "features.namespaces", "log-uri-schemes"} {
		if !strings.Contains(detail, want) {
			t.Errorf("ctr plugins ls -d id==task does not show %q:\n%s", want, detail)
		}
	}

	// containerd 2.4.2's ctr asks the same questions with its own client.
	out, err := exec.Command(ctr2(t), "--address", d.address, "plugins", "ls", "-d", "id==task").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr 2.4.2 plugins ls -d: %v\n%s", err, out)
	}
	for _, want := range []string{"io.containerd.runtime.v2", "io.containerd.runc.v2", "rro"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ctr 2.4.2 plugins ls -d id==task does not show %q:\n%s", want, out)
		}
	}
}
