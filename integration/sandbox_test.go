package integration

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestSandboxStoreAnswersAsContainerds drives containerd's Sandbox Store
// with containerd v2.4.2's Go client: records keep what was given, field
// paths update what they name, and errors carry containerd's codes. A
// sandboxer nothing serves fails with its name.
func TestSandboxStoreAnswersAsContainerds(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "sbx"), time.Minute)
	defer cancel()
	store := c.SandboxStore()

	spec, err := typeurl.MarshalAny(&runtimeapi.PodSandboxMetadata{Name: "spec-stand-in"})
	if err != nil {
		t.Fatal(err)
	}
	ext, _ := typeurl.MarshalAny(&runtimeapi.PodSandboxMetadata{Name: "ext"})
	in := sandbox.Sandbox{
		ID:         "sb-1",
		Labels:     map[string]string{"app": "web", "tier": "front"},
		Runtime:    sandbox.RuntimeOpts{Name: "io.containerd.runc.v2"},
		Spec:       spec,
		Sandboxer:  "shim",
		Extensions: map[string]typeurl.Any{"ext": ext},
	}
	created, err := store.Create(ctx, in)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if created.CreatedAt.IsZero() || created.UpdatedAt.IsZero() {
		t.Errorf("Create returned no times: %+v", created)
	}
	got, err := store.Get(ctx, "sb-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.Sandboxer != "shim" || got.Runtime.Name != "io.containerd.runc.v2" || got.Labels["app"] != "web" ||
		got.Spec == nil || string(got.Spec.GetValue()) != string(spec.GetValue()) || got.Extensions["ext"] == nil {
		t.Errorf("Get returned %+v; want what was created", got)
	}
	if !got.CreatedAt.Equal(created.CreatedAt) {
		t.Errorf("Get's created time %v differs from Create's %v", got.CreatedAt, created.CreatedAt)
	}
	if _, err := store.Create(ctx, sandbox.Sandbox{ID: "sb-2", Labels: map[string]string{"app": "db"}, Sandboxer: "shim"}); err != nil {
		t.Fatalf("Create sb-2: %v", err)
	}

	list, err := store.List(ctx, "labels.app==web")
	if err != nil || len(list) != 1 || list[0].ID != "sb-1" {
		t.Errorf("List labels.app==web: %v, %v; want sb-1 only", list, err)
	}
	if list, err := store.List(ctx); err != nil || len(list) != 2 {
		t.Errorf("List: %v, %v; want two", list, err)
	}

	up, err := store.Update(ctx, sandbox.Sandbox{ID: "sb-1", Labels: map[string]string{"app": "api"}}, "labels.app", "labels.tier")
	if err != nil {
		t.Fatalf("Update labels.app: %v", err)
	}
	if up.Labels["app"] != "api" || up.Labels["tier"] != "" || !up.UpdatedAt.After(created.UpdatedAt) || up.Runtime.Name != "io.containerd.runc.v2" {
		t.Errorf("Update returned %+v; want app=api, tier gone, a newer update time, the rest kept", up)
	}

	for _, tc := range []struct {
		what string
		err  error
		want func(error) bool
	}{
		{"Create of an existing id", func() error { _, err := store.Create(ctx, in); return err }(), errdefs.IsAlreadyExists},
		{"Create with a bad id", func() error { _, err := store.Create(ctx, sandbox.Sandbox{ID: "bad/id"}); return err }(), errdefs.IsInvalidArgument},
		{"Get of an unknown id", func() error { _, err := store.Get(ctx, "nope"); return err }(), errdefs.IsNotFound},
		{"Update of an unknown id", func() error { _, err := store.Update(ctx, sandbox.Sandbox{ID: "nope"}, "labels"); return err }(), errdefs.IsNotFound},
		{"Update of an unknown field", func() error { _, err := store.Update(ctx, sandbox.Sandbox{ID: "sb-1"}, "sandboxer"); return err }(), errdefs.IsInvalidArgument},
		{"Update changing the runtime without naming it", func() error {
			_, err := store.Update(ctx, sandbox.Sandbox{ID: "sb-1", Runtime: sandbox.RuntimeOpts{Name: "other"}})
			return err
		}(), errdefs.IsInvalidArgument},
		{"Delete of an unknown id", store.Delete(ctx, "nope"), errdefs.IsNotFound},
		{"Get in another namespace", func() error {
			_, err := store.Get(namespaces.WithNamespace(ctx, "other"), "sb-1")
			return err
		}(), errdefs.IsNotFound},
	} {
		if !tc.want(tc.err) {
			t.Errorf("%s: %v", tc.what, tc.err)
		}
	}

	if err := store.Delete(ctx, "sb-1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := store.Get(ctx, "sb-1"); !errdefs.IsNotFound(err) {
		t.Errorf("Get after Delete: %v; want NotFound", err)
	}

	// The client's NewSandbox asks the default sandboxer ("shim"), which
	// Flotilla does not run: the error names it.
	_, err = c.NewSandbox(ctx, "sb-3", containerd.WithSandboxRuntime("io.containerd.runc.v2", nil))
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), `"shim"`) {
		t.Errorf("NewSandbox with the shim sandboxer: %v; want NotFound naming the sandboxer", err)
	}
	if _, err := c.SandboxController("podsandbox").Status(ctx, "sb-2", false); !errdefs.IsNotFound(err) {
		t.Errorf("podsandbox Status of a sandbox that is no CRI pod: %v; want NotFound", err)
	}
}

// TestCtrSandboxesSeesAndRemovesCRIPods runs a CRI pod with a container
// and finds it in the Sandbox Store as containerd 2.x's CRI records one
// (containerd 2.4.2's `ctr sandboxes ls` and Go client); the store and the
// CRI stay in agreement across a kill -9 of metadata and of cri (which
// mends a lost record and drops an orphan); `ctr sandboxes rm -f` removes
// the pod, its container and its record.
func TestCtrSandboxesSeesAndRemovesCRIPods(t *testing.T) {
	bin := ctr2(t)
	p := startCRIPods(t, podNetwork("flotilla-sandbox"), "sandbox")
	d, rt := p.d, p.rt
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)
	ctr := func(args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := exec.CommandContext(cctx, bin, append([]string{"--address", d.address, "-n", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	mustCtr := func(args ...string) string {
		t.Helper()
		out, err := ctr(args...)
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "sbx", Namespace: "default", Uid: "uid-sbx-1"},
		Labels:   map[string]string{"app": "sbx"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/flotilla-sbx-test"},
	}
	t.Cleanup(func() { _ = os.Remove("/sys/fs/cgroup/flotilla-sbx-test") })
	podID := p.runPod(ctx, t, podCfg)
	ctrID := p.startContainer(ctx, t, podID, podCfg, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
		Image:    &runtimeapi.ImageSpec{Image: p.busyboxRef},
		Command:  []string{"sleep", "1000"},
	})

	if out := mustCtr("sandboxes", "ls"); !strings.Contains(out, podID) || !strings.Contains(out, "io.containerd.runc.v2") {
		t.Fatalf("ctr sandboxes ls does not show the pod %s on runc:\n%s", podID, out)
	}
	c := d.client()
	kctx := namespaces.WithNamespace(ctx, "k8s.io")
	sb, err := c.LoadSandbox(kctx, podID)
	if err != nil {
		t.Fatalf("LoadSandbox: %v", err)
	}
	md := sb.Metadata()
	if md.Sandboxer != "podsandbox" || md.Labels["app"] != "sbx" || md.Labels["io.cri-containerd.kind"] != "sandbox" || md.Spec == nil {
		t.Errorf("the pod's sandbox record: %+v; want sandboxer podsandbox, the pod's labels and kind, a spec", md)
	}
	ctl := c.SandboxController("podsandbox")
	st, err := ctl.Status(kctx, podID, false)
	if err != nil || st.State != "SANDBOX_READY" || st.Pid == 0 {
		t.Errorf("podsandbox Status: %+v, %v; want SANDBOX_READY with the pause pid", st, err)
	}
	if pl, err := ctl.Platform(kctx, podID); err != nil || pl.OS != "linux" {
		t.Errorf("podsandbox Platform: %v, %v", pl, err)
	}
	if _, err := ctl.Metrics(kctx, podID); err != nil {
		t.Errorf("podsandbox Metrics: %v", err)
	}
	if _, err := c.SandboxController("kata").Status(kctx, podID, false); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "kata") {
		t.Errorf("Status through an unknown sandboxer: %v; want NotFound naming it", err)
	}

	storeIDs := func() []string {
		l, err := c.SandboxStore().List(kctx)
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		var ids []string
		for _, s := range l {
			ids = append(ids, s.ID)
		}
		slices.Sort(ids)
		return ids
	}
	podIDs := func() []string {
		pods, err := rt.ListPodSandbox(ctx, nil)
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		var ids []string
		for _, p := range pods {
			ids = append(ids, p.Id)
		}
		return ids
	}

	// kill -9 metadata: the records are where they were.
	killAndAwait(t, d, "metadata")
	waitFor(t, 30*time.Second, "the sandbox store and the CRI to answer after metadata's restart", func() bool {
		return slices.Equal(storeIDs(), []string{podID}) && slices.Equal(podIDs(), []string{podID})
	})
	if out := mustCtr("sandboxes", "ls"); !strings.Contains(out, podID) {
		t.Fatalf("ctr sandboxes ls after metadata's restart:\n%s", out)
	}

	// As if a crash had come between a pod's records: the pod's record
	// lost, a podsandbox record of no pod left. A restarted cri mends both.
	if err := c.SandboxStore().Delete(kctx, podID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SandboxStore().Create(kctx, sandbox.Sandbox{ID: "orphan-pod", Sandboxer: "podsandbox", Runtime: sandbox.RuntimeOpts{Name: "io.containerd.runc.v2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SandboxStore().Create(kctx, sandbox.Sandbox{ID: "not-a-pod", Sandboxer: "shim"}); err != nil {
		t.Fatal(err)
	}
	killAndAwait(t, d, "cri")
	waitFor(t, 60*time.Second, "the restarted cri to mend the sandbox store", func() bool {
		want := []string{"not-a-pod", podID}
		slices.Sort(want)
		return slices.Equal(storeIDs(), want)
	})
	if got := podIDs(); !slices.Equal(got, []string{podID}) {
		t.Fatalf("ListPodSandbox after the cri restart: %v", got)
	}
	if md, err := c.SandboxStore().Get(kctx, podID); err != nil || md.Sandboxer != "podsandbox" || md.Labels["app"] != "sbx" {
		t.Errorf("the mended record: %+v, %v", md, err)
	}
	if err := c.SandboxStore().Delete(kctx, "not-a-pod"); err != nil {
		t.Fatal(err)
	}

	// ctr sandboxes rm -f: stop and shut down through the podsandbox
	// controller; the pod, its container and its record go.
	sb, err = c.LoadSandbox(kctx, podID)
	if err != nil {
		t.Fatal(err)
	}
	exited, err := sb.Wait(kctx)
	if err != nil {
		t.Fatal(err)
	}
	mustCtr("sandboxes", "rm", "-f", podID)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Error("the sandbox's Wait did not return after ctr sandboxes rm")
	}
	if got := storeIDs(); len(got) != 0 {
		t.Errorf("sandbox store after ctr sandboxes rm: %v", got)
	}
	if out := mustCtr("sandboxes", "ls"); strings.Contains(out, podID) {
		t.Errorf("ctr sandboxes ls after rm still shows the pod:\n%s", out)
	}
	if got := podIDs(); len(got) != 0 {
		t.Errorf("ListPodSandbox after ctr sandboxes rm: %v", got)
	}
	if ctrs, err := rt.ListContainers(ctx, nil); err != nil || len(ctrs) != 0 {
		t.Errorf("ListContainers after ctr sandboxes rm: %v, %v", ctrs, err)
	}
	if recs, err := c.ContainerService().List(kctx); err != nil || len(recs) != 0 {
		t.Errorf("container records left after ctr sandboxes rm: %v, %v", recs, err)
	}
	for _, id := range []string{podID, ctrID} {
		if pids := podProcessesMentioning(id); len(pids) > 0 {
			t.Errorf("processes left for %s: %v", id[:12], pids)
		}
	}
	if _, err := ctr("sandboxes", "rm", podID); err != nil {
		t.Errorf("ctr sandboxes rm of a removed pod failed: %v", err)
	}
}

// killAndAwait kill -9s a service's process and waits for its successor.
func killAndAwait(t *testing.T, d *daemon, name string) {
	t.Helper()
	pidOf := d.servicePidOrZero
	if name == "cri" {
		pidOf = func(string) int { return criPid(d) }
	}
	old := pidOf(name)
	if old == 0 {
		t.Fatalf("introspection exports no pid for %s", name)
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "a new "+name+" process", func() bool {
		p := pidOf(name)
		return p != 0 && p != old
	})
}
