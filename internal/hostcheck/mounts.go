package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// overlayOptions are tried one by one after a plain overlay mount works:
// index=off is what the snapshotter mounts with, metacopy and redirect_dir
// make copy-ups and renames cheap where the kernel has them.
var overlayOptions = []string{"index=off", "metacopy=on", "redirect_dir=on"}

// checkOverlay mounts an overlay in a temporary directory on the root's
// filesystem: that it is listed in /proc/filesystems does not mean the
// root's filesystem can be its upper layer (overlay on overlay, in a
// container, cannot).
func checkOverlay(_ context.Context, e Env) Result {
	fsList, _ := os.ReadFile(filepath.Join(e.Proc, "filesystems"))
	if !strings.Contains(string(fsList), "\toverlay\n") {
		// Not loaded yet: a mount loads the module on most kernels.
		if os.Geteuid() != 0 {
			return fail("modprobe overlay; echo overlay > /etc/modules-load.d/overlay.conf",
				"overlay is not in /proc/filesystems (and, not root, no mount was tried)")
		}
	}
	if os.Geteuid() != 0 {
		return pass("overlay is in /proc/filesystems (run doctor as root to try a mount)")
	}
	base := existingParent(e.Root)
	var st unix.Statfs_t
	_ = unix.Statfs(base, &st)
	where := fmt.Sprintf("%s (%s)", base, fsName(st.Type))
	dir, err := os.MkdirTemp(base, ".flotilla-doctor-")
	if err != nil {
		return fail("make the root writable by root", "cannot try an overlay mount on %s: %v", where, err)
	}
	defer os.RemoveAll(dir)
	if err := tryOverlay(dir, ""); err != nil {
		fix := "modprobe overlay; echo overlay > /etc/modules-load.d/overlay.conf"
		if st.Type == unix.OVERLAYFS_SUPER_MAGIC {
			fix = "the root is itself on overlayfs (a container's filesystem?): put --root on a volume or a host directory"
		}
		return fail(fix, "an overlay mount on %s fails: %v", where, err)
	}
	var ok, refused []string
	for _, opt := range overlayOptions {
		if err := tryOverlay(dir, opt); err != nil {
			refused = append(refused, opt)
		} else {
			ok = append(ok, opt)
		}
	}
	detail := "an overlay mounts on " + where
	if len(ok) > 0 {
		detail += "; accepts " + strings.Join(ok, ", ")
	}
	if len(refused) > 0 {
		detail += "; refuses " + strings.Join(refused, ", ")
	}
	if defaults := overlayDefaults(e); defaults != "" {
		detail += " (module defaults: " + defaults + ")"
	}
	for _, r := range refused {
		if r == "index=off" {
			return warn("use a kernel of 4.13 or later", "%s", detail)
		}
	}
	return pass("%s", detail)
}

// tryOverlay mounts one lower layer with a file, an upper and a work
// directory under dir, with extra options, sees the file through the mount
// and unmounts it.
func tryOverlay(dir, extra string) error {
	run := filepath.Join(dir, "mount-"+strings.NewReplacer("=", "-", ",", "-").Replace(extra))
	lower, upper, work, merged := filepath.Join(run, "lower"), filepath.Join(run, "upper"), filepath.Join(run, "work"), filepath.Join(run, "merged")
	for _, d := range []string{lower, upper, work, merged} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	defer os.RemoveAll(run)
	if err := os.WriteFile(filepath.Join(lower, "probe"), []byte("ok"), 0o600); err != nil {
		return err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if extra != "" {
		opts += "," + extra
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount -t overlay -o %s: %w", extra, err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)
	if b, err := os.ReadFile(filepath.Join(merged, "probe")); err != nil || string(b) != "ok" {
		return fmt.Errorf("the lower layer's file is not visible through the mount: %v", err)
	}
	// A write goes to the upper layer (a copy-up).
	if err := os.WriteFile(filepath.Join(merged, "probe"), []byte("up"), 0o600); err != nil {
		return fmt.Errorf("copy-up: %w", err)
	}
	return nil
}

// overlayDefaults reads the overlay module's parameters for the options.
func overlayDefaults(e Env) string {
	var out []string
	for _, p := range []string{"index", "metacopy", "redirect_dir"} {
		if v, err := readTrim(filepath.Join(e.Sys, "module", "overlay", "parameters", p)); err == nil {
			out = append(out, p+"="+v)
		}
	}
	return strings.Join(out, " ")
}

// checkIDMap tries an idmapped mount of a tmpfs: mount_setattr with
// MOUNT_ATTR_IDMAP and a user namespace's fd on a detached clone of the
// mount. User-namespaced pods need it (Linux 5.12 for the syscall, 6.3 for
// tmpfs); nothing else does.
func checkIDMap(_ context.Context, e Env) Result {
	if os.Geteuid() != 0 {
		return skip("not root: no mount was tried")
	}
	dir, err := os.MkdirTemp("", "flotilla-doctor-idmap-")
	if err != nil {
		return skip("%v", err)
	}
	defer os.RemoveAll(dir)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		return skip("mount a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)

	userns, stop, err := userNamespace()
	if err != nil {
		return warn("enable user namespaces (sysctl user.max_user_namespaces=15000)", "no user namespace for an idmapped mount: %v", err)
	}
	defer stop()

	tree, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return warn("a kernel of 6.3 or later idmaps tmpfs and overlay's layers", "open_tree is missing (kernel < 5.2): no idmapped mounts")
		}
		return warn("", "open_tree: %v", err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	err = unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr)
	switch {
	case err == nil:
		return pass("mount_setattr(MOUNT_ATTR_IDMAP) idmaps a tmpfs: user-namespaced pods can share image layers")
	case errors.Is(err, unix.ENOSYS):
		return warn("use a kernel of 6.3 or later for user-namespaced pods", "mount_setattr is missing (kernel < 5.12): no idmapped mounts")
	case errors.Is(err, unix.EINVAL):
		return warn("use a kernel of 6.3 or later for user-namespaced pods", "mount_setattr cannot idmap a tmpfs (kernel < 6.3)")
	}
	return warn("", "mount_setattr(MOUNT_ATTR_IDMAP) on a tmpfs: %v", err)
}

// userNamespace starts a process in a new user namespace mapping 0-65535 to
// 100000-165535 and opens its namespace; stop ends it.
func userNamespace() (*os.File, func(), error) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(sleep, "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		stop()
		return nil, nil, err
	}
	return f, func() { f.Close(); stop() }, nil
}
