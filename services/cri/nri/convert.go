package nri

import (
	"maps"
	"os"
	"slices"

	"github.com/containerd/nri/pkg/api"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Pod is a pod sandbox as the CRI server knows it. With no plugin
// listening (API.Active) only ID need be set.
type Pod struct {
	ID             string
	Config         *runtime.PodSandboxConfig
	RuntimeHandler string
	// Labels are the sandbox record's own (the kind label among them).
	Labels map[string]string
	// Spec is the pause container's spec.
	Spec *specs.Spec
	Pid  uint32
	IPs  []string
}

// Container is a CRI container as the CRI server knows it. With no plugin
// listening (API.Active) only ID and State need be set.
type Container struct {
	ID                               string
	SandboxID                        string
	Config                           *runtime.ContainerConfig
	Labels                           map[string]string
	Spec                             *specs.Spec
	State                            api.ContainerState
	Pid                              uint32
	CreatedAt, StartedAt, FinishedAt int64
	ExitCode                         int32
	Reason, Message                  string
	// ImageName is the name the image was asked for by, ImageDigest its
	// manifest's (repo digest), ImageID its config's.
	ImageName, ImageDigest, ImageID string
}

func (p *Pod) toNRI() *api.PodSandbox {
	md := p.Config.GetMetadata()
	var spec specs.Spec
	if p.Spec != nil {
		spec = *p.Spec
	}
	labels := maps.Clone(p.Config.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, p.Labels)
	annotations := maps.Clone(p.Config.GetAnnotations())
	if annotations == nil {
		annotations = map[string]string{}
	}
	maps.Copy(annotations, spec.Annotations)
	out := &api.PodSandbox{
		Id:             p.ID,
		Name:           md.GetName(),
		Uid:            md.GetUid(),
		Namespace:      md.GetNamespace(),
		Labels:         labels,
		Annotations:    annotations,
		RuntimeHandler: p.RuntimeHandler,
		Pid:            p.Pid,
		Ips:            slices.Clone(p.IPs),
		Linux: &api.LinuxPodSandbox{
			PodOverhead:  fromCRIResources(p.Config.GetLinux().GetOverhead()),
			PodResources: fromCRIResources(p.Config.GetLinux().GetResources()),
			CgroupParent: p.Config.GetLinux().GetCgroupParent(),
		},
	}
	if spec.Linux != nil {
		out.Linux.CgroupsPath = spec.Linux.CgroupsPath
		out.Linux.Resources = api.FromOCILinuxResources(spec.Linux.Resources, nil)
		// A network namespace torn down (the pod stopped) is not
		// one to join.
		out.Linux.Namespaces = slices.DeleteFunc(api.FromOCILinuxNamespaces(spec.Linux.Namespaces), func(ns *api.LinuxNamespace) bool {
			if ns.GetType() != string(specs.NetworkNamespace) {
				return false
			}
			if ns.GetPath() == "" {
				return true
			}
			_, err := os.Stat(ns.GetPath())
			return os.IsNotExist(err)
		})
	}
	return out
}

func (c *Container) toNRI() *api.Container {
	var spec specs.Spec
	if c.Spec != nil {
		spec = *c.Spec
	}
	labels := maps.Clone(c.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, c.Config.GetLabels())
	annotations := maps.Clone(spec.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	maps.Copy(annotations, c.Config.GetAnnotations())
	out := &api.Container{
		Id:            c.ID,
		PodSandboxId:  c.SandboxID,
		Name:          c.Config.GetMetadata().GetName(),
		State:         c.State,
		Labels:        labels,
		Annotations:   annotations,
		Mounts:        api.FromOCIMounts(spec.Mounts),
		Hooks:         api.FromOCIHooks(spec.Hooks),
		Pid:           c.Pid,
		CreatedAt:     c.CreatedAt,
		StartedAt:     c.StartedAt,
		FinishedAt:    c.FinishedAt,
		ExitCode:      c.ExitCode,
		StatusReason:  c.Reason,
		StatusMessage: c.Message,
	}
	for _, d := range c.Config.GetCDIDevices() {
		out.CDIDevices = append(out.CDIDevices, &api.CDIDevice{Name: d.GetName()})
	}
	if c.ImageName != "" || c.ImageDigest != "" || c.ImageID != "" {
		out.Image = &api.Image{Name: c.ImageName, Digest: c.ImageDigest, ConfigDigest: c.ImageID}
	}
	if p := spec.Process; p != nil {
		out.Args = slices.Clone(p.Args)
		out.Env = slices.Clone(p.Env)
		out.User = &api.User{Uid: p.User.UID, Gid: p.User.GID, AdditionalGids: slices.Clone(p.User.AdditionalGids)}
		for _, r := range p.Rlimits {
			out.Rlimits = append(out.Rlimits, &api.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft})
		}
	}
	lnx := &api.LinuxContainer{}
	out.Linux = lnx
	if p := spec.Process; p != nil {
		lnx.OomScoreAdj = api.Int(p.OOMScoreAdj)
		lnx.IoPriority = api.FromOCILinuxIOPriority(p.IOPriority)
		if p.Scheduler != nil {
			lnx.Scheduler = api.FromOCILinuxScheduler(p.Scheduler)
		}
	}
	if sp := c.Config.GetLinux().GetSecurityContext().GetSeccomp(); sp != nil {
		lnx.SeccompProfile = &api.SecurityProfile{
			ProfileType:  api.SecurityProfile_ProfileType(sp.GetProfileType()),
			LocalhostRef: sp.GetLocalhostRef(),
		}
	}
	if l := spec.Linux; l != nil {
		lnx.Namespaces = api.FromOCILinuxNamespaces(l.Namespaces)
		lnx.Devices = api.FromOCILinuxDevices(l.Devices)
		lnx.Resources = api.FromOCILinuxResources(l.Resources, spec.Annotations)
		lnx.CgroupsPath = l.CgroupsPath
		lnx.NetDevices = api.FromOCILinuxNetDevices(l.NetDevices)
		if len(l.Sysctl) > 0 {
			lnx.Sysctl = maps.Clone(l.Sysctl)
		}
		if l.Seccomp != nil {
			lnx.SeccompPolicy = api.FromOCILinuxSeccomp(l.Seccomp)
		}
		if r := l.IntelRdt; r != nil {
			lnx.Rdt = &api.LinuxRdt{
				ClosId:           api.String(r.ClosID),
				Schemata:         api.RepeatedString(r.Schemata),
				EnableMonitoring: api.Bool(r.EnableMonitoring),
			}
		}
	}
	return out
}

// fromCRIResources is the CRI's resources in NRI's terms.
func fromCRIResources(c *runtime.LinuxContainerResources) *api.LinuxResources {
	if c == nil {
		return nil
	}
	shares, period := uint64(c.GetCpuShares()), uint64(c.GetCpuPeriod())
	quota, limit := c.GetCpuQuota(), c.GetMemoryLimitInBytes()
	r := &api.LinuxResources{
		Cpu: &api.LinuxCPU{
			Shares: api.UInt64(&shares),
			Quota:  api.Int64(&quota),
			Period: api.UInt64(&period),
			Cpus:   c.GetCpusetCpus(),
			Mems:   c.GetCpusetMems(),
		},
		Memory: &api.LinuxMemory{Limit: api.Int64(&limit)},
	}
	if swap := c.GetMemorySwapLimitInBytes(); swap != 0 {
		r.Memory.Swap = api.Int64(&swap)
	}
	for _, l := range c.GetHugepageLimits() {
		r.HugepageLimits = append(r.HugepageLimits, &api.HugepageLimit{PageSize: l.GetPageSize(), Limit: l.GetLimit()})
	}
	if len(c.GetUnified()) > 0 {
		r.Unified = maps.Clone(c.GetUnified())
	}
	return r
}

// toCRIResources is NRI's resources in the CRI's terms.
func toCRIResources(r *api.LinuxResources) *runtime.LinuxContainerResources {
	if r == nil {
		return nil
	}
	o := &runtime.LinuxContainerResources{}
	if m := r.GetMemory(); m != nil {
		o.MemoryLimitInBytes = m.GetLimit().GetValue()
		o.MemorySwapLimitInBytes = m.GetSwap().GetValue()
	}
	if c := r.GetCpu(); c != nil {
		o.CpuShares = int64(c.GetShares().GetValue())
		o.CpuPeriod = int64(c.GetPeriod().GetValue())
		o.CpuQuota = c.GetQuota().GetValue()
		o.CpusetCpus, o.CpusetMems = c.GetCpus(), c.GetMems()
	}
	for _, l := range r.GetHugepageLimits() {
		o.HugepageLimits = append(o.HugepageLimits, &runtime.HugepageLimit{PageSize: l.GetPageSize(), Limit: l.GetLimit()})
	}
	if len(r.GetUnified()) > 0 {
		o.Unified = maps.Clone(r.GetUnified())
	}
	return o
}
