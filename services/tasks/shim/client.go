package shim

import (
	"context"
	"errors"
	"fmt"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// TaskClient is the task API of a shim (containerd.task.v3.Task).
type TaskClient = task.TTRPCTaskService

// taskClient speaks the task API of version 2 or 3 of the shim protocol.
// The two protos differ only in their package name, so their messages are
// the same on the wire: a version 2 shim is driven with the v3 messages
// under its own service name. Errors come back as errdefs errors.
type taskClient struct {
	c       *ttrpc.Client
	service string
}

func newTaskClient(c *ttrpc.Client, version int32) *taskClient {
	svc := "containerd.task.v3.Task"
	if version < 3 {
		svc = "containerd.task.v2.Task"
	}
	return &taskClient{c: c, service: svc}
}

var _ TaskClient = (*taskClient)(nil)

func (t *taskClient) call(ctx context.Context, method string, req, resp any) (err error) {
	ctx, end := step(ctx, t.service+"/"+method, trace.WithSpanKind(trace.SpanKindClient))
	defer func() { end(err) }()
	err = t.c.Call(ctx, t.service, method, req, resp)
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return errgrpc.ToNative(err)
	}
	if errors.Is(err, ttrpc.ErrClosed) {
		// The shim is gone (or going): callers tell it apart from a
		// refusal by errors.Is(err, ttrpc.ErrClosed).
		return fmt.Errorf("shim connection: %w: %w", err, errdefs.ErrUnavailable)
	}
	return err
}

func (t *taskClient) State(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	var resp task.StateResponse
	if err := t.call(ctx, "State", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Create(ctx context.Context, r *task.CreateTaskRequest) (*task.CreateTaskResponse, error) {
	var resp task.CreateTaskResponse
	if err := t.call(ctx, "Create", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	var resp task.StartResponse
	if err := t.call(ctx, "Start", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Delete(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	var resp task.DeleteResponse
	if err := t.call(ctx, "Delete", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	var resp task.PidsResponse
	if err := t.call(ctx, "Pids", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Pause(ctx context.Context, r *task.PauseRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Pause", r)
}

func (t *taskClient) Resume(ctx context.Context, r *task.ResumeRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Resume", r)
}

func (t *taskClient) Checkpoint(ctx context.Context, r *task.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Checkpoint", r)
}

func (t *taskClient) Kill(ctx context.Context, r *task.KillRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Kill", r)
}

func (t *taskClient) Exec(ctx context.Context, r *task.ExecProcessRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Exec", r)
}

func (t *taskClient) ResizePty(ctx context.Context, r *task.ResizePtyRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "ResizePty", r)
}

func (t *taskClient) CloseIO(ctx context.Context, r *task.CloseIORequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "CloseIO", r)
}

func (t *taskClient) Update(ctx context.Context, r *task.UpdateTaskRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Update", r)
}

func (t *taskClient) Wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	var resp task.WaitResponse
	if err := t.call(ctx, "Wait", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Stats(ctx context.Context, r *task.StatsRequest) (*task.StatsResponse, error) {
	var resp task.StatsResponse
	if err := t.call(ctx, "Stats", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Connect(ctx context.Context, r *task.ConnectRequest) (*task.ConnectResponse, error) {
	var resp task.ConnectResponse
	if err := t.call(ctx, "Connect", r, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (t *taskClient) Shutdown(ctx context.Context, r *task.ShutdownRequest) (*emptypb.Empty, error) {
	return t.empty(ctx, "Shutdown", r)
}

func (t *taskClient) empty(ctx context.Context, method string, req any) (*emptypb.Empty, error) {
	var resp emptypb.Empty
	if err := t.call(ctx, method, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}
