package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// mountedAt says whether something is mounted at p.
func mountedAt(t *testing.T, p string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// TestMountManagerActivatesAndDeactivatesMounts drives the mounts service
// with containerd's Go client (client.MountManager(), the Mounts API of
// containerd 2.2) as containerd's TestMountManager and ctr's `images mount`
// do: the list starts empty; a temporary activation of an image's snapshot
// mounts it on the host and hands back one bind of it; an activation whose
// last mount is formatted from the one before it mounts that one and hands
// back the other; both survive a restart of the mounts process; a
// deactivation unmounts and forgets.
func TestMountManagerActivatesAndDeactivatesMounts(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	t.Cleanup(func() { unmountUnder(d.state) })
	img, archive := imageArchive(t)
	d.mustCtr("images", "import", archive)
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), time.Minute)
	defer cancel()
	mm := c.MountManager()

	infos, err := mm.List(ctx)
	if err != nil {
		t.Fatalf("MountManager().List: %v", err)
	}
	if len(infos) != 0 {
		t.Fatalf("a new daemon lists activations: %v", infos)
	}

	ctx, done, err := c.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer done(ctx)
	chainID := identity.ChainID(img.DiffIDs).String()
	view, err := c.SnapshotService("overlayfs").View(ctx, "mm-view", chainID)
	if err != nil {
		t.Fatalf("view of the image: %v", err)
	}

	// ctr images mount's way: everything mounted by the manager.
	tmp, err := mm.Activate(ctx, "mm-temporary", view, mount.WithTemporary, mount.WithLabels(map[string]string{"purpose": "view"}))
	if err != nil {
		t.Fatalf("temporary Activate of the image's view: %v", err)
	}
	if len(tmp.Active) != len(view) || len(tmp.System) != 1 || tmp.System[0].Type != "bind" {
		t.Fatalf("temporary activation = %+v, want the view's %d mount(s) made and one bind handed back", tmp, len(view))
	}
	root := tmp.Active[len(tmp.Active)-1].MountPoint
	if _, err := os.Stat(filepath.Join(root, "bin", "busybox")); err != nil {
		t.Fatalf("the activated view has no /bin/busybox at %s: %v", root, err)
	}

	// A mount formatted from the one before it.
	formatted, err := mm.Activate(ctx, "mm-format", append(append([]mount.Mount(nil), view...),
		mount.Mount{Type: "format/bind", Source: "{{ mount 0 }}/bin", Options: []string{"rbind", "ro"}}))
	if err != nil {
		t.Fatalf("Activate of a formatted mount: %v", err)
	}
	if len(formatted.Active) != len(view) || len(formatted.System) != 1 {
		t.Fatalf("activation = %+v, want the view mounted and the formatted bind handed back", formatted)
	}
	if want := formatted.Active[0].MountPoint + "/bin"; formatted.System[0].Source != want {
		t.Errorf("the handed-back bind's source is %q, want %q", formatted.System[0].Source, want)
	}
	if _, err := os.Stat(filepath.Join(formatted.System[0].Source, "busybox")); err != nil {
		t.Errorf("the handed-back bind's source has no busybox: %v", err)
	}
	if _, err := mm.Activate(ctx, "mm-plain", view); !errdefs.IsNotImplemented(err) {
		t.Errorf("activation of mounts the caller can make: %v, want NotImplemented (nothing to do here)", err)
	}
	if _, err := mm.Activate(ctx, "mm-format", formatted.System, mount.WithTemporary); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second activation of mm-format: %v, want AlreadyExists", err)
	}

	// The records are the mounts service's, kept across its restart; the
	// mounts stay.
	pid := d.servicePid("mounts")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the mounts service to be restarted", func() bool {
		p := d.servicePidOrZero("mounts")
		return p != 0 && p != pid
	})
	infos, err = mm.List(ctx)
	if err != nil {
		t.Fatalf("List after the mounts service's restart: %v", err)
	}
	if len(infos) != 2 {
		t.Fatalf("List after the restart shows %d activations, want 2: %+v", len(infos), infos)
	}
	if only, err := mm.List(ctx, "labels.purpose==view"); err != nil || len(only) != 1 || only[0].Name != "mm-temporary" {
		t.Errorf("List by label: %+v, %v; want mm-temporary", only, err)
	}
	info, err := mm.Info(ctx, "mm-format")
	if err != nil || len(info.Active) != len(view) || info.Active[0].MountPoint != formatted.Active[0].MountPoint {
		t.Fatalf("Info of mm-format after the restart: %+v, %v", info, err)
	}
	if !mountedAt(t, root) || !mountedAt(t, formatted.Active[0].MountPoint) {
		t.Fatalf("the activations were unmounted by the mounts service's restart")
	}

	for _, a := range []struct {
		name string
		info mount.ActivationInfo
	}{{"mm-temporary", tmp}, {"mm-format", formatted}} {
		if err := mm.Deactivate(ctx, a.name); err != nil {
			t.Fatalf("Deactivate %s: %v", a.name, err)
		}
		for _, act := range a.info.Active {
			if mountedAt(t, act.MountPoint) {
				t.Errorf("%s is still mounted after Deactivate %s", act.MountPoint, a.name)
			}
		}
		if _, err := mm.Info(ctx, a.name); !errdefs.IsNotFound(err) {
			t.Errorf("Info %s after Deactivate: %v, want NotFound", a.name, err)
		}
	}
	if infos, _ := mm.List(ctx); len(infos) != 0 {
		t.Errorf("activations left after deactivating both: %+v", infos)
	}
	if _, err := mm.Info(ctx, "never"); !errdefs.IsNotFound(err) {
		t.Errorf("Info of an activation never made: %v, want NotFound", err)
	}
	// The image's snapshot is untouched.
	if _, err := os.Stat(filepath.Join(root, "bin")); !os.IsNotExist(err) {
		t.Errorf("the temporary activation's mount point is left: %v", err)
	}
	if out := d.mustCtr("snapshots", "ls"); !strings.Contains(out, chainID) {
		t.Errorf("the image's snapshot is gone:\n%s", out)
	}
}

// As containerd's collector removes the mount manager's activations, the
// mounts service deactivates one whose lease is deleted, and one whose
// back-referenced container is deleted; one still held stays.
func TestActivationsGoWithTheirLeaseOrWhatTheyBackReference(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t, withConfig("[services.mounts.options]\ncollect_interval = \"300ms\"\n")).start()
	t.Cleanup(func() { unmountUnder(d.state) })
	_, archive := imageArchive(t, testimage.WithName(busyboxRef))
	d.mustCtr("images", "import", archive)
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), time.Minute)
	defer cancel()
	mm := c.MountManager()
	image, err := c.GetImage(ctx, busyboxRef)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := c.NewContainer(ctx, "bref", containerd.WithNewSnapshot("bref", image),
		containerd.WithNewSpec(oci.WithImageConfig(image)))
	if err != nil {
		t.Fatal(err)
	}
	info, err := ctr.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := c.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
	if err != nil {
		t.Fatal(err)
	}

	lease, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	leased, err := mm.Activate(leases.WithLease(ctx, lease.ID), "leased", rootfs, mount.WithTemporary)
	if err != nil {
		t.Fatalf("Activate under a lease: %v", err)
	}
	byContainer, err := mm.Activate(ctx, "by-container", rootfs, mount.WithTemporary,
		mount.WithLabels(map[string]string{"containerd.io/gc.bref.container": "bref"}))
	if err != nil {
		t.Fatalf("Activate back-referencing a container: %v", err)
	}
	kept, err := mm.Activate(ctx, "kept", rootfs, mount.WithTemporary,
		mount.WithLabels(map[string]string{"containerd.io/gc.bref.image": busyboxRef}))
	if err != nil {
		t.Fatalf("Activate back-referencing an image: %v", err)
	}
	// A few collections pass: everything is held.
	time.Sleep(time.Second)
	if infos, err := mm.List(ctx); err != nil || len(infos) != 3 {
		t.Fatalf("activations while held: %d, %v; want 3", len(infos), err)
	}

	gone := func(name string, info mount.ActivationInfo) {
		t.Helper()
		waitFor(t, 10*time.Second, "activation "+name+" to be deactivated", func() bool {
			_, err := mm.Info(ctx, name)
			return errdefs.IsNotFound(err)
		})
		for _, a := range info.Active {
			if mountedAt(t, a.MountPoint) {
				t.Errorf("%s of %s is still mounted after its deactivation", a.MountPoint, name)
			}
		}
	}
	if err := c.LeasesService().Delete(ctx, lease); err != nil {
		t.Fatal(err)
	}
	gone("leased", leased)
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
	gone("by-container", byContainer)
	if _, err := mm.Info(ctx, "kept"); err != nil {
		t.Errorf("the activation back-referencing an image that exists: %v", err)
	}
	if err := mm.Deactivate(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if mountedAt(t, kept.Active[0].MountPoint) {
		t.Errorf("kept is still mounted after Deactivate")
	}
}
