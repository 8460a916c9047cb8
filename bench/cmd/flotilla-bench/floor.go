package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// floorName is the pseudo-daemon the floor's samples are recorded under.
const floorName = "runc"

// runcFloor runs `runc run` directly on prepared bundles: what starting a
// container costs with no daemon, no shim and no snapshotter at all, the
// floor under both daemons' run figures. The rootfs is the busybox layer
// extracted once; each parallel slot has its own bundle (its config.json
// names its own cgroup, as each daemon container's does) pointing at it.
type runcFloor struct {
	runc     string
	dir      string
	runcRoot string
	bundles  []string
	runs     int
	parallel int
}

// newRuncFloor prepares max(1, parallel) bundles from img. The spec is the
// one the daemons' containers get, built by the same code: containerd's
// default spec (namespace benchNamespace), the image config's environment
// and working directory, args `true`.
func newRuncFloor(ctx context.Context, runc string, img *testimage.Image, runs, parallel int) (_ *runcFloor, err error) {
	path, err := exec.LookPath(runc)
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	dir, err := os.MkdirTemp("", "fb-runc-")
	if err != nil {
		return nil, err
	}
	f := &runcFloor{runc: path, dir: dir, runcRoot: filepath.Join(dir, "state"), runs: runs, parallel: parallel}
	defer func() {
		if err != nil {
			_ = f.cleanup(context.WithoutCancel(ctx))
		}
	}()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, err
	}
	for _, l := range img.Layers {
		blob, ok := img.Blob(l.Digest)
		if !ok {
			return nil, fmt.Errorf("image lacks layer %s", l.Digest)
		}
		r, err := compression.DecompressStream(bytes.NewReader(blob))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		_, err = archive.Apply(ctx, rootfs, r)
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("extract layer %s: %w", l.Digest, err)
		}
	}
	cfgBlob, ok := img.Blob(img.Config.Digest)
	if !ok {
		return nil, fmt.Errorf("image lacks its config %s", img.Config.Digest)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	nsCtx := namespaces.WithNamespace(ctx, benchNamespace)
	for i := range max(1, parallel) {
		id := fmt.Sprintf("bench-floor-%d", i)
		spec, err := oci.GenerateSpec(nsCtx, nil, &containers.Container{ID: id},
			oci.WithEnv(cfg.Config.Env), oci.WithProcessCwd(orDefault(cfg.Config.WorkingDir, "/")),
			oci.WithProcessArgs("true"), oci.WithRootFSPath(rootfs))
		if err != nil {
			return nil, fmt.Errorf("generate spec: %w", err)
		}
		b, err := json.Marshal(spec)
		if err != nil {
			return nil, err
		}
		bundle := filepath.Join(dir, id)
		if err := os.Mkdir(bundle, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
			return nil, err
		}
		f.bundles = append(f.bundles, bundle)
	}
	return f, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runOnce is `runc run` of bundle slot as container id, in the foreground:
// runc creates, starts, waits for `true` and deletes the container.
func (f *runcFloor) runOnce(ctx context.Context, slot int, id string) error {
	cmd := exec.CommandContext(ctx, f.runc, "--root", f.runcRoot, "run", "--bundle", f.bundles[slot], id)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runc run %s: %w: %s", id, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (f *runcFloor) sample(ctx context.Context, iter int) ([]time.Duration, error) {
	if f.parallel > 0 {
		d, err := inParallel(f.parallel, func(i int) error {
			return f.runOnce(ctx, i, fmt.Sprintf("bench-floor-%d-%d", iter, i))
		})
		if err != nil {
			return nil, err
		}
		return []time.Duration{d}, nil
	}
	out := make([]time.Duration, 0, f.runs)
	for i := range f.runs {
		start := time.Now()
		if err := f.runOnce(ctx, 0, fmt.Sprintf("bench-floor-%d-%d", iter, i)); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

func (f *runcFloor) cleanup(context.Context) error {
	return os.RemoveAll(f.dir)
}
