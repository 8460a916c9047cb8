package metadb

import (
	"context"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func testSandbox(id string, labels map[string]string) *types.Sandbox {
	return &types.Sandbox{
		SandboxID: id,
		Runtime:   &types.Sandbox_Runtime{Name: "io.containerd.runc.v2", Options: &anypb.Any{TypeUrl: "opts", Value: []byte("o")}},
		Spec:      &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte(`{"ociVersion":"1.2.0"}`)},
		Labels:    labels,
		Extensions: map[string]*anypb.Any{
			"ext": {TypeUrl: "ext", Value: []byte("v")},
		},
		Sandboxer: "podsandbox",
	}
}

func TestSandboxStoreKeepsWhatContainerdKeeps(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	in := testSandbox("pod-1", map[string]string{"app": "web"})
	created, err := db.CreateSandbox(ctx, in)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.CreatedAt == nil || !created.CreatedAt.AsTime().Equal(created.UpdatedAt.AsTime()) {
		t.Errorf("create set created %v, updated %v; want the store's time in both", created.CreatedAt, created.UpdatedAt)
	}
	got, err := db.GetSandbox(ctx, "pod-1")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if !proto.Equal(got, created) {
		t.Errorf("get returned %v; want what create returned, %v", got, created)
	}
	if got.Sandboxer != "podsandbox" || got.Runtime.GetName() != "io.containerd.runc.v2" || string(got.Runtime.GetOptions().GetValue()) != "o" ||
		string(got.Spec.GetValue()) != `{"ociVersion":"1.2.0"}` || string(got.Extensions["ext"].GetValue()) != "v" || got.Labels["app"] != "web" {
		t.Errorf("record lost fields: %v", got)
	}
	if _, err := db.GetSandbox(nsCtx("other"), "pod-1"); !errdefs.IsNotFound(err) {
		t.Errorf("another namespace sees the sandbox: %v", err)
	}
}

func TestSandboxStoreErrorsAreContainerds(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	if _, err := db.CreateSandbox(ctx, testSandbox("pod-1", nil)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want func(error) bool
	}{
		{"create twice", func() error { _, err := db.CreateSandbox(ctx, testSandbox("pod-1", nil)); return err }(), errdefs.IsAlreadyExists},
		{"create with a bad id", func() error { _, err := db.CreateSandbox(ctx, testSandbox("../x", nil)); return err }(), errdefs.IsInvalidArgument},
		{"create with an empty id", func() error { _, err := db.CreateSandbox(ctx, testSandbox("", nil)); return err }(), errdefs.IsInvalidArgument},
		{"get unknown", func() error { _, err := db.GetSandbox(ctx, "nope"); return err }(), errdefs.IsNotFound},
		{"update unknown", func() error { _, err := db.UpdateSandbox(ctx, testSandbox("nope", nil)); return err }(), errdefs.IsNotFound},
		{"update an unknown field", func() error { _, err := db.UpdateSandbox(ctx, testSandbox("pod-1", nil), "sandboxer"); return err }(), errdefs.IsInvalidArgument},
		{"update the runtime's name without naming the field", func() error {
			s := testSandbox("pod-1", nil)
			s.Runtime.Name = "other"
			_, err := db.UpdateSandbox(ctx, s)
			return err
		}(), errdefs.IsInvalidArgument},
		{"delete unknown", db.DeleteSandbox(ctx, "nope"), errdefs.IsNotFound},
		{"no namespace", func() error { _, err := db.ListSandboxes(context.Background()); return err }(), errdefs.IsFailedPrecondition},
		{"bad filter", func() error { _, err := db.ListSandboxes(ctx, "labels.a==="); return err }(), errdefs.IsInvalidArgument},
	} {
		if !tc.want(tc.err) {
			t.Errorf("%s: got %v", tc.name, tc.err)
		}
	}
}

func TestSandboxStoreUpdateByFieldPaths(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	created, err := db.CreateSandbox(ctx, testSandbox("pod-1", map[string]string{"a": "1", "b": "2"}))
	if err != nil {
		t.Fatal(err)
	}
	up := &types.Sandbox{SandboxID: "pod-1", Labels: map[string]string{"a": "10", "c": "3"},
		Extensions: map[string]*anypb.Any{"new": {TypeUrl: "new", Value: []byte("n")}}}
	got, err := db.UpdateSandbox(ctx, up, "labels.a", "labels.b", "extensions.new")
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if got.Labels["a"] != "10" || got.Labels["b"] != "" || got.Labels["c"] != "" {
		t.Errorf("labels %v; want a=10 only (b removed, c not named)", got.Labels)
	}
	if got.Extensions["new"] == nil || got.Extensions["ext"] == nil {
		t.Errorf("extensions %v; want the old one kept and the new one added", got.Extensions)
	}
	if !got.CreatedAt.AsTime().Equal(created.CreatedAt.AsTime()) || got.UpdatedAt.AsTime().Before(created.UpdatedAt.AsTime()) {
		t.Errorf("times: created %v->%v updated %v->%v", created.CreatedAt, got.CreatedAt, created.UpdatedAt, got.UpdatedAt)
	}
	if got.Sandboxer != "podsandbox" {
		t.Errorf("sandboxer %q changed by an update", got.Sandboxer)
	}

	// Every field at once (no paths) with the same runtime name.
	all := testSandbox("pod-1", map[string]string{"z": "26"})
	all.Spec = &anypb.Any{TypeUrl: "spec", Value: []byte("{}")}
	got, err = db.UpdateSandbox(ctx, all)
	if err != nil {
		t.Fatalf("update all: %v", err)
	}
	if len(got.Labels) != 1 || got.Labels["z"] != "26" || string(got.Spec.GetValue()) != "{}" {
		t.Errorf("update without paths did not replace labels and spec: %v", got)
	}
	// The runtime changes when named.
	rt := &types.Sandbox{SandboxID: "pod-1", Runtime: &types.Sandbox_Runtime{Name: "io.containerd.kata.v2"}}
	if got, err = db.UpdateSandbox(ctx, rt, "runtime"); err != nil || got.Runtime.GetName() != "io.containerd.kata.v2" {
		t.Errorf("update runtime: %v, %v", got.GetRuntime(), err)
	}
}

func TestSandboxStoreListFilters(t *testing.T) {
	db, _ := newTestDB(t)
	ctx := nsCtx("ns")
	for id, app := range map[string]string{"a": "web", "b": "db", "c": "web"} {
		if _, err := db.CreateSandbox(ctx, testSandbox(id, map[string]string{"app": app})); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(fs ...string) []string {
		t.Helper()
		l, err := db.ListSandboxes(ctx, fs...)
		if err != nil {
			t.Fatalf("list %q: %v", fs, err)
		}
		var out []string
		for _, s := range l {
			out = append(out, s.SandboxID)
		}
		return out
	}
	if got := ids(); len(got) != 3 {
		t.Errorf("list all: %v", got)
	}
	if got := ids("labels.app==web"); len(got) != 2 || got[0] != "a" || got[1] != "c" {
		t.Errorf("labels.app==web: %v", got)
	}
	if got := ids("id==b", "id==c"); len(got) != 2 {
		t.Errorf("id==b or id==c: %v", got)
	}
	if got, err := db.ListSandboxes(nsCtx("empty")); err != nil || len(got) != 0 {
		t.Errorf("a namespace without sandboxes lists %v, %v", got, err)
	}
	if err := db.DeleteSandbox(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if got := ids(); len(got) != 2 {
		t.Errorf("after deleting b: %v", got)
	}
}

func TestSandboxStoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateSandbox(nsCtx("ns"), testSandbox("pod-1", map[string]string{"a": "1"})); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if s, err := db.GetSandbox(nsCtx("ns"), "pod-1"); err != nil || s.Labels["a"] != "1" {
		t.Errorf("after reopening: %v, %v", s, err)
	}
}

// A sandbox's gc.ref labels keep what they name, as in containerd, and
// deleting the sandbox lets it go.
func TestGCSandboxLabelsKeepWhatTheyReference(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	blobs := writeTestImageBlobs(t, ctx, db.Content(), "sb")
	if _, err := db.CreateSandbox(ctx, testSandbox("pod-1", map[string]string{
		"containerd.io/gc.ref.content.m": blobs.manifest.String(),
	})); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantKept(t, db, be, "ns", "sandbox references the manifest", blobs.all()...)

	if err := db.DeleteSandbox(ctx, "pod-1"); err != nil {
		t.Fatal(err)
	}
	collect(t, db)
	wantGone(t, db, be, "ns", "sandbox deleted", true, blobs.all()...)
}

// Dropping a sandbox's reference by an update lets the resource go.
func TestGCSandboxUpdateDroppingAReferenceLetsItGo(t *testing.T) {
	db, be := newTestDB(t)
	ctx := nsCtx("ns")
	var dirtied int
	db.OnDirty(func(bool) { dirtied++ })
	kept := writeBlob(t, ctx, db.Content(), []byte("kept by the sandbox"), nil)
	if _, err := db.CreateSandbox(ctx, testSandbox("pod-1", map[string]string{"containerd.io/gc.ref.content.x": kept.String()})); err != nil {
		t.Fatal(err)
	}
	if _, err := db.UpdateSandbox(ctx, &types.Sandbox{SandboxID: "pod-1", Labels: map[string]string{"other": "1"}}, "labels.other"); err != nil {
		t.Fatal(err)
	}
	if dirtied != 0 {
		t.Errorf("an update keeping every reference asked for a collection")
	}
	collect(t, db)
	wantKept(t, db, be, "ns", "the reference is still held", kept)
	if _, err := db.UpdateSandbox(ctx, &types.Sandbox{SandboxID: "pod-1"}, "labels.containerd.io/gc.ref.content.x"); err != nil {
		t.Fatal(err)
	}
	if dirtied != 1 {
		t.Errorf("dropping a reference asked for %d collections; want 1", dirtied)
	}
	collect(t, db)
	wantGone(t, db, be, "ns", "the reference was dropped", true, kept)
}
