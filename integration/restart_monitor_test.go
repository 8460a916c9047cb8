package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/runtime/restart"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// restartInterval is the restart monitor's check interval in these tests
// (containerd's default is 10 s).
const restartInterval = 500 * time.Millisecond

// withRestartInterval configures the restart monitor to check often.
func withRestartInterval(extra string) daemonOption {
	return withConfig(fmt.Sprintf("%s\n[services.restart.options]\ninterval = %q\n", extra, restartInterval))
}

// restartable makes a container of busybox running args, with the restart
// policy (and any other labels) given, and deletes it (and its task) when
// the test ends.
func restartable(ctx context.Context, t *testing.T, c *containerd.Client, id, policy string, args ...string) containerd.Container {
	t.Helper()
	image, err := c.GetImage(ctx, busyboxRef)
	if err != nil {
		t.Fatal(err)
	}
	p, err := restart.NewPolicy(policy)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := c.NewContainer(ctx, id,
		restart.WithPolicy(p),
		containerd.WithNewSnapshot(id, image),
		containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs(args...)))
	if err != nil {
		t.Fatalf("NewContainer %s: %v", id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 30*time.Second)
		defer cancel()
		// No more restarts, then the task and the container go.
		_ = ctr.Update(ctx, containerd.UpdateContainerOpts(restart.WithNoRestarts))
		if task, err := ctr.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
		// A daemon the test stopped took its containers with it.
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsUnavailable(err) {
			t.Logf("cleanup: delete container %s: %v", id, err)
		}
	})
	return ctr
}

func setRestartLabels(ctx context.Context, t *testing.T, ctr containerd.Container, labels map[string]string) {
	t.Helper()
	if err := ctr.Update(ctx, containerd.UpdateContainerOpts(containerd.WithAdditionalContainerLabels(labels))); err != nil {
		t.Fatalf("label container %s: %v", ctr.ID(), err)
	}
}

// taskStatus is the status of the container's task; "" when it has none.
func taskStatus(ctx context.Context, t *testing.T, ctr containerd.Container) (containerd.ProcessStatus, uint32) {
	t.Helper()
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return "", 0
	}
	if err != nil {
		t.Fatalf("task of %s: %v", ctr.ID(), err)
	}
	st, err := task.Status(ctx)
	if errdefs.IsNotFound(err) {
		return "", 0
	}
	if err != nil {
		t.Fatalf("status of %s: %v", ctr.ID(), err)
	}
	return st.Status, task.Pid()
}

// TestContainerLabelledToRunIsRestartedWhenItsTaskExits drives containerd's
// Go client as containerd's TestContainerRestartPolicyAlways does: a
// container with policy "always" labelled containerd.io/restart.status=running
// gets a new running task after its task is killed, and none once it is
// labelled containerd.io/restart.explicitly-stopped. Its restarts are
// counted in containerd.io/restart.count, and its output goes where
// containerd.io/restart.loguri says.
func TestContainerLabelledToRunIsRestartedWhenItsTaskExits(t *testing.T) {
	d := startTasksDaemon(t, withRestartInterval(""))
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 2*time.Minute)
	defer cancel()

	logFile := filepath.Join(t.TempDir(), "always.log")
	ctr := restartable(ctx, t, c, "always", "always", "sh", "-c", "echo started; exec sleep 1d")
	setRestartLabels(ctx, t, ctr, map[string]string{restart.LogURILabel: "file://" + logFile})
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	firstPid := task.Pid()
	setRestartLabels(ctx, t, ctr, map[string]string{restart.StatusLabel: string(containerd.Running)})
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited

	waitFor(t, 20*restartInterval+10*time.Second, "the restart monitor to run the killed container again", func() bool {
		st, pid := taskStatus(ctx, t, ctr)
		return st == containerd.Running && pid != firstPid
	})
	labels, err := ctr.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(labels[restart.CountLabel]); n < 1 {
		t.Errorf("restart count label = %q after a restart, want at least 1", labels[restart.CountLabel])
	}
	waitFor(t, 10*time.Second, "the restarted task's output in its log file", func() bool {
		b, _ := os.ReadFile(logFile)
		return strings.Contains(string(b), "started")
	})

	// Explicitly stopped: killed, it stays stopped.
	setRestartLabels(ctx, t, ctr, map[string]string{restart.ExplicitlyStoppedLabel: "true"})
	task, err = ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	exited, err = task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	time.Sleep(6 * restartInterval)
	if st, _ := taskStatus(ctx, t, ctr); st != containerd.Stopped {
		t.Errorf("an explicitly stopped container's task is %q after %s, want it left stopped", st, 6*restartInterval)
	}
}

// on-failure restarts a task that failed, at most the times it says; a
// container labelled to be stopped has its task killed.
func TestRestartPolicyOnFailureAndDesiredStopped(t *testing.T) {
	d := startTasksDaemon(t, withRestartInterval(""))
	c := d.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 2*time.Minute)
	defer cancel()

	failing := restartable(ctx, t, c, "failing", "on-failure:2", "sh", "-c", "exit 3")
	succeeding := restartable(ctx, t, c, "succeeding", "on-failure", "true")
	for _, ctr := range []containerd.Container{failing, succeeding} {
		task, err := ctr.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		exited, err := task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		<-exited
		setRestartLabels(ctx, t, ctr, map[string]string{restart.StatusLabel: string(containerd.Running)})
	}
	count := func(ctr containerd.Container) int {
		labels, err := ctr.Labels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(labels[restart.CountLabel])
		return n
	}
	waitFor(t, 20*restartInterval+10*time.Second, "the failing container to be restarted twice", func() bool {
		return count(failing) == 2
	})
	time.Sleep(6 * restartInterval)
	if n := count(failing); n != 2 {
		t.Errorf("on-failure:2 restarted the failing container %d times, want 2", n)
	}
	if n := count(succeeding); n != 0 {
		t.Errorf("on-failure restarted a container that exited 0 (%d times)", n)
	}

	stopping := restartable(ctx, t, c, "stopping", "always", "sleep", "1d")
	task, err := stopping.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	setRestartLabels(ctx, t, stopping, map[string]string{restart.StatusLabel: string(containerd.Stopped)})
	waitFor(t, 20*restartInterval+10*time.Second, "the restart monitor to stop the container labelled stopped", func() bool {
		st, _ := taskStatus(ctx, t, stopping)
		return st == ""
	})
}

// As containerd's: a daemon start runs again a container of policy
// "always" that was explicitly stopped, not one of "unless-stopped".
func TestDaemonStartRunsAgainAlwaysContainersButNotUnlessStopped(t *testing.T) {
	first := startTasksDaemon(t, withRestartInterval(""))
	c := first.client()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 2*time.Minute)
	defer cancel()
	stopped := map[string]containerd.Container{}
	for _, policy := range []string{"always", "unless-stopped"} {
		ctr := restartable(ctx, t, c, policy, policy, "sleep", "1d")
		setRestartLabels(ctx, t, ctr, map[string]string{
			restart.StatusLabel:            string(containerd.Running),
			restart.ExplicitlyStoppedLabel: "true",
		})
		stopped[policy] = ctr
	}
	time.Sleep(4 * restartInterval)
	for policy, ctr := range stopped {
		if st, _ := taskStatus(ctx, t, ctr); st != "" {
			t.Fatalf("the explicitly stopped %s container has a task (%s) before the daemon restarts", policy, st)
		}
	}

	first.stop()
	second := newDaemon(t, sameDirsAs(first), withRestartInterval("")).start()
	c = second.client()
	always, err := c.LoadContainer(ctx, "always")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*restartInterval+10*time.Second, "the new daemon's restart monitor to run the always container", func() bool {
		st, _ := taskStatus(ctx, t, always)
		return st == containerd.Running
	})
	labels, err := always.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if labels[restart.ExplicitlyStoppedLabel] != "false" {
		t.Errorf("the always container's explicitly-stopped label is %q after the daemon started, want false", labels[restart.ExplicitlyStoppedLabel])
	}
	unless, err := c.LoadContainer(ctx, "unless-stopped")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * restartInterval)
	if st, _ := taskStatus(ctx, t, unless); st != "" {
		t.Errorf("the explicitly stopped unless-stopped container runs (%s) after the daemon restarted", st)
	}
	// The tasks of the second daemon are the ones its cleanup removes.
	t.Cleanup(func() {
		ctx := namespaces.WithNamespace(context.Background(), "default")
		if task, err := always.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
	})
}
