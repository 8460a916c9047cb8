package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/testregistry"
)

// The pull workloads pull the realistic image (srcimage.go) from a
// registry on loopback, cold each time: through the Transfer API with
// containerd's own ctr (`ctr images pull --plain-http`, which goes through
// Transfer unless told --local), and through CRI PullImage. Each daemon
// runs with its defaults: containerd 2.4.2 unpacks in order (its parallel
// unpack, max_concurrent_unpacks, is off by default, and on this 2-core
// machine made it slower), Flotilla in parallel on overlayfs.

// pullEnv is the registry the Transfer pull workload pulls from, started
// and pushed to on first use.
type pullEnv struct {
	ctrBinary func(ctx context.Context) (string, error)
	tmp       string

	once sync.Once
	reg  *testregistry.Registry
	ref  string
	err  error
}

// srcRef is the reference of the realistic image in the pull registry.
func (e *pullEnv) srcRef(ctx context.Context, src *srcImage) (string, error) {
	e.once.Do(func() {
		dir, err := os.MkdirTemp(e.tmp, "fb-pull-")
		if err != nil {
			e.err = err
			return
		}
		if e.reg, e.err = testregistry.Start(ctx, testregistry.Options{Dir: dir}); e.err != nil {
			e.err = fmt.Errorf("the pull workload needs a local registry: %w", e.err)
			return
		}
		e.ref, e.err = e.reg.Push(src.img, nil, "flotilla/gosrc", "bench")
	})
	return e.ref, e.err
}

func (e *pullEnv) close() {
	if e.reg != nil {
		e.reg.Close()
	}
}

// srcRef pushes the realistic image to the cri workloads' registry on
// first use: the one both daemons' CRI is configured to pull from over
// plain HTTP.
func (e *criEnv) srcRef(src *srcImage) (string, error) {
	e.srcOnce.Do(func() {
		e.srcRefV, e.srcErr = e.reg.Push(src.img, nil, "flotilla/gosrc", "bench")
	})
	return e.srcRefV, e.srcErr
}

// srcPullBench times cold pulls of the realistic image into overlayfs.
type srcPullBench struct {
	d   *daemon
	src *srcImage
	ns  string
	// pull is the timed pull; remove deletes the image again, untimed.
	pull   func(ctx context.Context) error
	remove func(ctx context.Context) error
	// layers and chain are the image's layers above busybox and their
	// chain IDs: busybox's may be on the daemon already (other workloads
	// use it), as it is on most nodes; the rest must be gone before each
	// pull.
	layers []digest.Digest
	chain  []digest.Digest
}

func newSrcPullBench(src *srcImage, d *daemon, ns string) *srcPullBench {
	b := &srcPullBench{d: d, src: src, ns: ns}
	for _, l := range src.img.Layers[1:] {
		b.layers = append(b.layers, l.Digest)
	}
	b.chain = chainIDs(src.img)[1:]
	return b
}

// newTransferPullBench pulls with containerd 2.4.2's ctr through the
// Transfer API.
func newTransferPullBench(ctx context.Context, d *daemon, src *srcImage, e *pullEnv) (*srcPullBench, error) {
	ctr, err := e.ctrBinary(ctx)
	if err != nil {
		return nil, err
	}
	ref, err := e.srcRef(ctx, src)
	if err != nil {
		return nil, err
	}
	b := newSrcPullBench(src, d, benchNamespace)
	b.pull = func(ctx context.Context) error {
		cmd := exec.CommandContext(ctx, ctr, "--address", d.address, "--namespace", benchNamespace,
			"images", "pull", "--plain-http", ref)
		// Its progress, kept for an error's sake.
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr images pull %s: %v\n%s", ref, err, out)
		}
		return nil
	}
	b.remove = func(ctx context.Context) error {
		err := d.client.ImageService().Delete(ctx, ref, images.SynchronousDelete())
		if errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	return b, nil
}

// newCRIPullBench pulls with the kubelet's CRI client.
func newCRIPullBench(ctx context.Context, d *daemon, src *srcImage, e *criEnv) (*srcPullBench, error) {
	_, img, err := d.criClients(ctx)
	if err != nil {
		return nil, err
	}
	ref, err := e.srcRef(src)
	if err != nil {
		return nil, err
	}
	spec := &runtimeapi.ImageSpec{Image: ref}
	b := newSrcPullBench(src, d, "k8s.io")
	b.pull = func(ctx context.Context) error {
		got, err := img.PullImage(ctx, spec, nil, nil)
		if err != nil {
			return fmt.Errorf("PullImage %s: %w", ref, err)
		}
		if got == "" {
			return fmt.Errorf("PullImage %s returned no image reference", ref)
		}
		return nil
	}
	b.remove = func(ctx context.Context) error {
		st, err := img.ImageStatus(ctx, spec, false)
		if err != nil || st.GetImage() == nil {
			return err
		}
		return img.RemoveImage(ctx, spec)
	}
	return b, nil
}

func (b *srcPullBench) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	ctx = namespaces.WithNamespace(ctx, b.ns)
	if err := b.waitCold(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := b.pull(ctx); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	top := b.chain[len(b.chain)-1]
	if _, err := b.d.client.SnapshotService(benchSnapshotter).Stat(ctx, top.String()); err != nil {
		return nil, fmt.Errorf("pulled image has no top snapshot %s: %w", top, err)
	}
	if iter == warmupIter {
		ub := &unpackBench{d: b.d, img: b.src.img, verify: b.src.verify}
		if err := ub.verifyRootfs(ctx, top.String()); err != nil {
			return nil, err
		}
	}
	if err := b.remove(ctx); err != nil {
		return nil, fmt.Errorf("remove the pulled image: %w", err)
	}
	return []time.Duration{elapsed}, nil
}

// waitCold waits until the collector has taken the previous pull's layers
// and snapshots (a CRI RemoveImage leaves that to it), so that no pull is
// measured warm.
func (b *srcPullBench) waitCold(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	cs := b.d.client.ContentStore()
	sn := b.d.client.SnapshotService(benchSnapshotter)
	for {
		left := ""
		for _, l := range b.layers {
			if _, err := cs.Info(ctx, l); err == nil {
				left = "layer " + l.String()
				break
			} else if !errdefs.IsNotFound(err) {
				return fmt.Errorf("check layer %s: %w", l, err)
			}
		}
		for _, id := range b.chain {
			if left != "" {
				break
			}
			if _, err := sn.Stat(ctx, id.String()); err == nil {
				left = "snapshot " + id.String()
			} else if !errdefs.IsNotFound(err) {
				return fmt.Errorf("check snapshot %s: %w", id, err)
			}
		}
		if left == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still present %s after the image was removed: the pull would be measured warm", left, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (b *srcPullBench) cleanup(ctx context.Context) error {
	return b.remove(namespaces.WithNamespace(ctx, b.ns))
}
