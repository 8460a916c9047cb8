// Package watch keeps what the cri process holds in memory of its running
// containers besides their records: one exit watcher per started
// container, which deletes its task when it ends and hands the exit on to
// be recorded, and the log writer its output goes to. All of it is
// rebuilt after a restart (Ensure, from the records).
package watch

import (
	"context"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Hooks are what a watcher asks of its owner when a container ends.
type Hooks interface {
	// OOMKilled says whether the kernel's OOM killer took a process
	// of the container; asked before its task (and cgroup) is deleted.
	OOMKilled(ctx context.Context, id string) bool
	// Exited records how the container ended; ctx's logger names it.
	Exited(ctx context.Context, id string, code int32, at time.Time, oom bool)
}

// Watchers are the exit watchers and log writers of running containers.
type Watchers struct {
	client *containerd.Client
	hooks  Hooks
	// ctx bounds the watchers and carries the process's logger; its
	// end stops them (a new process watches again).
	ctx context.Context

	mu sync.Mutex
	// exits holds, per started container, a channel closed once its exit
	// has been recorded and its task deleted.
	exits map[string]chan struct{}
	// logs holds the log writer of each container whose output this
	// process writes, for ReopenContainerLog.
	logs map[string]*Log
}

// New watches within ctx, the tasks of client's containers.
func New(ctx context.Context, client *containerd.Client, hooks Hooks) *Watchers {
	return &Watchers{client: client, hooks: hooks, ctx: ctx, exits: map[string]chan struct{}{}, logs: map[string]*Log{}}
}

// Log is the log writer of a running container this process writes.
func (w *Watchers) Log(id string) *Log {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logs[id]
}

// Forget drops all that is kept of a removed container.
func (w *Watchers) Forget(id string) {
	w.mu.Lock()
	delete(w.exits, id)
	delete(w.logs, id)
	w.mu.Unlock()
}

// Done is the done channel of the container's exit watcher in this
// process, or nil.
func (w *Watchers) Done(id string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exits[id]
}

// Task is what the exit watcher deletes: a client Task, or a task.Task.
type Task interface {
	Delete(context.Context, ...containerd.ProcessDeleteOpts) (*containerd.ExitStatus, error)
}

// Watch records a container's exit once its task ends: whether the OOM
// killer took it read first (its cgroup goes with the task), the task
// (and shim) deleted and the log closed, then the exit handed to the
// hooks. Each started container has one watcher; the returned channel
// closes when it is done.
func (w *Watchers) Watch(id string, task Task, exitC <-chan containerd.ExitStatus, lg *Log) chan struct{} {
	w.mu.Lock()
	if done, ok := w.exits[id]; ok {
		w.mu.Unlock()
		return done
	}
	done := make(chan struct{})
	w.exits[id] = done
	if lg != nil {
		w.logs[id] = lg
	}
	w.mu.Unlock()
	go func() {
		defer close(done)
		ctx := logging.With(w.ctx, "container", id)
		st := <-exitC
		if st.Error() != nil {
			// The process is stopping; the next one's Recover
			// watches again.
			logging.G(ctx).Debug("stopped watching container", "error", st.Error())
			w.mu.Lock()
			delete(w.exits, id)
			delete(w.logs, id)
			w.mu.Unlock()
			return
		}
		// The cgroup, and its OOM kill count, goes with the task.
		oom := w.hooks.OOMKilled(ctx, id)
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			logging.G(ctx).Warn("delete task of exited container", "error", err)
		}
		w.mu.Lock()
		delete(w.logs, id)
		w.mu.Unlock()
		lg.Close()
		w.hooks.Exited(ctx, id, int32(st.ExitCode()), st.ExitTime(), oom)
	}()
	return done
}

// Ensure returns the exit watcher of a started container, starting one
// (without log, unless lg is given) when this process has none: after a
// restart. ctx's logger names the container.
func (w *Watchers) Ensure(ctx context.Context, id string, lg *Log) (chan struct{}, error) {
	w.mu.Lock()
	done, ok := w.exits[id]
	w.mu.Unlock()
	if ok {
		return done, nil
	}
	c, err := w.client.LoadContainer(ctx, id)
	if err != nil {
		return nil, err
	}
	var attach cio.Attach
	if lg != nil {
		stdout, stderr := lg.Writers()
		attach = cio.NewAttach(cio.WithStreams(lg.Stdin(), stdout, stderr))
	}
	task, err := c.Task(ctx, attach)
	if err != nil && attach != nil {
		logging.G(ctx).Warn("reattach container log, logs stop here", "error", err)
		lg.Close()
		lg = nil
		task, err = c.Task(ctx, nil)
	}
	if err != nil {
		return nil, err
	}
	exitC, err := task.Wait(w.ctx)
	if err != nil {
		return nil, err
	}
	return w.Watch(id, task, exitC, lg), nil
}
