package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Checkpointing (the kubelet's forensic container checkpoint) needs CRIU,
// and CRIU needs a kernel it knows: CRIU's own "criu check" says whether it
// can dump a process here, and its first error line says why not. The
// answer is asked once per process: neither CRIU nor the kernel changes
// under a running daemon.
var criu = &criuProbe{check: runCRIUCheck}

type criuProbe struct {
	once  sync.Once
	check func() error
	err   error
}

// usable is nil when CRIU can checkpoint on this host, else the reason.
func (p *criuProbe) usable() error {
	p.once.Do(func() { p.err = p.check() })
	return p.err
}

// runCRIUCheck runs "criu check" from PATH, as the runc shim would find it.
func runCRIUCheck() error {
	path, err := exec.LookPath("criu")
	if err != nil {
		return errors.New("criu is not installed (no criu in PATH)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "check").CombinedOutput()
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s check: %s", path, criuReason(string(out), err))
}

// criuReason is the first error CRIU printed (the cause; what follows it
// is the consequence), or how the command failed.
func criuReason(out string, err error) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "Error") {
			return strings.TrimSpace(line)
		}
	}
	if s := strings.TrimSpace(out); s != "" {
		return s
	}
	return err.Error()
}

// errNoCheckpoint is the answer to a checkpoint on a host where CRIU cannot
// run: a precondition of the host, with CRIU's reason.
func errNoCheckpoint(what string, reason error) error {
	return fmt.Errorf("checkpoint %s: CRIU cannot checkpoint on this host: %v: %w", what, reason, errdefs.ErrFailedPrecondition)
}

// CheckpointContainer checkpoints a running container to an archive at
// the request's location, as containerd does: CRIU first (a host that
// cannot run it fails every request, naming why), then the container,
// which must be running, then the dump through its task, left running.
func (s *Server) CheckpointContainer(ctx context.Context, req *runtime.CheckpointContainerRequest) (*runtime.CheckpointContainerResponse, error) {
	ctx = withNamespace(ctx)
	if err := criu.usable(); err != nil {
		return nil, errNoCheckpoint("container "+req.GetContainerId(), err)
	}
	if req.GetLocation() == "" {
		return nil, fmt.Errorf("checkpoint container %s: no location: %w", req.GetContainerId(), errdefs.ErrInvalidArgument)
	}
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if state, _, _ := s.containers.State(ctx, m); state != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is %s, only a running container can be checkpointed: %w",
			m.ID, strings.TrimPrefix(state.String(), "CONTAINER_"), errdefs.ErrFailedPrecondition)
	}
	if req.GetTimeout() > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.GetTimeout())*time.Second)
		defer cancel()
	}
	work, err := os.MkdirTemp("", "flotilla-checkpoint-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	// The kubelet's checkpoint is forensic: the container keeps running.
	opts, err := typeurl.MarshalAnyToProto(&options.CheckpointOptions{Exit: false, WorkPath: work})
	if err != nil {
		return nil, err
	}
	if _, err := s.client.TaskService().Checkpoint(ctx, &tasksapi.CheckpointTaskRequest{ContainerID: m.ID, Options: opts}); err != nil {
		return nil, fmt.Errorf("checkpoint container %s: %w", m.ID, errgrpc.ToNative(err))
	}
	// The tasks service answers no checkpoint today (it has no CRIU
	// path); the archive (CRIU images, rootfs diff, spec and CRI
	// metadata, as containerd writes it) comes with it.
	return nil, fmt.Errorf("checkpoint container %s: writing the archive: %w", m.ID, errdefs.ErrNotImplemented)
}

// CheckpointPod is not in containerd 2.4.2 either; a host without a
// working CRIU says so first, as for a container.
func (s *Server) CheckpointPod(_ context.Context, req *runtime.CheckpointPodRequest) (*runtime.CheckpointPodResponse, error) {
	if err := criu.usable(); err != nil {
		return nil, errNoCheckpoint("pod "+req.GetPodSandboxId(), err)
	}
	return nil, fmt.Errorf("checkpoint pod %s: %w", req.GetPodSandboxId(), errdefs.ErrNotImplemented)
}

// RestorePod is not in containerd 2.4.2 either; see CheckpointPod.
func (s *Server) RestorePod(_ context.Context, req *runtime.RestorePodRequest) (*runtime.RestorePodResponse, error) {
	if err := criu.usable(); err != nil {
		return nil, fmt.Errorf("restore pod from %s: CRIU cannot restore on this host: %v: %w", req.GetCheckpointPath(), err, errdefs.ErrFailedPrecondition)
	}
	return nil, fmt.Errorf("restore pod from %s: %w", req.GetCheckpointPath(), errdefs.ErrNotImplemented)
}
