package nri

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"
	nrigen "github.com/containerd/nri/pkg/runtime-tools/generate"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// AdjustSpec applies the plugins' adjustment of a container to its spec.
// injectCDI resolves CDI devices into the spec; with none, an adjustment
// that asks for CDI devices fails rather than losing them.
func AdjustSpec(spec *specs.Spec, adj *api.ContainerAdjustment, injectCDI func(*specs.Spec, []string) error) error {
	if adj == nil {
		return nil
	}
	if injectCDI == nil {
		injectCDI = func(_ *specs.Spec, devices []string) error {
			return fmt.Errorf("NRI adjustment asks for CDI devices %v, and CDI is not configured", devices)
		}
	}
	g := nrigen.SpecGenerator(&specEditor{spec: spec},
		// An RDT class is a resctrl group of that name, as in
		// containerd; block I/O classes have no configuration here,
		// so one asked for is left alone (as containerd does with
		// none configured).
		nrigen.WithRdtResolver(func(class string) (*specs.LinuxIntelRdt, error) {
			if class == "" {
				return nil, nil
			}
			return &specs.LinuxIntelRdt{ClosID: class}, nil
		}),
		nrigen.WithCDIDeviceInjector(injectCDI),
	)
	if err := g.Adjust(adj); err != nil {
		return fmt.Errorf("apply NRI adjustment: %w", err)
	}
	return nil
}

// specEditor edits an OCI spec in place, the operations NRI's generator
// is written against (runtime-tools' generator, whose module we need not
// take for this).
type specEditor struct{ spec *specs.Spec }

func (e *specEditor) Spec() *specs.Spec { return e.spec }

func (e *specEditor) process() *specs.Process {
	if e.spec.Process == nil {
		e.spec.Process = &specs.Process{}
	}
	return e.spec.Process
}

func (e *specEditor) linux() *specs.Linux {
	if e.spec.Linux == nil {
		e.spec.Linux = &specs.Linux{}
	}
	return e.spec.Linux
}

func (e *specEditor) resources() *specs.LinuxResources {
	l := e.linux()
	if l.Resources == nil {
		l.Resources = &specs.LinuxResources{}
	}
	return l.Resources
}

func (e *specEditor) cpu() *specs.LinuxCPU {
	r := e.resources()
	if r.CPU == nil {
		r.CPU = &specs.LinuxCPU{}
	}
	return r.CPU
}

func (e *specEditor) memory() *specs.LinuxMemory {
	r := e.resources()
	if r.Memory == nil {
		r.Memory = &specs.LinuxMemory{}
	}
	return r.Memory
}

func (e *specEditor) hooks() *specs.Hooks {
	if e.spec.Hooks == nil {
		e.spec.Hooks = &specs.Hooks{}
	}
	return e.spec.Hooks
}

func (e *specEditor) AddAnnotation(key, value string) {
	if e.spec.Annotations == nil {
		e.spec.Annotations = map[string]string{}
	}
	e.spec.Annotations[key] = value
}

func (e *specEditor) RemoveAnnotation(key string) { delete(e.spec.Annotations, key) }

func (e *specEditor) AddDevice(d specs.LinuxDevice) {
	l := e.linux()
	for i := range l.Devices {
		if l.Devices[i].Path == d.Path {
			l.Devices[i] = d
			return
		}
	}
	l.Devices = append(l.Devices, d)
}

func (e *specEditor) RemoveDevice(path string) {
	if e.spec.Linux == nil {
		return
	}
	e.spec.Linux.Devices = slices.DeleteFunc(e.spec.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == path })
}

// namespaceType maps the names NRI uses for namespaces to the spec's.
func namespaceType(ns string) (specs.LinuxNamespaceType, error) {
	switch ns {
	case "network", "net":
		return specs.NetworkNamespace, nil
	case "pid":
		return specs.PIDNamespace, nil
	case "mount", "mnt":
		return specs.MountNamespace, nil
	case "ipc":
		return specs.IPCNamespace, nil
	case "uts":
		return specs.UTSNamespace, nil
	case "user":
		return specs.UserNamespace, nil
	case "cgroup":
		return specs.CgroupNamespace, nil
	case "time":
		return specs.TimeNamespace, nil
	}
	return "", fmt.Errorf("unknown namespace type %q", ns)
}

func (e *specEditor) AddOrReplaceLinuxNamespace(ns, path string) error {
	t, err := namespaceType(ns)
	if err != nil {
		return err
	}
	l := e.linux()
	for i := range l.Namespaces {
		if l.Namespaces[i].Type == t {
			l.Namespaces[i].Path = path
			return nil
		}
	}
	l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: t, Path: path})
	return nil
}

func (e *specEditor) RemoveLinuxNamespace(ns string) error {
	t, err := namespaceType(ns)
	if err != nil {
		return err
	}
	if e.spec.Linux != nil {
		e.spec.Linux.Namespaces = slices.DeleteFunc(e.spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == t })
	}
	return nil
}

func (e *specEditor) AddPreStartHook(h specs.Hook) {
	e.hooks().Prestart = append(e.hooks().Prestart, h) //nolint:staticcheck // NRI still carries prestart hooks
}
func (e *specEditor) AddPostStartHook(h specs.Hook) {
	e.hooks().Poststart = append(e.hooks().Poststart, h)
}
func (e *specEditor) AddPostStopHook(h specs.Hook) {
	e.hooks().Poststop = append(e.hooks().Poststop, h)
}

// AddProcessEnv sets a variable, in place when it is set already.
func (e *specEditor) AddProcessEnv(name, value string) {
	p := e.process()
	kv := name + "=" + value
	for i, v := range p.Env {
		if k, _, _ := strings.Cut(v, "="); k == name {
			p.Env[i] = kv
			return
		}
	}
	p.Env = append(p.Env, kv)
}

func (e *specEditor) ClearProcessEnv() {
	if e.spec.Process != nil {
		e.spec.Process.Env = nil
	}
}

func (e *specEditor) SetProcessArgs(args []string) { e.process().Args = slices.Clone(args) }

func (e *specEditor) SetProcessOOMScoreAdj(adj int) { e.process().OOMScoreAdj = &adj }

func (e *specEditor) AddLinuxResourcesDevice(allow bool, devType string, major, minor *int64, access string) {
	r := e.resources()
	r.Devices = append(r.Devices, specs.LinuxDeviceCgroup{Allow: allow, Type: devType, Major: major, Minor: minor, Access: access})
}

func (e *specEditor) AddLinuxResourcesHugepageLimit(pageSize string, limit uint64) {
	r := e.resources()
	for i := range r.HugepageLimits {
		if r.HugepageLimits[i].Pagesize == pageSize {
			r.HugepageLimits[i].Limit = limit
			return
		}
	}
	r.HugepageLimits = append(r.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: pageSize, Limit: limit})
}

func (e *specEditor) AddLinuxResourcesUnified(key, val string) {
	r := e.resources()
	if r.Unified == nil {
		r.Unified = map[string]string{}
	}
	r.Unified[key] = val
}

func (e *specEditor) AddLinuxSysctl(key, value string) {
	l := e.linux()
	if l.Sysctl == nil {
		l.Sysctl = map[string]string{}
	}
	l.Sysctl[key] = value
}

func (e *specEditor) RemoveLinuxSysctl(key string) {
	if e.spec.Linux != nil {
		delete(e.spec.Linux.Sysctl, key)
	}
}

func (e *specEditor) AddMount(m specs.Mount) { e.spec.Mounts = append(e.spec.Mounts, m) }

func (e *specEditor) ClearMounts() { e.spec.Mounts = nil }

func (e *specEditor) Mounts() []specs.Mount { return slices.Clone(e.spec.Mounts) }

func (e *specEditor) RemoveMount(dest string) {
	dest = filepath.Clean(dest)
	e.spec.Mounts = slices.DeleteFunc(e.spec.Mounts, func(m specs.Mount) bool { return filepath.Clean(m.Destination) == dest })
}

func (e *specEditor) SetLinuxCgroupsPath(path string) { e.linux().CgroupsPath = path }

func (e *specEditor) SetLinuxResourcesCPUCpus(cpus string) { e.cpu().Cpus = cpus }
func (e *specEditor) SetLinuxResourcesCPUMems(mems string) { e.cpu().Mems = mems }
func (e *specEditor) SetLinuxResourcesCPUPeriod(p uint64)  { e.cpu().Period = &p }
func (e *specEditor) SetLinuxResourcesCPUQuota(q int64)    { e.cpu().Quota = &q }
func (e *specEditor) SetLinuxResourcesCPUShares(s uint64)  { e.cpu().Shares = &s }
func (e *specEditor) SetLinuxResourcesCPURealtimePeriod(p uint64) {
	e.cpu().RealtimePeriod = &p
}
func (e *specEditor) SetLinuxResourcesCPURealtimeRuntime(t int64) { e.cpu().RealtimeRuntime = &t }
func (e *specEditor) SetLinuxResourcesMemoryLimit(l int64)        { e.memory().Limit = &l }
func (e *specEditor) SetLinuxResourcesMemorySwap(s int64)         { e.memory().Swap = &s }

func (e *specEditor) SetLinuxRootPropagation(rp string) error {
	switch rp {
	case "", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable":
	default:
		return fmt.Errorf("rootfs propagation %q is not valid", rp)
	}
	e.linux().RootfsPropagation = rp
	return nil
}
