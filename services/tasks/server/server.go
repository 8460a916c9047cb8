// Package server is the gRPC façade of the tasks service: containerd's
// Tasks API (containerd.services.tasks.v1) over the shims of the shim
// package. Container records come from the Containers API (the metadata
// service, on its own socket), as containerd's tasks service reads them
// from its metadata store.
package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	api "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	taskapi "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/tasks/shim"
)

// stateTimeout bounds the state query of one task in List and Metrics, so
// that one hung shim does not hang the listing of all the others.
const stateTimeout = 2 * time.Second

// Tasks serves containerd.services.tasks.v1.Tasks.
type Tasks struct {
	api.UnimplementedTasksServer
	shims      *shim.Manager
	containers containersapi.ContainersClient
}

// New serves the tasks of shims; containers is where container records are
// read from.
func New(shims *shim.Manager, containers containersapi.ContainersClient) *Tasks {
	return &Tasks{shims: shims, containers: containers}
}

// Register adds the Tasks API to srv, and Introspection's PluginInfo of
// the runtime plugin (introspection.go).
func (s *Tasks) Register(srv grpc.ServiceRegistrar) {
	api.RegisterTasksServer(srv, s)
	s.registerIntrospection(srv)
}

// namespace is the caller's namespace, also set on ctx for outgoing gRPC
// and ttrpc calls (gRPC never copies incoming metadata to outgoing calls).
func namespace(ctx context.Context) (context.Context, string, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return ctx, "", err
	}
	if err := identifiers.Validate(ns); err != nil {
		return ctx, "", fmt.Errorf("namespace %q: %w", ns, err)
	}
	return namespaces.WithNamespace(ctx, ns), ns, nil
}

// task finds the caller's task.
func (s *Tasks) task(ctx context.Context, id string) (context.Context, *shim.Task, error) {
	ctx, ns, err := namespace(ctx)
	if err != nil {
		return ctx, nil, err
	}
	t, err := s.shims.Get(ns, id)
	if err != nil {
		return ctx, nil, err
	}
	return ctx, t, nil
}

func (s *Tasks) Create(ctx context.Context, r *api.CreateTaskRequest) (*api.CreateTaskResponse, error) {
	ctx, ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if r.Checkpoint != nil {
		return nil, fmt.Errorf("restore from a checkpoint (CRIU is not installed): %w", errdefs.ErrNotImplemented)
	}
	if r.TaskApiAddress != "" {
		return nil, fmt.Errorf("tasks in a sandbox's shim (task_api_address): %w", errdefs.ErrNotImplemented)
	}
	if err := identifiers.Validate(r.ContainerID); err != nil {
		return nil, err
	}
	if s.containers == nil {
		return nil, fmt.Errorf("no container store (the tasks service was not given metadata's socket): %w", errdefs.ErrFailedPrecondition)
	}
	got, err := s.containers.Get(ctx, &containersapi.GetContainerRequest{ID: r.ContainerID})
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", r.ContainerID, errgrpc.ToNative(err))
	}
	c := got.GetContainer()
	opts := shim.CreateOpts{
		Runtime:  c.GetRuntime().GetName(),
		Spec:     c.GetSpec().GetValue(),
		Options:  r.Options,
		Rootfs:   r.Rootfs,
		Stdin:    r.Stdin,
		Stdout:   r.Stdout,
		Stderr:   r.Stderr,
		Terminal: r.Terminal,
	}
	if r.RuntimePath != "" {
		opts.Runtime = r.RuntimePath
	}
	// Task options override the container's runtime options, as in
	// containerd.
	if len(opts.Options.GetValue()) == 0 {
		opts.Options = c.GetRuntime().GetOptions()
	}
	_, pid, err := s.shims.Create(ctx, ns, r.ContainerID, opts)
	if err != nil {
		return nil, err
	}
	return &api.CreateTaskResponse{ContainerID: r.ContainerID, Pid: pid}, nil
}

func (s *Tasks) Start(ctx context.Context, r *api.StartRequest) (*api.StartResponse, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	resp, err := t.Client().Start(ctx, &task.StartRequest{ID: t.ID, ExecID: r.ExecID})
	if err != nil {
		return nil, err
	}
	return &api.StartResponse{Pid: resp.Pid}, nil
}

func (s *Tasks) Delete(ctx context.Context, r *api.DeleteTaskRequest) (*api.DeleteResponse, error) {
	ctx, ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := s.shims.Delete(ctx, ns, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return &api.DeleteResponse{ID: r.ContainerID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}, nil
}

func (s *Tasks) DeleteProcess(ctx context.Context, r *api.DeleteProcessRequest) (*api.DeleteResponse, error) {
	if r.ExecID == "" {
		// An empty exec id names the init process to the shim.
		return nil, fmt.Errorf("exec id must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	resp, err := t.Client().Delete(ctx, &task.DeleteRequest{ID: t.ID, ExecID: r.ExecID})
	if err != nil {
		return nil, err
	}
	return &api.DeleteResponse{ID: r.ExecID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}, nil
}

func (s *Tasks) Get(ctx context.Context, r *api.GetRequest) (*api.GetResponse, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	p, err := processState(ctx, t, r.ExecID)
	if err != nil {
		return nil, err
	}
	return &api.GetResponse{Process: p}, nil
}

// processState asks the shim for the state of a task's process (execID
// empty: the init process).
func processState(ctx context.Context, t *shim.Task, execID string) (*taskapi.Process, error) {
	st, err := t.Client().State(ctx, &task.StateRequest{ID: t.ID, ExecID: execID})
	if err != nil {
		if errors.Is(err, ttrpc.ErrClosed) {
			return nil, fmt.Errorf("task %s: shim gone: %w", t.ID, errdefs.ErrNotFound)
		}
		return nil, err
	}
	id := t.ID
	if execID != "" {
		id = execID
	}
	return &taskapi.Process{
		ContainerID: t.ID,
		ID:          id,
		Pid:         st.Pid,
		Status:      st.Status,
		Stdin:       st.Stdin,
		Stdout:      st.Stdout,
		Stderr:      st.Stderr,
		Terminal:    st.Terminal,
		ExitStatus:  st.ExitStatus,
		ExitedAt:    st.ExitedAt,
	}, nil
}

func (s *Tasks) List(ctx context.Context, r *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	ctx, ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	resp := &api.ListTasksResponse{}
	for _, t := range s.shims.List(ns) {
		sctx, cancel := context.WithTimeout(ctx, stateTimeout)
		p, err := processState(sctx, t, "")
		cancel()
		if err != nil {
			if !errdefs.IsNotFound(err) { // NotFound: deleted meanwhile
				logging.G(ctx).Warn("task state", "task", t.ID, "error", err)
			}
			continue
		}
		resp.Tasks = append(resp.Tasks, p)
	}
	return resp, nil
}

func (s *Tasks) Kill(ctx context.Context, r *api.KillRequest) (*emptypb.Empty, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return t.Client().Kill(ctx, &task.KillRequest{ID: t.ID, ExecID: r.ExecID, Signal: r.Signal, All: r.All})
}

func (s *Tasks) Exec(ctx context.Context, r *api.ExecProcessRequest) (*emptypb.Empty, error) {
	if r.ExecID == "" {
		return nil, fmt.Errorf("exec id must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := identifiers.Validate(r.ExecID); err != nil {
		return nil, fmt.Errorf("exec id %q: %w", r.ExecID, err)
	}
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return t.Client().Exec(ctx, &task.ExecProcessRequest{
		ID:       t.ID,
		ExecID:   r.ExecID,
		Stdin:    r.Stdin,
		Stdout:   r.Stdout,
		Stderr:   r.Stderr,
		Terminal: r.Terminal,
		Spec:     r.Spec,
	})
}

func (s *Tasks) ResizePty(ctx context.Context, r *api.ResizePtyRequest) (*emptypb.Empty, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return t.Client().ResizePty(ctx, &task.ResizePtyRequest{ID: t.ID, ExecID: r.ExecID, Width: r.Width, Height: r.Height})
}

func (s *Tasks) CloseIO(ctx context.Context, r *api.CloseIORequest) (*emptypb.Empty, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	if !r.Stdin {
		return &emptypb.Empty{}, nil
	}
	return t.Client().CloseIO(ctx, &task.CloseIORequest{ID: t.ID, ExecID: r.ExecID, Stdin: true})
}

func (s *Tasks) Pause(ctx context.Context, r *api.PauseTaskRequest) (*emptypb.Empty, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return t.Client().Pause(ctx, &task.PauseRequest{ID: t.ID})
}

func (s *Tasks) Resume(ctx context.Context, r *api.ResumeTaskRequest) (*emptypb.Empty, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return t.Client().Resume(ctx, &task.ResumeRequest{ID: t.ID})
}

func (s *Tasks) ListPids(ctx context.Context, r *api.ListPidsRequest) (*api.ListPidsResponse, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	resp, err := t.Client().Pids(ctx, &task.PidsRequest{ID: t.ID})
	if err != nil {
		return nil, err
	}
	return &api.ListPidsResponse{Processes: resp.Processes}, nil
}

func (s *Tasks) Checkpoint(context.Context, *api.CheckpointTaskRequest) (*api.CheckpointTaskResponse, error) {
	return nil, fmt.Errorf("checkpoint (CRIU is not installed): %w", errdefs.ErrNotImplemented)
}

func (s *Tasks) Update(ctx context.Context, r *api.UpdateTaskRequest) (*emptypb.Empty, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	return t.Client().Update(ctx, &task.UpdateTaskRequest{ID: t.ID, Resources: r.Resources, Annotations: r.Annotations})
}

func (s *Tasks) Metrics(ctx context.Context, r *api.MetricsRequest) (*api.MetricsResponse, error) {
	ctx, ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(r.Filters...)
	if err != nil {
		return nil, err
	}
	resp := &api.MetricsResponse{}
	for _, t := range s.shims.List(ns) {
		if !filter.Match(filters.AdapterFunc(func(fieldpath []string) (string, bool) {
			switch fieldpath[0] {
			case "id":
				return t.ID, true
			case "namespace":
				return t.Namespace, true
			}
			return "", false
		})) {
			continue
		}
		collected := timestamppb.Now()
		sctx, cancel := context.WithTimeout(ctx, stateTimeout)
		stats, err := t.Client().Stats(sctx, &task.StatsRequest{ID: t.ID})
		cancel()
		if err != nil {
			if !errdefs.IsNotFound(err) {
				logging.G(ctx).Warn("task metrics", "task", t.ID, "error", err)
			}
			continue
		}
		resp.Metrics = append(resp.Metrics, &types.Metric{Timestamp: collected, ID: t.ID, Data: stats.Stats})
	}
	return resp, nil
}

func (s *Tasks) Wait(ctx context.Context, r *api.WaitRequest) (*api.WaitResponse, error) {
	ctx, t, err := s.task(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	resp, err := t.Client().Wait(ctx, &task.WaitRequest{ID: t.ID, ExecID: r.ExecID})
	if err != nil {
		return nil, err
	}
	return &api.WaitResponse{ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}, nil
}
