// Package monitor keeps containers in the status their restart labels ask
// for, as containerd's restart monitor plugin (io.containerd.monitor.container.v1
// restart) does. It is a client of the daemon: every interval it lists, in
// each namespace, the containers labelled containerd.io/restart.status and
// compares each one's task with that status.
//
//   - containerd.io/restart.status=running: a task that is not running
//     (exited, or gone) is deleted and a new one started, with its IO sent
//     to containerd.io/restart.loguri if set (binary://, file://), unless the
//     policy (containerd.io/restart.policy) says otherwise: "always" and
//     "unless-stopped" restart it, "on-failure[:N]" only after a non-zero
//     exit (and at most N times, counted in containerd.io/restart.count),
//     "no" never; a container labelled
//     containerd.io/restart.explicitly-stopped=true is left stopped.
//     A paused task is left as it is.
//   - containerd.io/restart.status=stopped: a task that runs is killed and
//     deleted.
//
// As in containerd, "always" differs from "unless-stopped" when the daemon
// starts: the explicitly-stopped label of an "always" container is cleared
// then, so it runs again. Flotilla's monitor is a process of its own that
// may restart without the daemon doing so, and may outlive a daemon that
// reattaches to it; it clears the label when the daemon it serves
// (flotillad's pid) is a new one.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/runtime/restart"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// DefaultInterval is containerd's: how often the containers are checked.
const DefaultInterval = 10 * time.Second

// Policies are the restart policies the monitor knows, as containerd's
// plugin lists them in its capabilities.
var Policies = []string{"no", "always", "on-failure", "unless-stopped"}

// Monitor reconciles the tasks of containers with their restart labels.
type Monitor struct {
	client   *containerd.Client
	interval time.Duration
	// state holds the daemon (server UUID and pid) the monitor last ran
	// under, across restarts of this process; daemon is it in memory.
	state  string
	daemon string
}

// New returns a monitor that checks through client every interval (0 is
// DefaultInterval), keeping what it must remember under state.
func New(client *containerd.Client, interval time.Duration, state string) *Monitor {
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Monitor{client: client, interval: interval, state: state}
}

// Run reconciles every interval until ctx ends, starting once the daemon
// answers.
func (m *Monitor) Run(ctx context.Context) {
	logger := logging.G(ctx)
	for {
		// The records it reconciles are metadata's: it starts once
		// metadata answers.
		_, err := m.client.NamespaceService().List(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		logger.Debug("restart monitor waits for the daemon", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		// Asked each time: flotillad may restart (an upgrade) and reattach
		// to this process, which then sees a new daemon.
		if err := m.daemonStarted(ctx); err != nil && ctx.Err() == nil {
			logger.Warn("restart monitor: clearing explicitly-stopped labels of containers with policy always", "error", err)
		}
		if err := m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			logger.Error("restart monitor: reconcile", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// daemonStarted clears containerd.io/restart.explicitly-stopped on
// containers whose policy is "always" when the daemon is not the one the
// monitor last ran under: a daemon start restarts them, as containerd's does.
func (m *Monitor) daemonStarted(ctx context.Context) error {
	resp, err := m.client.IntrospectionService().Server(ctx)
	if err != nil {
		return fmt.Errorf("which daemon: %w", err)
	}
	daemon := fmt.Sprintf("%s %d", resp.UUID, resp.Pid)
	if daemon == m.daemon {
		return nil
	}
	marker := filepath.Join(m.state, "daemon")
	if m.state != "" {
		if b, err := os.ReadFile(marker); err == nil && string(b) == daemon {
			m.daemon = daemon
			return nil
		}
	}
	err = m.eachNamespace(ctx, func(ctx context.Context) error {
		cs, err := m.client.Containers(ctx, fmt.Sprintf("labels.%q", restart.StatusLabel))
		if err != nil {
			return err
		}
		var errs []error
		for _, c := range cs {
			labels, err := c.Labels(ctx)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if policyName(labels) != "always" || !explicitlyStopped(labels) {
				continue
			}
			if err := setLabels(ctx, c, map[string]string{restart.ExplicitlyStoppedLabel: "false"}); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return err
	}
	if m.state != "" {
		if err := os.MkdirAll(m.state, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(marker, []byte(daemon), 0o600); err != nil {
			return err
		}
	}
	m.daemon = daemon
	return nil
}

// Reconcile brings every labelled container to its desired status once:
// namespaces in parallel, and the containers of one in parallel.
func (m *Monitor) Reconcile(ctx context.Context) error {
	return m.eachNamespace(ctx, func(ctx context.Context) error {
		changes, err := m.changes(ctx)
		if err != nil {
			return err
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for _, c := range changes {
			wg.Go(func() {
				if err := c.apply(ctx); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("container %s: %w", c.container.ID(), err))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	})
}

func (m *Monitor) eachNamespace(ctx context.Context, fn func(context.Context) error) error {
	nss, err := m.client.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, ns := range nss {
		wg.Go(func() {
			nctx := logging.With(namespaces.WithNamespace(ctx, ns), "namespace", ns)
			if err := fn(nctx); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// change is what one container needs: a new task, or its task stopped.
type change struct {
	container containerd.Container
	start     bool
	logURI    string
	count     int
}

// changes compares each labelled container of ctx's namespace with its task.
func (m *Monitor) changes(ctx context.Context) ([]change, error) {
	cs, err := m.client.Containers(ctx, fmt.Sprintf("labels.%q", restart.StatusLabel))
	if err != nil {
		return nil, err
	}
	logger := logging.G(ctx)
	var out []change
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if err != nil {
			if errdefs.IsNotFound(err) {
				continue // removed since the listing
			}
			return nil, err
		}
		desired := containerd.ProcessStatus(labels[restart.StatusLabel])
		var status containerd.Status
		task, err := c.Task(ctx, nil)
		if err == nil {
			status, err = task.Status(ctx)
		}
		if err == nil && status.Status == desired {
			continue
		}
		if err != nil && !errdefs.IsNotFound(err) {
			logger.Warn("restart monitor: task status", "container", c.ID(), "error", err)
		}
		switch desired {
		case containerd.Running:
			if err != nil && !errdefs.IsNotFound(err) {
				continue // unknown: try again next time
			}
			if status.Status == containerd.Paused || status.Status == containerd.Pausing {
				continue
			}
			if !shouldRestart(ctx, status, labels) {
				continue
			}
			count, _ := strconv.Atoi(labels[restart.CountLabel])
			out = append(out, change{container: c, start: true, logURI: labels[restart.LogURILabel], count: count + 1})
		case containerd.Stopped:
			if err != nil {
				continue // no task: stopped already
			}
			out = append(out, change{container: c})
		}
	}
	return out, nil
}

// shouldRestart applies the container's restart policy to its task's exit,
// as containerd's restart.Reconcile.
func shouldRestart(ctx context.Context, status containerd.Status, labels map[string]string) bool {
	if explicitlyStopped(labels) {
		return false
	}
	p, err := restart.NewPolicy(labels[restart.PolicyLabel])
	if err != nil {
		logging.G(ctx).Warn("restart monitor: container's restart policy", "policy", labels[restart.PolicyLabel], "error", err)
		return false
	}
	switch p.Name() {
	case "always", "unless-stopped":
		return true
	case "on-failure":
		count, err := strconv.Atoi(labels[restart.CountLabel])
		if err != nil && labels[restart.CountLabel] != "" {
			logging.G(ctx).Warn("restart monitor: container's restart count", "count", labels[restart.CountLabel], "error", err)
			return false
		}
		return status.ExitStatus != 0 && (p.MaximumRetryCount() == 0 || count < p.MaximumRetryCount())
	}
	return false
}

func policyName(labels map[string]string) string {
	p, err := restart.NewPolicy(labels[restart.PolicyLabel])
	if err != nil {
		return ""
	}
	return p.Name()
}

func explicitlyStopped(labels map[string]string) bool {
	v, _ := strconv.ParseBool(labels[restart.ExplicitlyStoppedLabel])
	return v
}

func (c change) apply(ctx context.Context) error {
	if !c.start {
		return stopTask(ctx, c.container)
	}
	io := cio.NullIO
	if c.logURI != "" {
		spec, err := c.container.Spec(ctx)
		if err != nil {
			return err
		}
		uri, err := url.Parse(c.logURI)
		if err != nil {
			return fmt.Errorf("log uri %q: %w", c.logURI, err)
		}
		if spec.Process != nil && spec.Process.Terminal {
			io = cio.TerminalLogURI(uri)
		} else {
			io = cio.LogURI(uri)
		}
	}
	if c.count > 0 {
		if err := setLabels(ctx, c.container, map[string]string{restart.CountLabel: strconv.Itoa(c.count)}); err != nil {
			return err
		}
	}
	if err := stopTask(ctx, c.container); err != nil {
		logging.G(ctx).Warn("restart monitor: removing the old task", "container", c.container.ID(), "error", err)
	}
	task, err := c.container.NewTask(ctx, io)
	if err != nil {
		return fmt.Errorf("new task: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		if _, derr := task.Delete(ctx, containerd.WithProcessKill); derr != nil {
			logging.G(ctx).Warn("restart monitor: removing a task that did not start", "container", c.container.ID(), "error", derr)
		}
		return fmt.Errorf("start task: %w", err)
	}
	logging.G(ctx).Info("restart monitor restarted a container", "container", c.container.ID(), "restarts", c.count)
	return nil
}

// stopTask kills a container's task, if it has one, and deletes it.
func stopTask(ctx context.Context, c containerd.Container) error {
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		if _, derr := task.Delete(ctx); derr == nil {
			return nil
		}
		return err
	}
	if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		if _, derr := task.Delete(ctx); derr == nil {
			return nil
		}
		return err
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

func setLabels(ctx context.Context, c containerd.Container, labels map[string]string) error {
	err := c.Update(ctx, containerd.UpdateContainerOpts(containerd.WithAdditionalContainerLabels(labels)))
	if err != nil {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		return fmt.Errorf("label %s: %w", strings.Join(keys, ","), err)
	}
	return nil
}
