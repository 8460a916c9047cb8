package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/container/spec"
	"github.com/flotilla-project/flotilla/services/cri/network"
	"github.com/flotilla-project/flotilla/services/cri/store"
	"github.com/flotilla-project/flotilla/services/cri/task"
)

// RunPodSandbox creates and starts a pod sandbox: its network namespace
// set up by CNI, its hostname, hosts and resolv.conf files, and the pause
// container holding its namespaces.
func (s *Service) RunPodSandbox(ctx context.Context, req *runtime.RunPodSandboxRequest) (_ *runtime.RunPodSandboxResponse, retErr error) {
	ctx = withNamespace(ctx)
	cfg := req.GetConfig()
	md := cfg.GetMetadata()
	if md.GetName() == "" || md.GetNamespace() == "" || md.GetUid() == "" {
		return nil, fmt.Errorf("sandbox metadata needs name, namespace and uid: %w", errdefs.ErrInvalidArgument)
	}
	ociRuntime, err := s.runtimes.Get(req.GetRuntimeHandler())
	if err != nil {
		return nil, fmt.Errorf("unable to get OCI runtime for sandbox %q: %w", md.GetName(), err)
	}
	userns, err := s.sandboxUserns(ctx, cfg, ociRuntime)
	if err != nil {
		return nil, err
	}
	name := strings.Join([]string{md.GetName(), md.GetNamespace(), md.GetUid(), strconv.Itoa(int(md.GetAttempt()))}, "_")
	release, err := s.store.ReserveName(ctx, store.KindSandbox, name)
	if err != nil {
		return nil, err
	}
	defer release()

	pause, err := s.images.Ensure(ctx, s.sandboxImage)
	if err != nil {
		return nil, fmt.Errorf("sandbox image %s: %w", s.sandboxImage, err)
	}
	cfgBytes, err := proto.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	id := store.NewID()
	defer s.hideStarting(id)()
	m := &store.Sandbox{ID: id, Name: name, RawConfig: cfgBytes, RuntimeHandler: req.GetRuntimeHandler(), CreatedAt: time.Now().UnixNano(), Config: cfg}

	// Undo what was done, in reverse, when a later step fails; the
	// kubelet retries with a new attempt.
	var undo []func()
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	cleanupCtx := context.WithoutCancel(ctx)

	if !spec.HostNetwork(cfg) {
		m.NetNS, err = s.newPodNetNS(id, userns)
		if err != nil {
			return nil, err
		}
		undo = append(undo, func() { _ = network.RemoveNetNS(m.NetNS); _ = s.releasePodUserns(id) })
		ips, err := s.cni.Setup(ctx, id, m.NetNS, cfg)
		undo = append(undo, func() {
			if err := s.cni.Teardown(cleanupCtx, id, m.NetNS, cfg); err != nil {
				logging.G(ctx).Warn("undo pod network", "sandbox", id, "error", err)
			}
		})
		if err != nil {
			return nil, err
		}
		m.IP, m.AdditionalIPs = ips[0], ips[1:]
	}

	dir := s.sandboxDir(id)
	undo = append(undo, func() { _ = os.RemoveAll(dir) })
	hostname, err := WriteFiles(dir, cfg)
	if err != nil {
		return nil, err
	}
	shm := s.sandboxShm(m)
	if !HostIPC(cfg) {
		if err := MountShm(shm); err != nil {
			return nil, err
		}
		undo = append(undo, func() { _ = UnmountShm(shm) })
	}

	specOpts, err := spec.Sandbox(spec.SandboxRequest{
		ID: id, Config: cfg, NetNS: m.NetNS, Hostname: hostname, Shm: shm,
		Image:               s.tasks.CachedImage(pause.Info),
		Userns:              userns,
		UsernsPin:           s.usernsPin(id),
		RestrictOOMScoreAdj: s.restrictOOMScoreAdj,
	})
	if err != nil {
		return nil, err
	}
	specOpts = append(specOpts, ociRuntime.WithPassthroughAnnotations(cfg.GetAnnotations(), nil))

	ext, err := store.EncodeExtension(store.SandboxExtension, m)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{}
	for k, v := range cfg.GetLabels() {
		labels[k] = v
	}
	labels[store.KindLabel] = store.KindSandbox
	lctx, releaseLease, err := s.tasks.WithCreateLease(ctx)
	if err != nil {
		return nil, err
	}
	defer releaseLease()
	var rootfs task.Rootfs
	var rec containers.Container
	c, err := s.client.NewContainer(lctx, id,
		s.tasks.WithRootfs(id, pause, &rootfs),
		ociRuntime.WithRuntime(),
		task.WithSpec(&rootfs, specOpts...),
		containerd.WithContainerLabels(labels),
		store.WithExtension(store.SandboxExtension, ext),
		store.WithRecordCopy(&rec),
	)
	if err != nil {
		return nil, fmt.Errorf("create sandbox container: %w", err)
	}
	undo = append(undo, func() {
		if err := c.Delete(cleanupCtx, containerd.WithSnapshotCleanup); err != nil {
			logging.G(ctx).Warn("undo sandbox container", "sandbox", id, "error", err)
		}
	})
	if err := s.hooks.CreatePodRecord(ctx, rec); err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		if err := s.hooks.DeletePodRecord(cleanupCtx, id); err != nil {
			logging.G(ctx).Warn("undo sandbox store record", "sandbox", id, "error", err)
		}
	})
	task, err := s.tasks.Create(ctx, rec, rootfs.Mounts(), cio.NullIO)
	if err != nil {
		return nil, fmt.Errorf("create sandbox task: %w", err)
	}
	undo = append(undo, func() { task.Abort(cleanupCtx) })
	if err := task.Start(ctx); err != nil {
		return nil, fmt.Errorf("start sandbox task: %w", err)
	}
	if err := s.hooks.RunPod(ctx, m, rec); err != nil {
		return nil, err
	}
	s.store.RememberCreated(rec, rootfs.Mounts())
	s.store.AddName(store.KindSandbox, name, id)
	logging.G(ctx).Debug("sandbox running", "sandbox", id, "name", name, "ip", m.IP)
	return &runtime.RunPodSandboxResponse{PodSandboxId: id}, nil
}

func (s *Service) sandboxReady(ctx context.Context, id string) (bool, uint32) {
	p, err := s.tasks.State(ctx, id)
	if err != nil {
		return false, 0
	}
	return p.GetStatus() == tasktypes.Status_RUNNING, p.GetPid()
}

// StopPodSandbox stops the pod's containers and its pause container and
// tears its network down (CNI DEL once, recorded on the sandbox so that a
// restarted cri process does not repeat it). The records stay; the Sandbox
// Store's is brought up to date.
func (s *Service) StopPodSandbox(ctx context.Context, req *runtime.StopPodSandboxRequest) (*runtime.StopPodSandboxResponse, error) {
	ctx = withNamespace(ctx)
	m, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if errdefs.IsNotFound(err) {
		// Stopping is idempotent, as the kubelet expects: what is
		// gone is stopped.
		return &runtime.StopPodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.stopSandbox(ctx, m); err != nil {
		return nil, err
	}
	if err := s.hooks.RefreshPodRecord(ctx, m.ID); err != nil {
		return nil, err
	}
	return &runtime.StopPodSandboxResponse{}, nil
}

func (s *Service) stopSandbox(ctx context.Context, m *store.Sandbox) error {
	cs, err := s.store.SandboxContainers(ctx, m.ID)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := s.containers.Stop(ctx, c.ID, 0); err != nil {
			return fmt.Errorf("stop container %s of sandbox %s: %w", c.ID, m.ID, err)
		}
	}
	unlock := s.store.Lock(m.ID)
	defer unlock()
	if err := s.tasks.Delete(ctx, m.ID); err != nil {
		return fmt.Errorf("stop sandbox %s: %w", m.ID, err)
	}
	s.hooks.StopPod(ctx, m)
	// The pod's shared memory goes with its processes, as in containerd.
	if !HostIPC(m.Config) {
		if err := UnmountShm(s.sandboxShm(m)); err != nil {
			return err
		}
	}
	if m.NetNS != "" && !m.NetworkTornDown {
		if err := s.cni.Teardown(ctx, m.ID, m.NetNS, m.Config); err != nil {
			return fmt.Errorf("tear down network of sandbox %s: %w", m.ID, err)
		}
		m.NetworkTornDown = true
		if err := s.store.SaveSandbox(ctx, m); err != nil {
			return err
		}
	}
	// The namespace has no use once the network is gone, as in
	// containerd; the path stays recorded for the status.
	if err := network.RemoveNetNS(m.NetNS); err != nil {
		return err
	}
	return s.releasePodUserns(m.ID)
}

// RemovePodSandbox stops the pod if it runs and removes its containers,
// network namespace, files and records. Removing an unknown pod succeeds.
func (s *Service) RemovePodSandbox(ctx context.Context, req *runtime.RemovePodSandboxRequest) (*runtime.RemovePodSandboxResponse, error) {
	ctx = withNamespace(ctx)
	m, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if errdefs.IsNotFound(err) {
		// A Sandbox Store record left by a crash goes too.
		return &runtime.RemovePodSandboxResponse{}, s.hooks.DeletePodRecord(ctx, req.GetPodSandboxId())
	}
	if err != nil {
		return nil, err
	}
	if err := s.stopSandbox(ctx, m); err != nil {
		return nil, err
	}
	cs, err := s.store.SandboxContainers(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		if err := s.containers.Remove(ctx, c.ID); err != nil {
			return nil, fmt.Errorf("remove container %s of sandbox %s: %w", c.ID, m.ID, err)
		}
	}
	unlock := s.store.Lock(m.ID)
	defer unlock()
	s.hooks.RemovePod(ctx, m)
	if err := os.RemoveAll(s.sandboxDir(m.ID)); err != nil {
		return nil, fmt.Errorf("remove sandbox directory: %w", err)
	}
	c, err := s.client.LoadContainer(ctx, m.ID)
	if err == nil {
		err = c.Delete(ctx, containerd.WithSnapshotCleanup)
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("remove sandbox %s: %w", m.ID, err)
	}
	if err := s.hooks.DeletePodRecord(ctx, m.ID); err != nil {
		return nil, err
	}
	s.hooks.Forget(m.ID)
	return &runtime.RemovePodSandboxResponse{}, nil
}

func (s *Service) sandboxState(ctx context.Context, m *store.Sandbox) runtime.PodSandboxState {
	if ok, _ := s.sandboxReady(ctx, m.ID); ok {
		return runtime.PodSandboxState_SANDBOX_READY
	}
	return runtime.PodSandboxState_SANDBOX_NOTREADY
}

// PodSandboxStatus describes a pod: state from its pause task, network
// from the CNI result recorded at creation.
func (s *Service) PodSandboxStatus(ctx context.Context, req *runtime.PodSandboxStatusRequest) (*runtime.PodSandboxStatusResponse, error) {
	ctx = withNamespace(ctx)
	m, err := s.getSandbox(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	st := &runtime.PodSandboxStatus{
		Id:             m.ID,
		Metadata:       m.Config.GetMetadata(),
		State:          s.sandboxState(ctx, m),
		CreatedAt:      m.CreatedAt,
		Labels:         m.Config.GetLabels(),
		Annotations:    m.Config.GetAnnotations(),
		RuntimeHandler: m.RuntimeHandler,
		Linux: &runtime.LinuxPodSandboxStatus{Namespaces: &runtime.Namespace{
			Options: m.Config.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	if m.IP != "" {
		st.Network = &runtime.PodSandboxNetworkStatus{Ip: m.IP}
		for _, ip := range m.AdditionalIPs {
			st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtime.PodIP{Ip: ip})
		}
	}
	resp := &runtime.PodSandboxStatusResponse{Status: st}
	if req.GetVerbose() {
		resp.Info = map[string]string{"info": fmt.Sprintf(`{"netNamespacePath":%q,"networkTornDown":%v}`, m.NetNS, m.NetworkTornDown)}
	}
	return resp, nil
}

// ListPodSandbox lists the pods, narrowed by ID (or ID prefix), state and
// label selector.
func (s *Service) ListPodSandbox(ctx context.Context, req *runtime.ListPodSandboxRequest) (*runtime.ListPodSandboxResponse, error) {
	ctx = withNamespace(ctx)
	recs, err := s.store.List(ctx, store.KindSandbox)
	if err != nil {
		return nil, err
	}
	f := req.GetFilter()
	var out []*runtime.PodSandbox
	for _, c := range recs {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) || s.isStarting(c.ID) {
			continue
		}
		m, err := store.DecodeSandbox(c)
		if err != nil {
			logging.G(ctx).Warn("unreadable sandbox record", "id", c.ID, "error", err)
			continue
		}
		if !store.MatchLabels(m.Config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		state := s.sandboxState(ctx, m)
		if f.GetState() != nil && f.GetState().GetState() != state {
			continue
		}
		out = append(out, &runtime.PodSandbox{
			Id:             m.ID,
			Metadata:       m.Config.GetMetadata(),
			State:          state,
			CreatedAt:      m.CreatedAt,
			Labels:         m.Config.GetLabels(),
			Annotations:    m.Config.GetAnnotations(),
			RuntimeHandler: m.RuntimeHandler,
		})
	}
	return &runtime.ListPodSandboxResponse{Items: out}, nil
}

// createdSandbox is getSandbox answered from the record this process
// created when it has it: for CreateContainer, whose pod is usually one
// this process just ran.
func (s *Service) createdSandbox(ctx context.Context, id string) (*store.Sandbox, error) {
	if r, ok := s.store.Created(store.KindSandbox, id); ok {
		return store.DecodeSandbox(r.Record)
	}
	return s.getSandbox(ctx, id)
}

// getSandbox is the sandbox record by ID or unique prefix; a pod still
// being run is not found yet.
func (s *Service) getSandbox(ctx context.Context, id string) (*store.Sandbox, error) {
	c, err := s.store.Get(ctx, store.KindSandbox, id)
	if err != nil {
		return nil, err
	}
	if s.isStarting(c.ID) {
		return nil, fmt.Errorf("sandbox %s is being created: %w", c.ID, errdefs.ErrNotFound)
	}
	return store.DecodeSandbox(c)
}

// hideStarting keeps a pod out of listings and lookups until its
// RunPodSandbox returns (or plugins have seen it run): as in containerd,
// a pod is not there before it is ready. The returned function ends it.
func (s *Service) hideStarting(id string) func() {
	s.starting.Store(id, true)
	return func() { s.starting.Delete(id) }
}

func (s *Service) isStarting(id string) bool {
	_, ok := s.starting.Load(id)
	return ok
}

func (s *Service) netnsDir() string { return filepath.Join(s.stateDir, "netns") }
func (s *Service) sandboxDir(id string) string {
	return filepath.Join(s.stateDir, "sandboxes", id)
}

// sandboxShm is the pod's /dev/shm; see ShmPath.
func (s *Service) sandboxShm(sb *store.Sandbox) string {
	return ShmPath(s.sandboxDir(sb.ID), sb.Config)
}
