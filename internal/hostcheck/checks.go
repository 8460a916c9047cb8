package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func checkKernel(_ context.Context, e Env) Result {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return warn("", "uname: %v", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	major, minor := kernelVersion(release)
	if major < 5 || (major == 5 && minor < 4) {
		return warn("use a kernel of 5.4 or later (Debian 11 and later ship one)",
			"Linux %s: older than 5.4, some overlayfs and cgroup features are missing", release)
	}
	return pass("Linux %s %s", release, unix.ByteSliceToString(u.Machine[:]))
}

// kernelVersion parses "6.1.0-18-amd64" into 6, 1.
func kernelVersion(release string) (major, minor int) {
	f := strings.FieldsFunc(release, func(r rune) bool { return r == '.' || r == '-' })
	if len(f) >= 2 {
		major, _ = strconv.Atoi(f[0])
		minor, _ = strconv.Atoi(f[1])
	}
	return major, minor
}

// Cgroups: services run in cgroups of their own (limits, OOM accounting) and
// runc puts every container in one; either hierarchy works.
func checkCgroups(_ context.Context, e Env) Result {
	var st unix.Statfs_t
	if err := unix.Statfs(e.CgroupRoot, &st); err != nil {
		return fail("mount the cgroup filesystem: mount -t cgroup2 none /sys/fs/cgroup", "%s: %v", e.CgroupRoot, err)
	}
	self, _ := os.ReadFile(filepath.Join(e.Proc, "self", "cgroup"))
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return checkCgroupsV2(e, string(self))
	}
	return checkCgroupsV1(e, string(self))
}

// needControllers are what services and containers are limited by.
var needControllers = []string{"cpu", "memory", "pids"}

func checkCgroupsV2(e Env, self string) Result {
	ctrl, err := readTrim(filepath.Join(e.CgroupRoot, "cgroup.controllers"))
	if err != nil {
		return fail("check that /sys/fs/cgroup is cgroup2 and readable", "cgroup v2: %v", err)
	}
	have := map[string]bool{}
	for _, c := range strings.Fields(ctrl) {
		have[c] = true
	}
	var missing []string
	for _, c := range needControllers {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fail("enable the controllers (systemd: cgroup_enable=memory on the kernel command line)",
			"cgroup v2, controllers %s missing (have: %s)", strings.Join(missing, ", "), ctrl)
	}
	// Delegation: the cgroup this process runs in must be writable and
	// able to enable controllers for its children (systemd's Delegate=yes).
	own := "/"
	for _, l := range strings.Split(self, "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			own = p
		}
	}
	dir := filepath.Join(e.CgroupRoot, own)
	if unix.Access(dir, unix.W_OK) != nil {
		return warn("run flotillad as root with its own cgroup: the unit's Delegate=yes does it",
			"cgroup v2 (%s); %s is not writable here: services would run without limits", ctrl, own)
	}
	return pass("cgroup v2, controllers %s; %s writable (delegated)", ctrl, own)
}

func checkCgroupsV1(e Env, self string) Result {
	mounted := map[string]string{}
	for _, l := range strings.Split(self, "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			mounted[c] = f[2]
		}
	}
	var missing []string
	for _, c := range needControllers {
		if _, err := os.Stat(filepath.Join(e.CgroupRoot, c)); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fail("mount the cgroup v1 hierarchies (or boot with the unified hierarchy: systemd.unified_cgroup_hierarchy=1)",
			"cgroup v1: %s not mounted under %s", strings.Join(missing, ", "), e.CgroupRoot)
	}
	mem := filepath.Join(e.CgroupRoot, "memory", mounted["memory"])
	if unix.Access(mem, unix.W_OK) != nil {
		return warn("run flotillad as root (the unit's Delegate=yes gives it a cgroup of its own)",
			"cgroup v1; memory cgroup %s not writable here: services would run without limits", mem)
	}
	return pass("cgroup v1 (cpu, memory, pids mounted; %s writable); v2 is the better choice where the distribution allows", mem)
}

// findBinary looks for name where flotillad does: its own directory first,
// then $PATH.
func findBinary(e Env, name string) (string, bool) {
	for _, d := range e.Path {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	return "", false
}

// output runs a program briefly and returns what it printed.
func output(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(b), err
}

func checkRunc(ctx context.Context, e Env) Result {
	p, ok := findBinary(e, "runc")
	if !ok {
		return fail("apt-get install runc (or: make deps)", "runc is not on PATH nor beside flotillad")
	}
	out, err := output(ctx, p, "--version")
	if err != nil {
		return fail("reinstall runc: apt-get install --reinstall runc", "%s --version: %v: %s", p, err, firstLine(out))
	}
	line := firstLine(out) // runc version 1.1.5+ds1
	v := strings.TrimPrefix(line, "runc version ")
	detail := fmt.Sprintf("%s, version %s", p, v)
	if strings.Contains(out, "libseccomp:") {
		for _, l := range strings.Split(out, "\n") {
			if s, ok := strings.CutPrefix(strings.TrimSpace(l), "libseccomp: "); ok {
				detail += ", libseccomp " + s
			}
		}
	}
	if major, minor := kernelVersion(v); major == 1 && minor < 1 {
		return warn("install runc 1.1 or later", "%s: older than 1.1", detail)
	}
	return pass("%s", detail)
}

func checkShim(ctx context.Context, e Env) Result {
	const name = "containerd-shim-runc-v2"
	p, ok := findBinary(e, name)
	if !ok {
		return fail("make build puts one beside flotillad; or apt-get install containerd (it ships the shim)",
			"%s is not beside flotillad nor on PATH", name)
	}
	out, err := output(ctx, p, "-v")
	if err != nil {
		return fail("rebuild it: make build", "%s -v: %v: %s", p, err, firstLine(out))
	}
	v := "unknown"
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(l), "Version:"); ok {
			v = strings.TrimSpace(s)
			break
		}
	}
	return pass("%s, version %s", p, v)
}

// cniPlugins are what the sample network config and the CRI's pods use.
var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

func checkCNIPlugins(_ context.Context, e Env) Result {
	for _, d := range e.CNIBinDirs {
		var missing []string
		for _, p := range cniPlugins {
			if _, err := os.Stat(filepath.Join(d, p)); err != nil {
				missing = append(missing, p)
			}
		}
		switch {
		case len(missing) == 0:
			return pass("%s in %s", strings.Join(cniPlugins, ", "), d)
		case len(missing) < len(cniPlugins):
			return warn("apt-get install containernetworking-plugins",
				"%s lacks %s (pods on the sample network need them)", d, strings.Join(missing, ", "))
		}
	}
	return warn("apt-get install containernetworking-plugins (only Kubernetes pods need them)",
		"no CNI plugins in %s", strings.Join(e.CNIBinDirs, " or "))
}

func checkCNIConfig(_ context.Context, e Env) Result {
	entries, err := os.ReadDir(e.CNIConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return warn("", "%s: %v", e.CNIConfDir, err)
	}
	var found []string
	for _, en := range entries {
		switch filepath.Ext(en.Name()) {
		case ".conflist", ".conf", ".json":
			found = append(found, en.Name())
		}
	}
	if len(found) == 0 {
		return warn("cp deploy/cni/10-flotilla.conflist "+e.CNIConfDir+"/ (only Kubernetes pods need it)",
			"no network config (*.conflist) in %s", e.CNIConfDir)
	}
	return pass("%s: %s (the first is used)", e.CNIConfDir, strings.Join(found, ", "))
}

func checkSeccomp(_ context.Context, e Env) Result {
	status, err := os.ReadFile(filepath.Join(e.Proc, "self", "status"))
	if err != nil || !bytes.Contains(status, []byte("\nSeccomp:")) {
		return warn("use a kernel built with CONFIG_SECCOMP (every distribution kernel is)",
			"the kernel has no seccomp: containers run without a syscall filter")
	}
	actions, _ := readTrim(filepath.Join(e.Proc, "sys", "kernel", "seccomp", "actions_avail"))
	if actions == "" {
		return pass("seccomp filters supported")
	}
	return pass("seccomp filters supported (actions: %s)", actions)
}

func checkAppArmor(_ context.Context, e Env) Result {
	enabled, err := readTrim(filepath.Join(e.Sys, "module", "apparmor", "parameters", "enabled"))
	if err != nil || enabled != "Y" {
		return pass("AppArmor is not enabled on this kernel: containers get no AppArmor profile")
	}
	if _, err := exec.LookPath("apparmor_parser"); err != nil {
		return warn("apt-get install apparmor",
			"AppArmor is enabled but apparmor_parser is missing: the default container profile cannot be loaded")
	}
	return pass("AppArmor enabled, apparmor_parser present")
}

func checkSocket(ctx context.Context, e Env) Result {
	fi, err := os.Lstat(e.Socket)
	if errors.Is(err, fs.ErrNotExist) {
		return warn("start the daemon: systemctl start flotilla (or flotillad --address "+e.Socket+")",
			"no socket at %s: flotillad is not running there", e.Socket)
	}
	if err != nil {
		return warn("", "%s: %v", e.Socket, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fail("remove it and start flotillad", "%s is not a socket (%s)", e.Socket, fi.Mode())
	}
	owner := ""
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = ownerName(st.Uid, st.Gid)
	}
	perm := fi.Mode().Perm()
	detail := fmt.Sprintf("%s %s %s", e.Socket, fi.Mode().String(), owner)
	if perm&0o007 != 0 {
		return warn("chmod 660 "+e.Socket+" (flotillad's [grpc] gid = <group> gives a group access)",
			"%s: anyone on the host may use it, which is root on the host", detail)
	}
	if e.Ping != nil {
		v, err := e.Ping(ctx)
		if err != nil {
			return warn("check flotillad's log (journalctl -u flotilla); a stale socket goes when the daemon starts",
				"%s: no daemon answers: %v", detail, err)
		}
		detail += ", daemon " + v + " answers"
	}
	return pass("%s", detail)
}

func ownerName(uid, gid uint32) string {
	u, g := strconv.Itoa(int(uid)), strconv.Itoa(int(gid))
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}

// Below minFree bytes or minFreePct percent free, disk gets a warning:
// images and their unpacked snapshots both live under the root.
const (
	minFree    = 5 << 30
	minFreePct = 10
)

func checkDisk(_ context.Context, e Env) Result {
	dir := existingParent(e.Root)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return warn("", "%s: %v", dir, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	total := st.Blocks * uint64(st.Bsize)
	pct := 0.0
	if total > 0 {
		pct = 100 * float64(free) / float64(total)
	}
	inodes := ""
	if st.Files > 0 {
		inodes = fmt.Sprintf(", %.0f%% of inodes free", 100*float64(st.Ffree)/float64(st.Files))
	}
	detail := fmt.Sprintf("%s free of %s (%.0f%%) on %s (%s)%s", gib(free), gib(total), pct, dir, fsName(st.Type), inodes)
	if free < minFree || pct < minFreePct {
		return warn("free space there (ctr images rm, ctr content prune) or put --root on a larger filesystem", "%s", detail)
	}
	if st.Files > 0 && st.Ffree*100/st.Files < minFreePct {
		return warn("free inodes there, or put --root on a filesystem with more", "%s", detail)
	}
	return pass("%s", detail)
}

func gib(b uint64) string { return fmt.Sprintf("%.1fGiB", float64(b)/(1<<30)) }

// fsName names the filesystems a root is commonly on.
func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	case 0x2fc12fc1:
		return "zfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("fs 0x%x", magic)
}
