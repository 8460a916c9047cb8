package spec

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/contrib/apparmor"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	apparmorhost "github.com/containerd/containerd/v2/pkg/apparmor"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/store"
)

// Profile names of the CRI's deprecated string fields (seccomp_profile_path,
// apparmor_profile), as the kubelet wrote them.
const (
	profileRuntimeDefault = "runtime/default"
	profileDockerDefault  = "docker/default"
	profileUnconfined     = "unconfined"
	profileLocalhost      = "localhost/"
	// appArmorDefaultProfile is the name the runtime/default AppArmor
	// profile is loaded under (containerd's name, so a host running
	// both shares one).
	appArmorDefaultProfile = "cri-containerd.apparmor.d"
)

// securityOpts are the spec options of a container's security context,
// in the order they must apply: masked and read-only paths, devices and
// capabilities, privileged (which undoes most of the rest), user and
// groups, and last the AppArmor and seccomp profiles (the default seccomp
// profile depends on the capabilities).
func securityOpts(sb *store.Sandbox, cfg *runtime.ContainerConfig, imageUser string) ([]oci.SpecOpts, error) {
	sc := cfg.GetLinux().GetSecurityContext()
	// The kubelet always sends the paths it wants masked and read-only;
	// a request without them gets none, as in containerd. Privilege
	// escalation (set-user-ID binaries) is allowed unless no_new_privs
	// asks otherwise: containerd's default spec forbids it, the CRI's
	// default allows it.
	opts := []oci.SpecOpts{oci.WithMaskedPaths([]string{}), oci.WithReadonlyPaths([]string{}), oci.WithNewPrivileges}
	if p := sc.GetMaskedPaths(); p != nil {
		opts = append(opts, oci.WithMaskedPaths(p))
	}
	if p := sc.GetReadonlyPaths(); p != nil {
		opts = append(opts, oci.WithReadonlyPaths(p))
	}

	for _, d := range cfg.GetDevices() {
		opt, err := withDevice(d)
		if err != nil {
			return nil, err
		}
		opts = append(opts, opt)
	}
	opts = append(opts, withCapabilities(sc.GetCapabilities()))

	if sc.GetPrivileged() {
		if !sb.Config.GetLinux().GetSecurityContext().GetPrivileged() {
			return nil, fmt.Errorf("privileged container in a sandbox that is not privileged: %w", errdefs.ErrInvalidArgument)
		}
		// All capabilities and devices, writable sysfs and cgroupfs, no
		// masked paths, no seccomp or AppArmor confinement.
		opts = append(opts, oci.WithPrivileged, oci.WithHostDevices, oci.WithAllDevicesAllowed)
	}
	if sc.GetNoNewPrivs() {
		opts = append(opts, oci.WithNoNewPrivileges)
	}
	if sc.GetReadonlyRootfs() {
		opts = append(opts, oci.WithRootFSReadonly())
	}

	userOpts, err := userOpts(sc, imageUser)
	if err != nil {
		return nil, err
	}
	opts = append(opts, userOpts...)

	aa, err := apparmorOpt(sc)
	if err != nil {
		return nil, err
	}
	if aa != nil {
		opts = append(opts, aa)
	}
	sec, err := seccompOpt(sc)
	if err != nil {
		return nil, err
	}
	if sec != nil {
		opts = append(opts, sec)
	}
	return opts, nil
}

// withDevice makes a host device node (or every node under a host
// directory) available at its container path, with a cgroup rule
// allowing the requested access. A symbolic link (/dev/disk/by-id/...)
// is followed to the node.
func withDevice(d *runtime.Device) (oci.SpecOpts, error) {
	host, err := filepath.EvalSymlinks(d.GetHostPath())
	if err != nil {
		return nil, fmt.Errorf("device %s: %v: %w", d.GetHostPath(), err, errdefs.ErrInvalidArgument)
	}
	perms := d.GetPermissions()
	if perms == "" {
		perms = "rwm"
	}
	if strings.Trim(perms, "rwm") != "" {
		return nil, fmt.Errorf("device %s: permissions %q are not a subset of rwm: %w", d.GetHostPath(), perms, errdefs.ErrInvalidArgument)
	}
	return oci.WithDevices(host, d.GetContainerPath(), perms), nil
}

// withCapabilities adds and drops capabilities as the CRI asks, "ALL"
// first so that the individual names refine it ("add ALL, drop CHOWN").
// Ambient capabilities are cleared: Kubernetes leaves non-root plus
// capabilities undefined, and containerd clears them too.
func withCapabilities(caps *runtime.Capability) oci.SpecOpts {
	return func(ctx context.Context, client oci.Client, c *containers.Container, s *oci.Spec) error {
		add, drop := caps.GetAddCapabilities(), caps.GetDropCapabilities()
		isAll := func(c string) bool { return strings.EqualFold(c, "ALL") }
		if slices.ContainsFunc(add, isAll) {
			if err := oci.WithAllCurrentCapabilities(ctx, client, c, s); err != nil {
				return err
			}
		}
		if slices.ContainsFunc(drop, isAll) {
			if err := oci.WithCapabilities(nil)(ctx, client, c, s); err != nil {
				return err
			}
		}
		if err := oci.WithAddedCapabilities(capNames(slices.DeleteFunc(slices.Clone(add), isAll)))(ctx, client, c, s); err != nil {
			return err
		}
		if err := oci.WithDroppedCapabilities(capNames(slices.DeleteFunc(slices.Clone(drop), isAll)))(ctx, client, c, s); err != nil {
			return err
		}
		if s.Process != nil && s.Process.Capabilities != nil {
			s.Process.Capabilities.Ambient = nil
		}
		return nil
	}
}

// userOpts sets the process's user as Kubernetes resolves it: run_as_username,
// else run_as_user, else the image's user, else root; run_as_group only
// with a user. Supplementary groups follow the supplemental groups
// policy: Merge adds the groups /etc/group in the image gives the user,
// Strict only the requested ones; the primary group is always listed.
func userOpts(sc *runtime.LinuxContainerSecurityContext, imageUser string) ([]oci.SpecOpts, error) {
	user := ""
	switch {
	case sc.GetRunAsUsername() != "":
		user = sc.GetRunAsUsername()
	case sc.GetRunAsUser() != nil:
		user = strconv.FormatInt(sc.GetRunAsUser().GetValue(), 10)
	}
	if g := sc.GetRunAsGroup(); g != nil {
		if user == "" {
			return nil, fmt.Errorf("run_as_group without run_as_user or run_as_username: %w", errdefs.ErrInvalidArgument)
		}
		user += ":" + strconv.FormatInt(g.GetValue(), 10)
	}
	if user == "" {
		user = imageUser
	}
	if user == "" {
		user = "0"
	}
	name, _, _ := strings.Cut(user, ":")
	opts := []oci.SpecOpts{oci.WithUser(user)}
	switch sc.GetSupplementalGroupsPolicy() {
	case runtime.SupplementalGroupsPolicy_Merge:
		opts = append(opts, oci.WithAdditionalGIDs(name))
	case runtime.SupplementalGroupsPolicy_Strict:
		// WithUser leaves the primary group alone in the list.
	default:
		return nil, fmt.Errorf("supplemental groups policy %v: %w", sc.GetSupplementalGroupsPolicy(), errdefs.ErrNotImplemented)
	}
	if groups := sc.GetSupplementalGroups(); len(groups) > 0 {
		opts = append(opts, withAdditionalGIDs(groups))
	}
	return opts, nil
}

// seccompOpt is the container's seccomp filter: the runtime/default
// profile (containerd's, generated for the container's capabilities), a
// profile file on the node (localhost), or none (unconfined, and the
// default when nothing is asked, as the CRI defines). Privileged
// containers get none whatever was asked.
func seccompOpt(sc *runtime.LinuxContainerSecurityContext) (oci.SpecOpts, error) {
	//nolint:staticcheck // the deprecated field is what older kubelets send
	return seccompProfileOpt(sc.GetSeccomp(), sc.GetSeccompProfilePath(), sc.GetPrivileged())
}

// sandboxSeccompOpt is seccompOpt for the pod's pause container, from the
// pod's security context, as containerd confines it.
func sandboxSeccompOpt(sc *runtime.LinuxSandboxSecurityContext) (oci.SpecOpts, error) {
	//nolint:staticcheck // the deprecated field is what older kubelets send
	return seccompProfileOpt(sc.GetSeccomp(), sc.GetSeccompProfilePath(), sc.GetPrivileged())
}

func seccompProfileOpt(sp *runtime.SecurityProfile, path string, privileged bool) (oci.SpecOpts, error) {
	if privileged {
		return nil, nil
	}
	if sp == nil {
		var err error
		if sp, err = profileFromPath(path); err != nil {
			return nil, fmt.Errorf("seccomp: %w", err)
		}
	}
	if sp == nil {
		return nil, nil
	}
	if !seccompSupported() {
		if sp.GetProfileType() != runtime.SecurityProfile_Unconfined {
			return nil, fmt.Errorf("seccomp profile %v asked, but the kernel has no seccomp: %w", sp.GetProfileType(), errdefs.ErrNotImplemented)
		}
		return nil, nil
	}
	if sp.GetProfileType() != runtime.SecurityProfile_Localhost && sp.GetLocalhostRef() != "" {
		return nil, fmt.Errorf("seccomp localhost_ref is only for the Localhost profile type: %w", errdefs.ErrInvalidArgument)
	}
	switch sp.GetProfileType() {
	case runtime.SecurityProfile_Unconfined:
		return nil, nil
	case runtime.SecurityProfile_RuntimeDefault:
		return seccomp.WithDefaultProfile(), nil
	case runtime.SecurityProfile_Localhost:
		path := strings.TrimPrefix(sp.GetLocalhostRef(), profileLocalhost)
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("seccomp localhost profile %q is not an absolute path: %w", path, errdefs.ErrInvalidArgument)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("seccomp localhost profile: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return seccomp.WithProfile(path), nil
	}
	return nil, fmt.Errorf("seccomp profile type %v: %w", sp.GetProfileType(), errdefs.ErrInvalidArgument)
}

// apparmorOpt is the container's AppArmor profile: runtime/default (the
// default when nothing is asked, loaded on first use), a profile loaded
// on the node (localhost), or none. Where the kernel has no AppArmor,
// asking for any profile but unconfined fails, as in containerd.
func apparmorOpt(sc *runtime.LinuxContainerSecurityContext) (oci.SpecOpts, error) {
	sp := sc.GetApparmor()
	if sp == nil {
		var err error
		//nolint:staticcheck // the deprecated field is what older kubelets send
		if sp, err = profileFromPath(sc.GetApparmorProfile()); err != nil {
			return nil, fmt.Errorf("apparmor: %w", err)
		}
	}
	if !apparmorhost.HostSupports() {
		if sp != nil && sp.GetProfileType() != runtime.SecurityProfile_Unconfined {
			return nil, fmt.Errorf("apparmor profile %v asked, but the kernel has no AppArmor: %w", sp.GetProfileType(), errdefs.ErrNotImplemented)
		}
		return nil, nil
	}
	if sp == nil {
		sp = &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_RuntimeDefault}
	}
	if sp.GetProfileType() != runtime.SecurityProfile_Localhost && sp.GetLocalhostRef() != "" {
		return nil, fmt.Errorf("apparmor localhost_ref is only for the Localhost profile type: %w", errdefs.ErrInvalidArgument)
	}
	switch sp.GetProfileType() {
	case runtime.SecurityProfile_Unconfined:
		return nil, nil
	case runtime.SecurityProfile_RuntimeDefault:
		if sc.GetPrivileged() {
			return nil, nil
		}
		return apparmor.WithDefaultProfile(appArmorDefaultProfile), nil
	case runtime.SecurityProfile_Localhost:
		name := strings.TrimPrefix(sp.GetLocalhostRef(), profileLocalhost)
		if !apparmorProfileLoaded(name) {
			return nil, fmt.Errorf("apparmor profile %q is not loaded: %w", name, errdefs.ErrNotFound)
		}
		return apparmor.WithProfile(name), nil
	}
	return nil, fmt.Errorf("apparmor profile type %v: %w", sp.GetProfileType(), errdefs.ErrInvalidArgument)
}

// profileFromPath reads the CRI's deprecated profile strings; empty means
// not set.
func profileFromPath(p string) (*runtime.SecurityProfile, error) {
	switch p {
	case "":
		return nil, nil
	case profileRuntimeDefault, profileDockerDefault:
		return &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_RuntimeDefault}, nil
	case profileUnconfined:
		return &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Unconfined}, nil
	}
	if !strings.HasPrefix(p, profileLocalhost) {
		return nil, fmt.Errorf("profile %q is none of runtime/default, unconfined, localhost/<name>: %w", p, errdefs.ErrInvalidArgument)
	}
	return &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: strings.TrimPrefix(p, profileLocalhost)}, nil
}

// apparmorProfileLoaded looks the profile up in the kernel's list.
func apparmorProfileLoaded(name string) bool {
	b, err := os.ReadFile("/sys/kernel/security/apparmor/profiles")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		// "<name> (enforce)"
		if n, _, ok := strings.Cut(line, " ("); ok && n == name {
			return true
		}
	}
	return false
}

var seccompSupported = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/self/status")
	return err == nil && strings.Contains(string(b), "\nSeccomp:")
})

// User is the process identity a container's spec gives it, as
// ContainerStatus reports it.
func User(sp *specs.Spec) *runtime.ContainerUser {
	if sp == nil || sp.Process == nil {
		return nil
	}
	u := sp.Process.User
	lu := &runtime.LinuxContainerUser{Uid: int64(u.UID), Gid: int64(u.GID)}
	for _, g := range u.AdditionalGids {
		lu.SupplementalGroups = append(lu.SupplementalGroups, int64(g))
	}
	return &runtime.ContainerUser{Linux: lu}
}
