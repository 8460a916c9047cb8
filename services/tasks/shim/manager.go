package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	taskapi "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/version"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Version is the containerd version shims are told they are started by:
// the containerd module Flotilla is built against.
var Version = version.Version

// DefaultRuntime is the runtime of a container that names none.
const DefaultRuntime = "io.containerd.runc.v2"

// Publisher sends an event of a namespace to the daemon's exchange.
type Publisher func(ctx context.Context, ns, topic string, event any)

// Task is a task whose shim Flotilla is connected to.
type Task struct {
	ID        string
	Namespace string
	Bundle    *Bundle
	// Runtime is the path of the shim binary.
	Runtime string
	shim    *Shim
}

// Client is the shim's task API.
func (t *Task) Client() TaskClient { return t.shim.Task() }

// CreateOpts are what a new task is made of.
type CreateOpts struct {
	// Runtime is a runtime name (io.containerd.runc.v2) or the path of a
	// shim binary.
	Runtime string
	// Spec is the JSON of the OCI runtime spec.
	Spec []byte
	// Options are the runtime options, passed to the shim at start and
	// with Create.
	Options  *anypb.Any
	Rootfs   []*types.Mount
	Stdin    string
	Stdout   string
	Stderr   string
	Terminal bool
}

// Manager keeps the tasks of every namespace and their shims.
type Manager struct {
	cfg     Config
	publish Publisher
	// ctx is what the manager's own work logs through: shim log copiers,
	// and the cleanups after deletions and lost shims.
	ctx context.Context

	mu sync.Mutex
	// tasks maps namespace, then id, to its task; a nil task is one being
	// created, which reserves the id.
	tasks map[string]map[string]*Task
	// deleting holds the tasks whose shim is being shut down after a
	// Delete answered; the channel closes when the bundle is gone.
	deleting map[taskKey]chan struct{}
	cleanups sync.WaitGroup
}

type taskKey struct{ ns, id string }

// deleteGrace is how long a deleted task's shim keeps running before it is
// shut down: the shim sends /tasks/delete from a goroutine of its own and
// exits on Shutdown without waiting for it, so an immediate Shutdown can
// lose the event. The client has its answer meanwhile.
const deleteGrace = 20 * time.Millisecond

// NewManager builds a manager; publish (may be nil) receives the exit and
// delete events of tasks whose shim died, which no shim is left to send.
// What the manager does on its own, beyond any call (copying shim logs,
// cleaning up after shims), logs through ctx.
func NewManager(ctx context.Context, cfg Config, publish Publisher) *Manager {
	if publish == nil {
		publish = func(context.Context, string, string, any) {}
	}
	return &Manager{cfg: cfg, publish: publish, ctx: ctx, tasks: map[string]map[string]*Task{}, deleting: map[taskKey]chan struct{}{}}
}

// taskCtx is the manager's context, naming a task in what it logs.
func (m *Manager) taskCtx(ns, id string) context.Context {
	return logging.With(m.ctx, "task", id, "namespace", ns)
}

// ResolveRuntime finds the shim binary of a runtime: a path is taken as it
// is; a name <prefix>.<name>.<version> is served by
// containerd-shim-<name>-<version>, looked up beside the running binary
// first, then in PATH.
func (m *Manager) ResolveRuntime(runtime string) (string, error) {
	if runtime == "" {
		runtime = DefaultRuntime
	}
	if strings.ContainsRune(runtime, os.PathSeparator) {
		if !filepath.IsAbs(runtime) {
			return "", fmt.Errorf("runtime path %q is not absolute: %w", runtime, errdefs.ErrInvalidArgument)
		}
		if _, err := os.Stat(runtime); err != nil {
			return "", fmt.Errorf("runtime %s: %w", runtime, errdefs.ErrNotFound)
		}
		return runtime, nil
	}
	parts := strings.Split(runtime, ".")
	if len(parts) < 2 || parts[0] == "" || parts[len(parts)-2] == "" || parts[len(parts)-1] == "" {
		return "", fmt.Errorf("runtime name %q is not <prefix>.<name>.<version>: %w", runtime, errdefs.ErrInvalidArgument)
	}
	name := fmt.Sprintf("containerd-shim-%s-%s", parts[len(parts)-2], parts[len(parts)-1])
	var dirs []string
	if m.cfg.BinDir != "" {
		dirs = append(dirs, m.cfg.BinDir)
	}
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("runtime %q: binary %s not installed: %w", runtime, name, errdefs.ErrNotFound)
	}
	return filepath.Abs(p)
}

// Create starts a shim for a new task and creates the task in it. It
// answers AlreadyExists while a task of that id exists in the namespace.
func (m *Manager) Create(ctx context.Context, ns, id string, opts CreateOpts) (_ *Task, pid uint32, err error) {
	if err := m.reserve(ctx, ns, id); err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			m.release(ns, id, nil)
		}
	}()
	ctx = logging.With(ctx, "task", id) // the call's logger names the namespace
	binary, err := m.ResolveRuntime(opts.Runtime)
	if err != nil {
		return nil, 0, err
	}
	if m.cfg.RuncRoot != "" && filepath.Base(binary) == "containerd-shim-runc-v2" {
		if opts.Options, err = withRuncRoot(opts.Options, m.cfg.RuncRoot); err != nil {
			return nil, 0, err
		}
	}
	_, endBundle := step(ctx, "shim.NewBundle")
	b, err := NewBundle(m.cfg.Root, m.cfg.State, ns, id, opts.Spec)
	endBundle(err)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			if derr := b.Delete(); derr != nil {
				logging.G(ctx).Error("remove bundle of failed task", "error", derr)
			}
		}
	}()
	t := &Task{ID: id, Namespace: ns, Bundle: b, Runtime: binary}
	lost := func() { m.lost(t) }
	var s *Shim
	if params := m.groupShim(ns, id, binary, opts.Spec); params != nil {
		if s, err = join(ctx, m.taskCtx(ns, id), &m.cfg, b, binary, params, lost); err != nil {
			// The group's shim went away meanwhile: start answers as it
			// always does (a new shim, or the error).
			logging.G(ctx).Debug("join shim of the task's group", "address", params.Address, "error", err)
			s = nil
		}
	}
	if s == nil {
		if s, err = start(ctx, m.taskCtx(ns, id), &m.cfg, b, binary, opts.Options, lost); err != nil {
			return nil, 0, fmt.Errorf("start shim: %w", err)
		}
	}
	t.shim = s
	resp, err := s.Task().Create(ctx, &task.CreateTaskRequest{
		ID:       id,
		Bundle:   b.Path,
		Rootfs:   opts.Rootfs,
		Stdin:    opts.Stdin,
		Stdout:   opts.Stdout,
		Stderr:   opts.Stderr,
		Terminal: opts.Terminal,
		Options:  opts.Options,
	})
	if err != nil {
		m.cleanupStarted(ctx, t)
		return nil, 0, fmt.Errorf("create task %s: %w", id, err)
	}
	m.release(ns, id, t)
	return t, resp.Pid, nil
}

// runcGroupLabels are the annotations by which containerd-shim-runc-v2
// groups tasks in one shim, the first present winning: a CRI pod's
// containers all name their sandbox, and so share the sandbox's shim.
var runcGroupLabels = []string{"io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"}

// groupShim returns how to reach (address, protocol, version) the connected
// shim that `<binary> start` would hand a new task: containerd-shim-runc-v2's start finds the group of
// the task in its spec, and when a shim already listens at the group's
// socket it answers with that shim's address and starts nothing. Knowing
// the group's shim, the tasks service skips running the binary at all, as
// containerd does for the tasks of a sandbox. nil when no task of ours is
// connected to that shim (or for another runtime): start decides then.
func (m *Manager) groupShim(ns, id, binary string, spec []byte) *bootapi.BootstrapResult {
	if filepath.Base(binary) != "containerd-shim-runc-v2" {
		return nil
	}
	var s struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(spec, &s); err != nil {
		return nil // start reports what the shim makes of it
	}
	group := id
	for _, l := range runcGroupLabels {
		if g, ok := s.Annotations[l]; ok {
			group = g
			break
		}
	}
	want := socketAddress(&m.cfg, ns, group)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tasks[ns] {
		if t == nil || t.shim == nil || t.Runtime != binary {
			continue
		}
		if p := t.shim.params; p.Address == want && strings.EqualFold(p.Protocol, "ttrpc") && t.shim.connected() {
			return p
		}
	}
	return nil
}

// withRuncRoot sets the runc state directory in runc options that name
// none: runc's default (/run/containerd/runc) is containerd's, and a
// container of the same namespace and id there would collide with ours.
func withRuncRoot(a *anypb.Any, root string) (*anypb.Any, error) {
	var o runcoptions.Options
	if len(a.GetValue()) > 0 || a.GetTypeUrl() != "" {
		if !a.MessageIs(&o) {
			return a, nil // another runtime's options: not ours to change
		}
		if err := a.UnmarshalTo(&o); err != nil {
			return nil, fmt.Errorf("runc options: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		if o.Root != "" {
			return a, nil
		}
	}
	o.Root = root
	return typeurl.MarshalAnyToProto(&o)
}

// cleanupStarted tears down the shim of a task that failed to be created;
// the caller removes the bundle. ctx names the task in what it logs.
func (m *Manager) cleanupStarted(ctx context.Context, t *Task) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := t.shim.Task().Delete(ctx, &task.DeleteRequest{ID: t.ID}); err != nil && !errdefs.IsNotFound(err) {
		logging.G(ctx).Warn("delete failed task in shim", "error", err)
	}
	if err := t.shim.Shutdown(ctx); err != nil {
		logging.G(ctx).Warn("shut down shim of failed task", "error", err)
	}
	// The shim may have died halfway (its runc container left behind) or
	// not answer: its binary cleans up either way, as it would after a
	// crash.
	if _, err := runDelete(ctx, &m.cfg, t.Bundle, t.Runtime); err != nil {
		logging.G(ctx).Warn("shim delete of failed task", "error", err)
	}
}

// reserve claims an id for a task being created (or loaded). A task of that
// id still being cleaned up after its Delete is waited for, so that an id
// is reusable as soon as Delete answered (ctr run --rm t1, twice).
func (m *Manager) reserve(ctx context.Context, ns, id string) error {
	for {
		m.mu.Lock()
		if ch, ok := m.deleting[taskKey{ns, id}]; ok {
			m.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		byID := m.tasks[ns]
		if byID == nil {
			byID = map[string]*Task{}
			m.tasks[ns] = byID
		}
		if _, ok := byID[id]; ok {
			m.mu.Unlock()
			return fmt.Errorf("task %s: %w", id, errdefs.ErrAlreadyExists)
		}
		byID[id] = nil
		m.mu.Unlock()
		return nil
	}
}

// release ends a reservation: t takes the id, or nil frees it.
func (m *Manager) release(ns, id string, t *Task) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t != nil {
		m.tasks[ns][id] = t
		return
	}
	delete(m.tasks[ns], id)
}

// Get returns a task of the namespace.
func (m *Manager) Get(ns, id string) (*Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.tasks[ns][id]; t != nil {
		return t, nil
	}
	return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
}

// List returns the tasks of a namespace, by id.
func (m *Manager) List(ns string) []*Task {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Task
	for _, t := range m.tasks[ns] {
		if t != nil {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Namespaces lists the namespaces that have tasks.
func (m *Manager) Namespaces() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for ns, byID := range m.tasks {
		if len(byID) > 0 {
			out = append(out, ns)
		}
	}
	sort.Strings(out)
	return out
}

// take removes a task from the table if it still is t, and reports whether
// it was: the caller that takes a task is the one that cleans it up. With
// cleaning set, the id stays claimed until the returned channel's owner
// closes it (see finishDelete).
func (m *Manager) take(t *Task, cleaning bool) (bool, chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.tasks[t.Namespace][t.ID]; !ok || cur != t {
		return false, nil
	}
	delete(m.tasks[t.Namespace], t.ID)
	if !cleaning {
		return true, nil
	}
	ch := make(chan struct{})
	m.deleting[taskKey{t.Namespace, t.ID}] = ch
	m.cleanups.Add(1)
	return true, ch
}

// Delete deletes a task in its shim and answers with its exit; the shim is
// shut down and the bundle removed right after, in the background. When the
// shim is already gone, the exit is the one its binary recorded.
func (m *Manager) Delete(ctx context.Context, ns, id string) (*task.DeleteResponse, error) {
	t, err := m.Get(ns, id)
	if err != nil {
		return nil, err
	}
	ctx = logging.With(ctx, "task", id) // the call's logger names the namespace
	m.awaitExitRecorded(ctx, t)
	resp, shimErr := t.shim.Task().Delete(ctx, &task.DeleteRequest{ID: id})
	gone := errors.Is(shimErr, ttrpc.ErrClosed)
	if shimErr != nil && !gone && !errdefs.IsNotFound(shimErr) {
		// The task stays (the shim refuses to delete a running task): the
		// caller may kill it and retry.
		return nil, shimErr
	}
	if shimErr == nil {
		ok, done := m.take(t, true)
		if !ok {
			return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
		}
		go m.finishDelete(t, done)
		return resp, nil
	}
	if ok, _ := m.take(t, false); !ok {
		return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	if err := t.shim.Shutdown(ctx); err != nil {
		logging.G(ctx).Warn("shut down shim", "error", err)
	}
	if gone {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		resp, err = runDelete(dctx, &m.cfg, t.Bundle, t.Runtime)
		cancel()
		if err != nil {
			logging.G(ctx).Warn("shim delete", "error", err)
		}
	}
	if err := t.Bundle.Delete(); err != nil {
		logging.G(ctx).Error("remove bundle", "error", err)
	}
	if resp == nil {
		return nil, shimErr
	}
	return resp, nil
}

// finishDelete shuts down the shim of a deleted task and removes its bundle,
// then frees the id.
func (m *Manager) finishDelete(t *Task, done chan struct{}) {
	defer m.cleanups.Done()
	defer func() {
		m.mu.Lock()
		delete(m.deleting, taskKey{t.Namespace, t.ID})
		m.mu.Unlock()
		close(done)
	}()
	time.Sleep(deleteGrace)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(m.taskCtx(t.Namespace, t.ID)), 10*time.Second)
	defer cancel()
	if m.shimShared(t) {
		// The shim stays for the other tasks: waiting for it to exit
		// would hold this task's id for nothing.
		if err := t.shim.Leave(ctx); err != nil {
			logging.G(ctx).Warn("leave shared shim", "error", err)
		}
	} else if err := t.shim.Shutdown(ctx); err != nil {
		logging.G(ctx).Warn("shut down shim", "error", err)
	}
	if err := t.Bundle.Delete(); err != nil {
		logging.G(ctx).Error("remove bundle", "error", err)
	}
}

// shimShared says whether another task of ours is connected to t's shim
// process (grouped with it, as a pod's tasks are). Tasks deleted at once may
// each find the other; each still sends Shutdown, and the last of those
// finds the shim without tasks and ends it.
func (m *Manager) shimShared(t *Task) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.tasks[t.Namespace] {
		if o != nil && o != t && o.shim != nil && o.shim.params.Address == t.shim.params.Address && o.shim.connected() {
			return true
		}
	}
	return false
}

// exitRecordWait bounds how long Delete waits for the shim to record an
// exit it already reported.
const exitRecordWait = time.Second

// awaitExitRecorded holds a Delete until the runc shim has queued the
// /tasks/exit event of a stopped task. The shim answers Wait and State as
// soon as the process is reaped but sends the event only after writing
// exit.json to the bundle, and a Delete in between would have its
// /tasks/delete overtake the exit (or the exit dropped at shutdown).
func (m *Manager) awaitExitRecorded(ctx context.Context, t *Task) {
	if filepath.Base(t.Runtime) != "containerd-shim-runc-v2" {
		return
	}
	exitFile := filepath.Join(t.Bundle.Path, "exit.json")
	if _, err := os.Stat(exitFile); err == nil {
		return
	}
	st, err := t.shim.Task().State(ctx, &task.StateRequest{ID: t.ID})
	if err != nil || st.Status != taskapi.Status_STOPPED {
		return
	}
	deadline := time.Now().Add(exitRecordWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if _, err := os.Stat(exitFile); err == nil {
			// The event follows the file within microseconds.
			time.Sleep(time.Millisecond)
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// lost handles a shim that dropped its connection without being asked to
// (it crashed or was killed): its binary cleans up, the bundle goes, and
// the exit and delete events the shim can no longer send are published.
func (m *Manager) lost(t *Task) {
	if ok, _ := m.take(t, false); !ok {
		return
	}
	ctx := m.taskCtx(t.Namespace, t.ID)
	logging.G(ctx).Warn("shim disconnected")
	go m.cleanupDead(ctx, t.Namespace, t.ID, t.Bundle, t.Runtime)
}

// cleanupDead cleans up after the shim of a task that is gone; ctx names the
// task in what it logs.
func (m *Manager) cleanupDead(ctx context.Context, ns, id string, b *Bundle, binary string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	exit := &task.DeleteResponse{ExitStatus: 255, ExitedAt: timestamppb.Now()}
	if binary != "" {
		if resp, err := runDelete(ctx, &m.cfg, b, binary); err != nil {
			logging.G(ctx).Warn("shim delete after disconnect", "error", err)
		} else {
			exit = resp
		}
	}
	// A shim that died never removed its socket, and its delete action
	// does not either (containerd leaves it too): nothing may stay behind.
	removeShimSocket(b)
	if err := b.Delete(); err != nil {
		logging.G(ctx).Error("remove bundle", "error", err)
	}
	m.publish(ctx, ns, "/tasks/exit", &eventstypes.TaskExit{
		ContainerID: id, ID: id, Pid: exit.Pid, ExitStatus: exit.ExitStatus, ExitedAt: exit.ExitedAt,
	})
	m.publish(ctx, ns, "/tasks/delete", &eventstypes.TaskDelete{
		ContainerID: id, Pid: exit.Pid, ExitStatus: exit.ExitStatus, ExitedAt: exit.ExitedAt,
	})
}

// Load reconnects to the shims of the bundles in the state directory, after
// a restart of the tasks service or of the whole daemon. Shims that are gone
// are cleaned up (and their exits published); shims that never got their
// task are shut down; work directories without a bundle are removed.
func (m *Manager) Load(ctx context.Context) error {
	nsDirs, err := os.ReadDir(m.cfg.State)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, nsd := range nsDirs {
		ns := nsd.Name()
		if !nsd.IsDir() || ns == "s" {
			continue
		}
		if strings.HasPrefix(ns, ".") {
			continue
		}
		ids, err := os.ReadDir(filepath.Join(m.cfg.State, ns))
		if err != nil {
			logging.G(ctx).Error("read bundles", "namespace", ns, "error", err)
			continue
		}
		var wg sync.WaitGroup
		for _, d := range ids {
			id := d.Name()
			if strings.HasPrefix(id, ".") {
				// A removal that a crash interrupted.
				_ = os.RemoveAll(filepath.Join(m.cfg.State, ns, id))
				continue
			}
			if !d.IsDir() {
				continue
			}
			b, err := LoadBundle(m.cfg.Root, m.cfg.State, ns, id)
			if err != nil {
				logging.G(ctx).Error("bundle with a bad name", "namespace", ns, "id", id, "error", err)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.loadTask(ctx, b)
			}()
		}
		wg.Wait()
	}
	m.cleanupWorkDirs()
	return nil
}

func (m *Manager) loadTask(ctx context.Context, b *Bundle) {
	ctx = logging.With(ctx, "task", b.ID, "namespace", b.Namespace)
	logger := logging.G(ctx)
	binary, _ := readBinaryPath(b)
	if _, err := os.Stat(filepath.Join(b.Path, bootstrapFile)); err != nil {
		// The tasks process died while creating this task; nobody was
		// told it exists.
		logger.Info("removing bundle of a task that was never created")
		stopOrphanShim(&m.cfg, b)
		if binary != "" {
			if _, err := runDelete(ctx, &m.cfg, b, binary); err != nil {
				logger.Warn("shim delete", "error", err)
			}
		}
		if err := b.Delete(); err != nil {
			logger.Error("remove bundle", "error", err)
		}
		return
	}
	if err := m.reserve(ctx, b.Namespace, b.ID); err != nil {
		return
	}
	t := &Task{ID: b.ID, Namespace: b.Namespace, Bundle: b, Runtime: binary}
	s, err := load(m.taskCtx(b.Namespace, b.ID), &m.cfg, b, func() { m.lost(t) })
	if err != nil {
		m.release(b.Namespace, b.ID, nil)
		logger.Warn("shim is gone, cleaning up", "error", err)
		m.cleanupDead(ctx, b.Namespace, b.ID, b, binary)
		return
	}
	t.shim = s
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = s.Task().State(lctx, &task.StateRequest{ID: b.ID})
	switch {
	case err == nil:
		m.release(b.Namespace, b.ID, t)
		logger.Info("reconnected to shim", "address", s.Address())
	case errdefs.IsNotFound(err):
		// The shim started but its task was never created.
		m.release(b.Namespace, b.ID, nil)
		logger.Info("shutting down shim without a task")
		if err := s.Shutdown(lctx); err != nil {
			logger.Warn("shut down shim", "error", err)
		}
		// The shim's delete action removes what runc may have made
		// for a create it never finished.
		if binary != "" {
			dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := runDelete(dctx, &m.cfg, b, binary); err != nil {
				logger.Warn("shim delete", "error", err)
			}
			dcancel()
		}
		removeShimSocket(b)
		if err := b.Delete(); err != nil {
			logger.Error("remove bundle", "error", err)
		}
	default:
		// Keep it: a slow shim is still the owner of a running container.
		m.release(b.Namespace, b.ID, t)
		logger.Warn("shim did not answer its state, keeping it", "error", err)
	}
}

// cleanupWorkDirs removes work directories whose bundle is gone (a reboot
// cleared the state directory, or a crash came between the two removals).
func (m *Manager) cleanupWorkDirs() {
	nsDirs, err := os.ReadDir(m.cfg.Root)
	if err != nil {
		return
	}
	for _, nsd := range nsDirs {
		if !nsd.IsDir() {
			continue
		}
		ids, err := os.ReadDir(filepath.Join(m.cfg.Root, nsd.Name()))
		if err != nil {
			continue
		}
		for _, d := range ids {
			if _, err := os.Lstat(filepath.Join(m.cfg.State, nsd.Name(), d.Name())); errors.Is(err, os.ErrNotExist) {
				_ = os.RemoveAll(filepath.Join(m.cfg.Root, nsd.Name(), d.Name()))
			}
		}
	}
}

// Close drops every shim connection; the shims and their containers keep
// running, for the next tasks process to reconnect to. Deletions under way
// are given a moment to finish (Load completes any that did not).
func (m *Manager) Close() {
	done := make(chan struct{})
	go func() { m.cleanups.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, byID := range m.tasks {
		for _, t := range byID {
			if t != nil && t.shim != nil {
				t.shim.Close()
			}
		}
	}
}
