package task

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// TestIdmapRootfs: a spec without a user namespace, or
// one whose rootfs cannot be shifted, is told apart without mounting
// anything; a bind rootfs (an image without layers) is owned by the
// mapped root.
func TestIdmapRootfs(t *testing.T) {
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	ovl := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a:/b", "upperdir=/u", "workdir=/w"}}}

	noUserns := &specs.Spec{Linux: &specs.Linux{UIDMappings: m, GIDMappings: m}}
	got, done, err := idmapRootfs(t.TempDir(), noUserns, ovl)
	if err != nil || !slices.Equal(got[0].Options, ovl[0].Options) {
		t.Errorf("mappings without a user namespace: %v, %v; want the mounts unchanged", got, err)
	}
	done()

	withUserns := &specs.Spec{Linux: &specs.Linux{UIDMappings: m, GIDMappings: m, Namespaces: []specs.LinuxNamespace{{Type: specs.UserNamespace}}}}
	if _, _, err := idmapRootfs(t.TempDir(), withUserns, []mount.Mount{{Type: "tmpfs", Source: "x"}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("a tmpfs rootfs in a user namespace: %v; want NotImplemented", err)
	}
	rootless := &specs.Spec{Linux: &specs.Linux{UIDMappings: []specs.LinuxIDMapping{{ContainerID: 1, HostID: 100000, Size: 10}}, GIDMappings: m,
		Namespaces: []specs.LinuxNamespace{{Type: specs.UserNamespace}}}}
	if _, _, err := idmapRootfs(t.TempDir(), rootless, ovl); !errdefs.IsInvalidArgument(err) {
		t.Errorf("mappings without root: %v; want InvalidArgument", err)
	}

	if os.Geteuid() != 0 {
		return
	}
	dir := t.TempDir()
	got, done, err = idmapRootfs(t.TempDir(), withUserns, []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}})
	if err != nil {
		t.Fatal(err)
	}
	done()
	st := mustStat(t, dir)
	if st.uid != 100000 || st.gid != 100000 || got[0].Source != dir {
		t.Errorf("bind rootfs after idmapRootfs: owned by %d:%d; want the mapped root 100000:100000", st.uid, st.gid)
	}
}

// TestIdmapRootfsOverlay shifts a real overlay's lower layers (root
// only, on a kernel with idmapped mounts): through the overlay the lower
// file is owned by the mapped root, on disk it stays root's, and the
// upper directory's root is the mapped root's.
func TestIdmapRootfsOverlay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if err := KernelIDMapSupported(); err != nil {
		t.Skipf("kernel cannot make idmapped mounts: %v", err)
	}
	base := t.TempDir()
	for _, d := range []string{"l1", "l2", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "l1", "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	spec := &specs.Spec{Linux: &specs.Linux{UIDMappings: m, GIDMappings: m, Namespaces: []specs.LinuxNamespace{{Type: specs.UserNamespace}}}}
	in := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + filepath.Join(base, "l2") + ":" + filepath.Join(base, "l1"), "upperdir=" + filepath.Join(base, "u"), "workdir=" + filepath.Join(base, "w")}}}
	idmap := filepath.Join(t.TempDir(), "idmap")
	got, done, err := idmapRootfs(idmap, spec, in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(got[0].Options, ","), "lowerdir="+idmap+"/l2:"+idmap+"/l1") {
		t.Errorf("options %v; want the lower directories through %s", got[0].Options, idmap)
	}
	target := filepath.Join(base, "m")
	if err := mount.All(got, target); err != nil {
		done()
		t.Fatal(err)
	}
	done()
	defer func() { _ = mount.UnmountAll(target, 0) }()
	if _, err := os.Stat(idmap); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("idmapped layers' mount point left behind: %v", err)
	}
	if st := mustStat(t, filepath.Join(target, "file")); st.uid != 100000 {
		t.Errorf("lower file through the overlay owned by %d; want the mapped root 100000", st.uid)
	}
	if st := mustStat(t, filepath.Join(base, "l1", "file")); st.uid != 0 {
		t.Errorf("lower file on disk owned by %d; want 0 (not chowned)", st.uid)
	}
	if st := mustStat(t, filepath.Join(base, "u")); st.uid != 100000 || st.gid != 100000 {
		t.Errorf("upper directory owned by %d:%d; want 100000:100000", st.uid, st.gid)
	}
}

type owner struct{ uid, gid uint32 }

func mustStat(t *testing.T, path string) owner {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return owner{st.Uid, st.Gid}
}
