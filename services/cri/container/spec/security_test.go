package spec

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	apparmorhost "github.com/containerd/containerd/v2/pkg/apparmor"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/services/cri/store"
)

// applied builds containerd's default spec and applies opts to it.
func applied(t *testing.T, opts ...oci.SpecOpts) *oci.Spec {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), store.Namespace)
	c := &containers.Container{ID: "test"}
	var s oci.Spec
	if err := oci.WithDefaultSpec()(ctx, nil, c, &s); err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		if err := o(ctx, nil, c, &s); err != nil {
			t.Fatalf("apply spec option: %v", err)
		}
	}
	return &s
}

func TestSeccompProfileFollowsTheRequest(t *testing.T) {
	if !seccompSupported() {
		t.Skip("the kernel has no seccomp")
	}
	dir := t.TempDir()
	profile := filepath.Join(dir, "profile.json")
	if err := os.WriteFile(profile, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sc   *runtime.LinuxContainerSecurityContext
		want string // "" none, "default", "localhost"
	}{
		{"nothing asked is unconfined", &runtime.LinuxContainerSecurityContext{}, ""},
		{"runtime default", &runtime.LinuxContainerSecurityContext{Seccomp: &runtime.SecurityProfile{}}, "default"},
		{"unconfined", &runtime.LinuxContainerSecurityContext{Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Unconfined}}, ""},
		{"localhost", &runtime.LinuxContainerSecurityContext{Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: profile}}, "localhost"},
		{"deprecated runtime/default", &runtime.LinuxContainerSecurityContext{SeccompProfilePath: "runtime/default"}, "default"},
		{"deprecated localhost/", &runtime.LinuxContainerSecurityContext{SeccompProfilePath: "localhost/" + profile}, "localhost"},
		{"privileged ignores the profile", &runtime.LinuxContainerSecurityContext{Privileged: true, Seccomp: &runtime.SecurityProfile{}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt, err := seccompOpt(tc.sc)
			if err != nil {
				t.Fatal(err)
			}
			var s *oci.Spec
			if opt == nil {
				s = applied(t)
			} else {
				s = applied(t, opt)
			}
			got := ""
			switch sc := s.Linux.Seccomp; {
			case sc == nil:
			case sc.DefaultAction == specs.ActErrno:
				got = "default"
			case sc.DefaultAction == specs.ActAllow:
				got = "localhost"
			}
			if got != tc.want {
				t.Fatalf("seccomp profile %q, want %q (%+v)", got, tc.want, s.Linux.Seccomp)
			}
		})
	}
}

func TestSeccompRejectsBadProfiles(t *testing.T) {
	for name, sc := range map[string]*runtime.LinuxContainerSecurityContext{
		"relative localhost path": {Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: "profile.json"}},
		"missing localhost file":  {Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: "/nonexistent/profile.json"}},
		"ref without localhost":   {Seccomp: &runtime.SecurityProfile{LocalhostRef: "/x.json"}},
		"unknown deprecated name": {SeccompProfilePath: "docker/strict"},
	} {
		if _, err := seccompOpt(sc); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestCapabilitiesAllThenIndividual(t *testing.T) {
	has := func(s *oci.Spec, c string) bool { return slices.Contains(s.Process.Capabilities.Bounding, c) }
	s := applied(t, withCapabilities(&runtime.Capability{DropCapabilities: []string{"ALL"}, AddCapabilities: []string{"NET_ADMIN"}}))
	if len(s.Process.Capabilities.Bounding) != 1 || !has(s, "CAP_NET_ADMIN") {
		t.Errorf("drop ALL, add NET_ADMIN: bounding set %v", s.Process.Capabilities.Bounding)
	}
	s = applied(t, withCapabilities(&runtime.Capability{AddCapabilities: []string{"ALL"}, DropCapabilities: []string{"CHOWN"}}))
	if has(s, "CAP_CHOWN") || !has(s, "CAP_SYS_ADMIN") && os.Geteuid() == 0 {
		t.Errorf("add ALL, drop CHOWN: bounding set %v", s.Process.Capabilities.Bounding)
	}
	s = applied(t, withCapabilities(&runtime.Capability{AddCapabilities: []string{"sys_time"}}))
	if !has(s, "CAP_SYS_TIME") || !has(s, "CAP_CHOWN") {
		t.Errorf("add sys_time to the defaults: bounding set %v", s.Process.Capabilities.Bounding)
	}
}

func TestRunAsGroupNeedsAUser(t *testing.T) {
	_, err := userOpts(&runtime.LinuxContainerSecurityContext{RunAsGroup: &runtime.Int64Value{Value: 5}}, "")
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("run_as_group alone: %v, want InvalidArgument", err)
	}
}

func TestDeviceFollowsSymlinkAndChecksPermissions(t *testing.T) {
	link := filepath.Join(t.TempDir(), "null")
	if err := os.Symlink("/dev/null", link); err != nil {
		t.Fatal(err)
	}
	opt, err := withDevice(&runtime.Device{HostPath: link, ContainerPath: "/dev/mynull", Permissions: "rw"})
	if err != nil {
		t.Fatal(err)
	}
	s := applied(t, opt)
	i := slices.IndexFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/mynull" })
	if i < 0 || s.Linux.Devices[i].Major != 1 || s.Linux.Devices[i].Minor != 3 {
		t.Fatalf("devices %+v: want /dev/mynull as 1:3", s.Linux.Devices)
	}
	rules := s.Linux.Resources.Devices
	last := rules[len(rules)-1]
	if !last.Allow || last.Access != "rw" || last.Major == nil || *last.Major != 1 || *last.Minor != 3 {
		t.Fatalf("last cgroup device rule %+v: want allow rw on 1:3", last)
	}
	if _, err := withDevice(&runtime.Device{HostPath: "/dev/null", ContainerPath: "/dev/x", Permissions: "rwx"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("permissions rwx: %v, want InvalidArgument", err)
	}
}

func TestSpecUserReportsProcessIdentity(t *testing.T) {
	s := &specs.Spec{Process: &specs.Process{User: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 1234}}}}
	u := User(s).GetLinux()
	if u.GetUid() != 1000 || u.GetGid() != 1000 || !slices.Equal(u.GetSupplementalGroups(), []int64{1000, 1234}) {
		t.Fatalf("specUser: %+v", u)
	}
}

func TestAppArmorWithoutKernelSupport(t *testing.T) {
	if apparmorhost.HostSupports() {
		t.Skip("this kernel has AppArmor")
	}
	if opt, err := apparmorOpt(&runtime.LinuxContainerSecurityContext{}); opt != nil || err != nil {
		t.Errorf("nothing asked: %v, %v; want no profile and no error", opt, err)
	}
	if _, err := apparmorOpt(&runtime.LinuxContainerSecurityContext{Apparmor: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Unconfined}}); err != nil {
		t.Errorf("unconfined: %v", err)
	}
	if _, err := apparmorOpt(&runtime.LinuxContainerSecurityContext{Apparmor: &runtime.SecurityProfile{}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("runtime/default without AppArmor: %v, want NotImplemented (as containerd, fail loudly)", err)
	}
}
