package container

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// maxExecOutput bounds what ExecSync keeps of each stream, under the
// gRPC message limit.
const maxExecOutput = 4 << 20

// ExecSync runs a command in a running container and returns its output
// and exit code; past the timeout (if any) the command is killed.
func (s *Service) ExecSync(ctx context.Context, req *runtime.ExecSyncRequest) (*runtime.ExecSyncResponse, error) {
	ctx = withNamespace(ctx)
	if len(req.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	m, _, err := s.store.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if state, _, _ := s.containerState(ctx, m); state != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is not running: %w", m.ID, errdefs.ErrFailedPrecondition)
	}
	c, err := s.client.LoadContainer(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("spec of container %s: %w", m.ID, err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("task of container %s: %w", m.ID, err)
	}
	pspec := *spec.Process
	pspec.Args = req.GetCmd()
	pspec.Terminal = false

	stdout, stderr := &limitedBuffer{max: maxExecOutput}, &limitedBuffer{max: maxExecOutput}
	execID := store.NewID()[:32]
	process, err := task.Exec(ctx, execID, &pspec, cio.NewCreator(cio.WithStreams(nil, stdout, stderr), cio.WithFIFODir(s.fifoDir)))
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", m.ID, err)
	}
	cleanup := context.WithoutCancel(ctx)
	defer func() {
		if _, err := process.Delete(cleanup, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			logging.G(ctx).Warn("delete exec process", "container", m.ID, "exec", execID, "error", err)
		}
	}()
	exitC, err := process.Wait(cleanup)
	if err != nil {
		return nil, err
	}
	if err := process.Start(ctx); err != nil {
		return nil, fmt.Errorf("start exec in container %s: %w", m.ID, err)
	}
	var timeout <-chan time.Time
	if t := req.GetTimeout(); t > 0 {
		timer := time.NewTimer(time.Duration(t) * time.Second)
		defer timer.Stop()
		timeout = timer.C
	}
	var st containerd.ExitStatus
	select {
	case st = <-exitC:
	case <-timeout:
		_ = process.Kill(cleanup, syscall.SIGKILL)
		<-exitC
		return nil, fmt.Errorf("exec in container %s timed out after %ds: %w", m.ID, req.GetTimeout(), context.DeadlineExceeded)
	case <-ctx.Done():
		_ = process.Kill(cleanup, syscall.SIGKILL)
		<-exitC
		return nil, ctx.Err()
	}
	if err := st.Error(); err != nil {
		return nil, fmt.Errorf("wait for exec in container %s: %w", m.ID, err)
	}
	// The output is complete once the IO copies end.
	process.IO().Wait()
	return &runtime.ExecSyncResponse{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: int32(st.ExitCode())}, nil
}

// limitedBuffer keeps the first max bytes written to it and drops the
// rest, so a chatty command cannot exhaust memory.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		if len(p) > room {
			b.buf.Write(p[:room])
		} else {
			b.buf.Write(p)
		}
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}
