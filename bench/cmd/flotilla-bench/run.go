package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// runImageName is the busybox image the container workloads run from.
const runImageName = "docker.io/flotilla/bench:run"

// runImage returns the busybox image on d, importing it and unpacking it
// into overlayfs the first time any container workload asks. It stays for
// the daemon's lifetime: every container workload (and the idle memory
// figure, "after import") shares it, and the daemon's directory goes at the
// end anyway.
func (d *daemon) runImage(ctx context.Context, img *testimage.Image) (client.Image, error) {
	d.runImgMu.Lock()
	defer d.runImgMu.Unlock()
	if d.runImg != nil {
		return d.runImg, nil
	}
	i, err := importUnpack(ctx, d, img)
	if err != nil {
		return nil, err
	}
	d.runImg = i
	return i, nil
}

// importUnpack imports img into d and unpacks it into overlayfs.
func importUnpack(ctx context.Context, d *daemon, img *testimage.Image) (client.Image, error) {
	archive, err := img.ArchiveBytes()
	if err != nil {
		return nil, err
	}
	imgs, err := d.client.Import(ctx, bytes.NewReader(archive), client.WithAllPlatforms(true))
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", img.Name, err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import created %d images, want 1", len(imgs))
	}
	i := client.NewImage(d.client, imgs[0])
	if err := i.Unpack(ctx, benchSnapshotter); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", img.Name, err)
	}
	return i, nil
}

// container is one container started on a daemon the way `ctr run` does
// it: a new overlayfs snapshot of the image, a spec from the image config,
// a task with no stdio.
type container struct {
	c      client.Container
	t      client.Task
	exitCh <-chan client.ExitStatus
}

// startContainer creates container id running args and starts its task.
// On failure it removes whatever it created.
func startContainer(ctx context.Context, d *daemon, img client.Image, id string, args ...string) (_ *container, err error) {
	c, err := d.client.NewContainer(ctx, id,
		client.WithSnapshotter(benchSnapshotter),
		client.WithNewSnapshot(id, img),
		client.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)))
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	ct := &container{c: c}
	defer func() {
		if err != nil {
			ct.remove(context.WithoutCancel(ctx), true)
		}
	}()
	if ct.t, err = c.NewTask(ctx, cio.NullIO); err != nil {
		return nil, fmt.Errorf("create task %s: %w", id, err)
	}
	// Wait before Start, as the client requires, so that an exit as quick
	// as `true`'s is not missed.
	if ct.exitCh, err = ct.t.Wait(ctx); err != nil {
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	if err := ct.t.Start(ctx); err != nil {
		return nil, fmt.Errorf("start task %s: %w", id, err)
	}
	return ct, nil
}

// wait returns the exit code of the task.
func (ct *container) wait(ctx context.Context) (uint32, error) {
	select {
	case st := <-ct.exitCh:
		code, _, err := st.Result()
		return code, err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// remove deletes the task (killing it first if kill is set) and the
// container with its snapshot.
func (ct *container) remove(ctx context.Context, kill bool) error {
	var errs []error
	if ct.t != nil {
		if kill {
			if err := ct.t.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("kill task %s: %w", ct.c.ID(), err))
			}
			if ct.exitCh != nil {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, _ = ct.wait(wctx)
				cancel()
			}
		}
		if _, err := ct.t.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete task %s: %w", ct.c.ID(), err))
		}
	}
	if err := ct.c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete container %s: %w", ct.c.ID(), err))
	}
	return errors.Join(errs...)
}

// runOnce is `ctr run --rm <image> id true`: create, start, wait, delete.
func runOnce(ctx context.Context, d *daemon, img client.Image, id string) error {
	return runExpect(ctx, d, img, id, 0, "true")
}

// runExpect runs args in container id and wants exit code want.
func runExpect(ctx context.Context, d *daemon, img client.Image, id string, want uint32, args ...string) error {
	ct, err := startContainer(ctx, d, img, id, args...)
	if err != nil {
		return err
	}
	code, err := ct.wait(ctx)
	if err != nil {
		_ = ct.remove(context.WithoutCancel(ctx), true)
		return fmt.Errorf("wait %s: %w", id, err)
	}
	if _, err := ct.t.Delete(ctx); err != nil {
		_ = ct.remove(context.WithoutCancel(ctx), true)
		return fmt.Errorf("delete task %s: %w", id, err)
	}
	if err := ct.c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	if code != want {
		return fmt.Errorf("container %s: %q exited with %d, want %d", id, args, code, want)
	}
	return nil
}

// runBench times runOnce, one container after another (runs per
// iteration), or parallel containers at once, timing the whole batch.
type runBench struct {
	d        *daemon
	img      client.Image
	runs     int
	parallel int
}

func newRunBench(ctx context.Context, d *daemon, img *testimage.Image, runs, parallel int) (*runBench, error) {
	i, err := d.runImage(ctx, img)
	if err != nil {
		return nil, err
	}
	return &runBench{d: d, img: i, runs: runs, parallel: parallel}, nil
}

func (b *runBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	if iter == warmupIter {
		// Exit code 0 is what a daemon that ran nothing might answer too:
		// once per daemon, a container must bring back a code only its
		// process can have produced.
		if err := runExpect(ctx, b.d, b.img, "bench-run-check", 7, "sh", "-c", "exit 7"); err != nil {
			return nil, fmt.Errorf("check run: %w", err)
		}
	}
	if b.parallel > 0 {
		d, err := inParallel(b.parallel, func(i int) error {
			return runOnce(ctx, b.d, b.img, fmt.Sprintf("bench-run20-%d-%d", iter, i))
		})
		if err != nil {
			return nil, err
		}
		return []time.Duration{d}, nil
	}
	out := make([]time.Duration, 0, b.runs)
	for i := range b.runs {
		start := time.Now()
		if err := runOnce(ctx, b.d, b.img, fmt.Sprintf("bench-run-%d-%d", iter, i)); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

func (b *runBench) cleanup(context.Context) error { return nil }

// inParallel runs f(0..n-1) at once, released together, and returns the
// wall time from release until the last one finished.
func inParallel(n int, f func(i int) error) (time.Duration, error) {
	var wg sync.WaitGroup
	errs := make([]error, n)
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			errs[i] = f(i)
		}()
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}
