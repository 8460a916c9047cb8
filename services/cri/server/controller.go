package server

import (
	"context"
	"fmt"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/sandbox/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/platforms"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// controller serves containerd.services.sandbox.v1.Controller for the one
// sandboxer this process runs, "podsandbox": CRI pods, as containerd 2.x's
// podsandbox controller. It is what `ctr sandboxes rm` and the containerd
// client's Sandbox (Stop, Wait, Shutdown) call for a pod found in the
// Sandbox Store. Pods are made by RunPodSandbox, which has the pod's
// configuration; the controller's Create and Start answer for pods that
// exist and refuse to make new ones.
type controller struct {
	api.UnimplementedControllerServer
	s *Server
}

// RegisterSandboxController adds the Sandbox Controller API to r.
func (s *Server) RegisterSandboxController(r grpc.ServiceRegistrar) {
	api.RegisterControllerServer(r, &controller{s: s})
}

// pod finds the CRI pod a controller call names, by its full ID, after
// checking the call is for the podsandbox sandboxer. Pods live in the
// k8s.io namespace only.
func (c *controller) pod(ctx context.Context, sandboxer, id string) (context.Context, *store.Sandbox, error) {
	if sandboxer == "" {
		return ctx, nil, fmt.Errorf("sandbox controller name can not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if sandboxer != podSandboxer {
		return ctx, nil, fmt.Errorf("sandboxer %q: only %q (CRI pods) is served: %w", sandboxer, podSandboxer, errdefs.ErrNotFound)
	}
	if id == "" {
		return ctx, nil, fmt.Errorf("sandbox id must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if ns, _ := namespaces.Namespace(ctx); ns != "" && ns != Namespace {
		return ctx, nil, fmt.Errorf("sandbox %s in namespace %q: CRI pods live in %q: %w", id, ns, Namespace, errdefs.ErrNotFound)
	}
	ctx = logging.With(withNamespace(ctx), "sandbox", id)
	m, err := c.s.pods.Get(ctx, id)
	if err == nil && m.ID != id {
		err = fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	}
	return ctx, m, err
}

func (c *controller) publish(ctx context.Context, topic string, ev any) {
	if err := c.s.client.EventService().Publish(ctx, topic, ev); err != nil {
		logging.G(ctx).Warn("event not published", "topic", topic, "error", err)
	}
}

// Create answers for a pod RunPodSandbox made; a new podsandbox sandbox
// needs a pod configuration only RunPodSandbox takes.
func (c *controller) Create(ctx context.Context, req *api.ControllerCreateRequest) (*api.ControllerCreateResponse, error) {
	ctx, _, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if errdefs.IsNotFound(err) && req.GetSandboxer() == podSandboxer {
		return nil, fmt.Errorf("podsandbox sandbox %s: CRI pods are created by the CRI's RunPodSandbox: %w", req.GetSandboxID(), errdefs.ErrNotImplemented)
	}
	if err != nil {
		return nil, err
	}
	c.publish(ctx, "/sandboxes/create", &eventtypes.SandboxCreate{SandboxID: req.GetSandboxID()})
	return &api.ControllerCreateResponse{SandboxID: req.GetSandboxID()}, nil
}

// Start answers for a running pod; a stopped pod is not restarted, as
// the CRI does not restart one (the kubelet runs a new attempt).
func (c *controller) Start(ctx context.Context, req *api.ControllerStartRequest) (*api.ControllerStartResponse, error) {
	ctx, m, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	ready, pid := c.s.pods.Ready(ctx, m.ID)
	if !ready {
		return nil, fmt.Errorf("sandbox %s is stopped and a CRI pod is not restarted: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	rec, err := c.s.client.ContainerService().Get(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	sb := podRecord(rec)
	c.publish(ctx, "/sandboxes/start", &eventtypes.SandboxStart{SandboxID: m.ID})
	return &api.ControllerStartResponse{
		SandboxID: m.ID,
		Pid:       pid,
		CreatedAt: timestamppb.New(time.Unix(0, m.CreatedAt)),
		Labels:    sb.Labels,
		Spec:      typeurl.MarshalProto(rec.Spec),
	}, nil
}

// Platform is the host's: pods run natively.
func (c *controller) Platform(ctx context.Context, req *api.ControllerPlatformRequest) (*api.ControllerPlatformResponse, error) {
	if _, _, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID()); err != nil {
		return nil, err
	}
	p := platforms.DefaultSpec()
	return &api.ControllerPlatformResponse{Platform: &types.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}}, nil
}

// Stop stops the pod as StopPodSandbox does.
func (c *controller) Stop(ctx context.Context, req *api.ControllerStopRequest) (*api.ControllerStopResponse, error) {
	ctx, m, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	if t := req.GetTimeoutSecs(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Second)
		defer cancel()
	}
	if _, err := c.s.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: m.ID}); err != nil {
		return nil, err
	}
	return &api.ControllerStopResponse{}, nil
}

// unknownExit is the exit status of a pod stopped before the call: its
// pause task was deleted, with its status, when it stopped. containerd's
// client reads 255 as an unknown status.
const unknownExit = 255

// Wait waits for the pod's pause task to exit.
func (c *controller) Wait(ctx context.Context, req *api.ControllerWaitRequest) (*api.ControllerWaitResponse, error) {
	ctx, m, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	resp, err := c.s.client.TaskService().Wait(ctx, &tasksapi.WaitRequest{ContainerID: m.ID})
	err = errgrpc.ToNative(err)
	out := &api.ControllerWaitResponse{ExitStatus: resp.GetExitStatus(), ExitedAt: resp.GetExitedAt()}
	if errdefs.IsNotFound(err) {
		// Stopped already (or stopping: StopPodSandbox deletes the
		// task it killed); what the status was went with the task.
		out = &api.ControllerWaitResponse{ExitStatus: unknownExit, ExitedAt: timestamppb.Now()}
	} else if err != nil {
		return nil, fmt.Errorf("wait for sandbox %s: %w", m.ID, err)
	}
	c.publish(ctx, "/sandboxes/exit", &eventtypes.SandboxExit{SandboxID: m.ID, ExitStatus: out.ExitStatus, ExitedAt: out.ExitedAt})
	return out, nil
}

// Status is the pod's state as the CRI reports it.
func (c *controller) Status(ctx context.Context, req *api.ControllerStatusRequest) (*api.ControllerStatusResponse, error) {
	ctx, m, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	ready, pid := c.s.pods.Ready(ctx, m.ID)
	state := runtime.PodSandboxState_SANDBOX_NOTREADY
	if ready {
		state = runtime.PodSandboxState_SANDBOX_READY
	}
	out := &api.ControllerStatusResponse{
		SandboxID: m.ID,
		Pid:       pid,
		State:     state.String(),
		CreatedAt: timestamppb.New(time.Unix(0, m.CreatedAt)),
	}
	if req.GetVerbose() {
		out.Info = map[string]string{"info": fmt.Sprintf(`{"netNamespacePath":%q,"networkTornDown":%v}`, m.NetNS, m.NetworkTornDown)}
	}
	return out, nil
}

// Shutdown removes the pod as RemovePodSandbox does (its containers, its
// records, the Sandbox Store's included); an unknown pod is no error, as
// in containerd.
func (c *controller) Shutdown(ctx context.Context, req *api.ControllerShutdownRequest) (*api.ControllerShutdownResponse, error) {
	ctx, m, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if errdefs.IsNotFound(err) && req.GetSandboxer() == podSandboxer {
		return &api.ControllerShutdownResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := c.s.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: m.ID}); err != nil {
		return nil, err
	}
	return &api.ControllerShutdownResponse{}, nil
}

// Metrics are the pause task's (its cgroup's), as the tasks service
// reports them.
func (c *controller) Metrics(ctx context.Context, req *api.ControllerMetricsRequest) (*api.ControllerMetricsResponse, error) {
	ctx, m, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	resp, err := c.s.client.TaskService().Metrics(ctx, &tasksapi.MetricsRequest{Filters: []string{"id==" + m.ID}})
	if err != nil {
		return nil, fmt.Errorf("metrics of sandbox %s: %w", m.ID, errgrpc.ToNative(err))
	}
	if len(resp.GetMetrics()) == 0 {
		return nil, fmt.Errorf("sandbox %s has no running task: %w", m.ID, errdefs.ErrNotFound)
	}
	return &api.ControllerMetricsResponse{Metrics: resp.GetMetrics()[0]}, nil
}

// Update is refused: a CRI pod's resources change through the CRI.
func (c *controller) Update(ctx context.Context, req *api.ControllerUpdateRequest) (*api.ControllerUpdateResponse, error) {
	if _, _, err := c.pod(ctx, req.GetSandboxer(), req.GetSandboxID()); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("sandbox %s: podsandbox sandboxes are updated through the CRI: %w", req.GetSandboxID(), errdefs.ErrNotImplemented)
}
