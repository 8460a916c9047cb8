package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestParseStartResponseReadsEveryShimGeneration(t *testing.T) {
	pb, err := proto.Marshal(&bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc", Address: "unix:///run/x/s/abc"})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(&bootapi.BootstrapResult{Version: 2, Protocol: "ttrpc", Address: "unix:///run/x/s/def"})
	for _, c := range []struct {
		name    string
		out     []byte
		version int32
		address string
	}{
		{"protobuf (2.x shims)", pb, 3, "unix:///run/x/s/abc"},
		{"json (bootstrap.json)", js, 2, "unix:///run/x/s/def"},
		{"bare address (oldest shims)", []byte("unix:///run/x/s/ghi\n"), 2, "unix:///run/x/s/ghi"},
	} {
		r, err := parseStartResponse(c.out)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if r.Version != c.version || r.Address != c.address || r.Protocol != "ttrpc" {
			t.Errorf("%s: got version %d address %q protocol %q", c.name, r.Version, r.Address, r.Protocol)
		}
	}
	if _, err := parseStartResponse([]byte("  \n")); err == nil {
		t.Error("empty start output accepted")
	}
}

func TestResolveRuntimeFindsShimInBinDirThenPath(t *testing.T) {
	bin, path := t.TempDir(), t.TempDir()
	write := func(dir, name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inBin := write(bin, "containerd-shim-runc-v2")
	inPath := write(path, "containerd-shim-other-v1")
	t.Setenv("PATH", path)
	m := NewManager(t.Context(), Config{BinDir: bin}, nil)
	for _, c := range []struct{ runtime, want string }{
		{"", inBin},
		{"io.containerd.runc.v2", inBin},
		{"io.containerd.other.v1", inPath},
		{inPath, inPath},
	} {
		got, err := m.ResolveRuntime(c.runtime)
		if err != nil || got != c.want {
			t.Errorf("ResolveRuntime(%q) = %q, %v; want %q", c.runtime, got, err, c.want)
		}
	}
	if _, err := m.ResolveRuntime("io.containerd.missing.v9"); !errdefs.IsNotFound(err) {
		t.Errorf("missing runtime: %v, want NotFound", err)
	}
	for _, bad := range []string{"runc", "relative/shim", ".v2"} {
		if _, err := m.ResolveRuntime(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ResolveRuntime(%q) = %v, want InvalidArgument", bad, err)
		}
	}
}

func TestLoadClearsBundlesOfTasksNeverCreated(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	// A bundle without bootstrap.json: tasks died before the shim answered.
	b, err := NewBundle(root, state, "ns", "half", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	// A removal that a crash interrupted, and a work directory whose bundle
	// a reboot took away.
	if err := os.MkdirAll(filepath.Join(state, "ns", ".gone"), 0o700); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(root, "ns", "orphan")
	if err := os.MkdirAll(orphan, 0o711); err != nil {
		t.Fatal(err)
	}
	m := NewManager(t.Context(), Config{Root: root, State: state}, nil)
	if err := m.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{b.Path, b.Work, filepath.Join(state, "ns", ".gone"), orphan} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived Load: %v", p, err)
		}
	}
	if got := m.List("ns"); len(got) != 0 {
		t.Fatalf("Load registered %d tasks, want none", len(got))
	}
}

func TestLoadCleansUpAndReportsTasksWhoseShimIsGone(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	b, err := NewBundle(root, state, "ns", "dead", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	// The shim answered once, then died with the machine's tasks process:
	// its socket is gone. Its binary (a stand-in) reports the recorded exit.
	data, _ := json.Marshal(&bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc", Address: "unix://" + filepath.Join(state, "no-such.sock")})
	if err := os.WriteFile(filepath.Join(b.Path, bootstrapFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(t.TempDir(), "containerd-shim-fake-v2")
	// `delete` prints a DeleteResponse: pid 42 (field 1), exit status 7 (field 2).
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nprintf '\\010\\052\\020\\007'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.Path, binaryPathFile), []byte(fake), 0o600); err != nil {
		t.Fatal(err)
	}
	type event struct {
		ns, topic string
		body      any
	}
	var got []event
	m := NewManager(t.Context(), Config{Root: root, State: state}, func(_ context.Context, ns, topic string, body any) {
		got = append(got, event{ns, topic, body})
	})
	if err := m.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(b.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bundle of a dead shim survived Load: %v", err)
	}
	if len(got) != 2 || got[0].topic != "/tasks/exit" || got[1].topic != "/tasks/delete" || got[0].ns != "ns" {
		t.Fatalf("events = %+v, want /tasks/exit then /tasks/delete in ns", got)
	}
	if s := got[0].body.(interface{ GetExitStatus() uint32 }).GetExitStatus(); s != 7 {
		t.Fatalf("exit status %d, want the one the shim binary recorded (7)", s)
	}
}

func TestRuncRootIsSetOnlyWhereRuncOptionsNameNone(t *testing.T) {
	root := "/run/flotilla/tasks/.runc"
	got, err := withRuncRoot(nil, root)
	if err != nil {
		t.Fatal(err)
	}
	var o runcoptions.Options
	if err := got.UnmarshalTo(&o); err != nil || o.Root != root {
		t.Fatalf("no options: got %v (%v), want runc options with root %s", got, err, root)
	}

	mine, _ := typeurl.MarshalAnyToProto(&runcoptions.Options{Root: "/custom", SystemdCgroup: true})
	if got, _ := withRuncRoot(mine, root); got != mine {
		t.Fatalf("options naming a root were changed: %v", got)
	}

	noRoot, _ := typeurl.MarshalAnyToProto(&runcoptions.Options{SystemdCgroup: true})
	got, err = withRuncRoot(noRoot, root)
	if err != nil {
		t.Fatal(err)
	}
	o = runcoptions.Options{}
	if err := got.UnmarshalTo(&o); err != nil || o.Root != root || !o.SystemdCgroup {
		t.Fatalf("options without root: got %+v (%v), want root set and the rest kept", &o, err)
	}

	other, _ := anypb.New(&bootapi.Extension{})
	if got, _ := withRuncRoot(other, root); got != other {
		t.Fatalf("another runtime's options were changed: %v", got)
	}
}

func TestGroupShimIsTheConnectedShimTheRuncShimWouldGroupATaskWith(t *testing.T) {
	cfg := Config{Address: "/run/flotilla/flotilla.sock", SocketDir: "/run/flotilla/tasks/.s"}
	m := NewManager(t.Context(), cfg, nil)
	const runc, other = "/bin/containerd-shim-runc-v2", "/bin/containerd-shim-other-v1"
	live := func(ns, group string) *Shim {
		return &Shim{params: &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc", Address: socketAddress(&cfg, ns, group)}, closed: make(chan struct{})}
	}
	pod := live("k8s.io", "pod1")
	gone := live("k8s.io", "pod2")
	close(gone.closed)
	m.tasks["k8s.io"] = map[string]*Task{
		"pod1":     {ID: "pod1", Namespace: "k8s.io", Runtime: runc, shim: pod},
		"pod2":     {ID: "pod2", Namespace: "k8s.io", Runtime: runc, shim: gone},
		"creating": nil,
	}
	m.tasks["other"] = map[string]*Task{"pod3": {ID: "pod3", Namespace: "other", Runtime: runc, shim: live("other", "pod3")}}
	spec := func(annotations map[string]string) []byte {
		b, _ := json.Marshal(map[string]any{"annotations": annotations})
		return b
	}
	for _, c := range []struct {
		name, ns, id, binary string
		spec                 []byte
		want                 *Shim
	}{
		{"a container of the pod", "k8s.io", "app", runc, spec(map[string]string{"io.kubernetes.cri.sandbox-id": "pod1"}), pod},
		{"the runc group label first", "k8s.io", "app", runc, spec(map[string]string{"io.containerd.runc.v2.group": "pod1", "io.kubernetes.cri.sandbox-id": "x"}), pod},
		{"a group label naming no shim of ours", "k8s.io", "app", runc, spec(map[string]string{"io.containerd.runc.v2.group": "x", "io.kubernetes.cri.sandbox-id": "pod1"}), nil},
		{"no label: its own group", "k8s.io", "app", runc, spec(nil), nil},
		{"no label, named like a running group", "k8s.io", "pod1", runc, spec(nil), pod},
		{"a group whose shim disconnected", "k8s.io", "app", runc, spec(map[string]string{"io.kubernetes.cri.sandbox-id": "pod2"}), nil},
		{"the pod's id in another namespace", "other", "app", runc, spec(map[string]string{"io.kubernetes.cri.sandbox-id": "pod1"}), nil},
		{"another shim binary", "k8s.io", "app", other, spec(map[string]string{"io.kubernetes.cri.sandbox-id": "pod1"}), nil},
		{"a spec that does not parse", "k8s.io", "app", runc, []byte("{"), nil},
	} {
		got := m.groupShim(c.ns, c.id, c.binary, c.spec)
		var want *bootapi.BootstrapResult
		if c.want != nil {
			want = c.want.params
		}
		if got != want {
			t.Errorf("%s: groupShim = %v, want %v", c.name, got, want)
		}
	}
}
