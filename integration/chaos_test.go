package integration

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// The chaos test's namespaces: the generator's records, its containers, and
// the objects the recovery probes touch (kept out of the comparison).
const (
	chaosNS      = "chaos"
	chaosRunNS   = "chaos-run"
	chaosProbeNS = "chaos-probe"
)

// chaosDuration is how long the load runs: 20 s in the suite, or
// $FLOTILLA_CHAOS_DURATION.
func chaosDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv("FLOTILLA_CHAOS_DURATION")
	if v == "" {
		return 20 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("FLOTILLA_CHAOS_DURATION=%q: %v", v, err)
	}
	return d
}

// chaosStats counts what the generator did and how its calls failed.
type chaosStats struct {
	t          *testing.T
	mu         sync.Mutex
	ops        map[string]int
	failedBy   map[codes.Code]int
	allowedBy  map[codes.Code]int // answers the caller expects, e.g. NotFound in cleanups
	failedIdem map[string]int
	// idemFailures are the failed idempotent calls, one line each with the
	// op, the code and the message: each fails the test, since the daemon
	// may retry such a call across a restart and so should not fail it.
	idemFailures []string
	slowest      map[string]time.Duration
	problems     []string // unexpected errors and wrong data: each fails the test
}

func newChaosStats(t *testing.T) *chaosStats {
	return &chaosStats{t: t, ops: map[string]int{}, failedBy: map[codes.Code]int{}, allowedBy: map[codes.Code]int{}, failedIdem: map[string]int{}, slowest: map[string]time.Duration{}}
}

// chaosCode is the gRPC code an error stands for; Unknown when it carries
// none.
func chaosCode(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errdefs.IsUnavailable(err):
		return codes.Unavailable
	case errdefs.IsCanceled(err):
		return codes.Canceled
	case errdefs.IsDeadlineExceeded(err):
		return codes.DeadlineExceeded
	case errdefs.IsNotFound(err):
		return codes.NotFound
	case errdefs.IsAlreadyExists(err):
		return codes.AlreadyExists
	case errdefs.IsFailedPrecondition(err):
		return codes.FailedPrecondition
	case errdefs.IsInvalidArgument(err):
		return codes.InvalidArgument
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Unknown
}

// expectedUnderChaos reports whether a failure is one a killed service may
// cause: the call did not reach it, or its answer was lost.
func expectedUnderChaos(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.Canceled || c == codes.DeadlineExceeded
}

// record counts one call and returns whether it succeeded; on false the
// caller treats the outcome as uncertain. What fails the test: a failed
// idempotent call, whatever its code (a read, a listing: the gateway retries
// those across a restart, so the caller should see latency, not an error),
// and a failed non-idempotent call with a code chaos does not explain. The
// codes in allowed are answers the caller expects and fail nothing.
func (s *chaosStats) record(op string, idempotent bool, took time.Duration, err error, allowed ...codes.Code) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops[op]++
	if took > s.slowest[op] {
		s.slowest[op] = took
	}
	if err == nil {
		return true
	}
	c := chaosCode(err)
	if slices.Contains(allowed, c) {
		s.allowedBy[c]++
		return false
	}
	s.failedBy[c]++
	line := fmt.Sprintf("%s %s (after %s): code %s: %v", time.Now().Format("15:04:05.000"), op, took.Round(time.Millisecond), c, err)
	s.t.Logf("chaos: failed call %s", line)
	switch {
	case idempotent:
		s.failedIdem[op]++
		s.idemFailures = append(s.idemFailures, line)
	case !expectedUnderChaos(c):
		s.problems = append(s.problems, line)
	}
	return false
}

func (s *chaosStats) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.problems = append(s.problems, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
}

// call runs one operation with a deadline of its own and records it.
func (s *chaosStats) call(ctx context.Context, op string, idempotent bool, fn func(ctx context.Context) error, allowed ...codes.Code) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	return s.record(op, idempotent, time.Since(start), err, allowed...), err
}

// The generator's beliefs. Uncertain means a call failed with a chaos code,
// so it may or may not have taken effect.
type chaosBlob struct {
	desc      ocispec.Descriptor
	owner     string
	uncertain bool
}

type chaosImage struct {
	target    digest.Digest
	uncertain bool
}

type chaosSnap struct {
	kind      snapshots.Kind
	parent    string
	uncertain bool
}

type chaosModel struct {
	mu         sync.Mutex
	blobs      map[digest.Digest]*chaosBlob
	images     map[string]*chaosImage
	snaps      map[string]*chaosSnap
	containers map[string]bool // id -> uncertain
}

func newChaosModel() *chaosModel {
	return &chaosModel{blobs: map[digest.Digest]*chaosBlob{}, images: map[string]*chaosImage{}, snaps: map[string]*chaosSnap{}, containers: map[string]bool{}}
}

// pickBlob is a random blob of owner the generator knows committed.
func (m *chaosModel) pickBlob(r *rand.Rand, owner string) (ocispec.Descriptor, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ds []ocispec.Descriptor
	for _, b := range m.blobs {
		if b.owner == owner && !b.uncertain {
			ds = append(ds, b.desc)
		}
	}
	if len(ds) == 0 {
		return ocispec.Descriptor{}, false
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Digest < ds[j].Digest })
	return ds[r.IntN(len(ds))], true
}

func (m *chaosModel) setBlob(desc ocispec.Descriptor, owner string, uncertain bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blobs[desc.Digest] = &chaosBlob{desc: desc, owner: owner, uncertain: uncertain}
}

func (m *chaosModel) dropBlob(d digest.Digest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.blobs, d)
}

// randomBytes is random bytes from r, their number log-uniform between lo
// and hi, so that small blobs are as common as large ones.
func randomBytes(r *rand.Rand, lo, hi int) []byte {
	n := int(math.Exp(math.Log(float64(lo)) + r.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// chaosRun is one chaos test: the daemon, its client and what the
// generator saw.
type chaosRun struct {
	t      *testing.T
	d      *daemon
	c      *containerd.Client
	stats  *chaosStats
	model  *chaosModel
	leased context.Context // namespace chaos, in the generator's lease
	stop   chan struct{}
}

func (cr *chaosRun) stopped() bool {
	select {
	case <-cr.stop:
		return true
	default:
		return false
	}
}

// pause waits up to d, less when the load stops.
func (cr *chaosRun) pause(d time.Duration) {
	select {
	case <-cr.stop:
	case <-time.After(d):
	}
}

// writeBlob writes data under the generator's lease and records the blob.
func (cr *chaosRun) writeBlob(r *rand.Rand, owner, ref string, data []byte, mediaType string) (ocispec.Descriptor, bool) {
	cs := cr.c.ContentStore()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	ok, _ := cr.stats.call(cr.leased, "content.write", false, func(ctx context.Context) error {
		return content.WriteBlob(ctx, cs, ref, bytes.NewReader(data), desc)
	})
	cr.model.setBlob(desc, owner, !ok)
	if !ok {
		// A failed write may leave its ingest behind; the lease would
		// keep it.
		cr.stats.call(cr.leased, "content.abort", false, func(ctx context.Context) error {
			return cs.Abort(ctx, ref)
		}, codes.NotFound)
	}
	return desc, ok
}

// readBack reads a blob the generator believes committed and checks its
// digest.
func (cr *chaosRun) readBack(op string, desc ocispec.Descriptor) {
	cs := cr.c.ContentStore()
	var got []byte
	ok, _ := cr.stats.call(cr.leased, op, true, func(ctx context.Context) error {
		var err error
		got, err = content.ReadBlob(ctx, cs, desc)
		return err
	})
	if ok && (int64(len(got)) != desc.Size || digest.FromBytes(got) != desc.Digest) {
		cr.stats.problem("%s %s: read %d bytes of digest %s, want %d bytes", op, desc.Digest, len(got), digest.FromBytes(got), desc.Size)
	}
}

// contentWorker writes random blobs, reads them back, reads older ones and
// deletes some.
func (cr *chaosRun) contentWorker(w int) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
	owner := fmt.Sprintf("content-%d", w)
	cs := cr.c.ContentStore()
	for i := 0; !cr.stopped(); i++ {
		data := randomBytes(r, 1<<10, 4<<20)
		desc, ok := cr.writeBlob(r, owner, fmt.Sprintf("chaos-%d-%d", w, i), data, "application/octet-stream")
		if ok {
			cr.readBack("content.read", desc)
			var info content.Info
			if ok, _ := cr.stats.call(cr.leased, "content.info", true, func(ctx context.Context) error {
				var err error
				info, err = cs.Info(ctx, desc.Digest)
				return err
			}); ok && info.Size != desc.Size {
				cr.stats.problem("content.info %s: size %d, want %d", desc.Digest, info.Size, desc.Size)
			}
		}
		if old, ok := cr.model.pickBlob(r, owner); ok {
			cr.readBack("content.read", old)
		}
		if r.IntN(3) == 0 {
			if victim, ok := cr.model.pickBlob(r, owner); ok {
				ok, _ := cr.stats.call(cr.leased, "content.delete", false, func(ctx context.Context) error {
					return cs.Delete(ctx, victim.Digest)
				})
				if ok {
					cr.model.dropBlob(victim.Digest)
				} else {
					cr.model.setBlob(victim, owner, true)
				}
			}
		}
	}
}

// imageWorker creates image records pointing at blobs it wrote, reads and
// lists them, and deletes some.
func (cr *chaosRun) imageWorker() {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 99))
	is := cr.c.ImageService()
	for i := 0; !cr.stopped(); i++ {
		desc, ok := cr.writeBlob(r, "images", fmt.Sprintf("chaos-img-%d", i), randomBytes(r, 1<<10, 64<<10), "application/vnd.flotilla.chaos.v1")
		if !ok {
			continue
		}
		name := fmt.Sprintf("chaos.test/img:%d", i)
		ok, _ = cr.stats.call(cr.leased, "images.create", false, func(ctx context.Context) error {
			_, err := is.Create(ctx, images.Image{Name: name, Target: desc})
			return err
		})
		cr.model.mu.Lock()
		cr.model.images[name] = &chaosImage{target: desc.Digest, uncertain: !ok}
		cr.model.mu.Unlock()
		if ok {
			var img images.Image
			if ok, _ := cr.stats.call(cr.leased, "images.get", true, func(ctx context.Context) error {
				var err error
				img, err = is.Get(ctx, name)
				return err
			}); ok && img.Target.Digest != desc.Digest {
				cr.stats.problem("images.get %s: target %s, want %s", name, img.Target.Digest, desc.Digest)
			}
		}
		if i%5 == 4 {
			var list []images.Image
			if ok, _ := cr.stats.call(cr.leased, "images.list", true, func(ctx context.Context) error {
				var err error
				list, err = is.List(ctx)
				return err
			}); ok {
				cr.checkImageList(list)
			}
		}
		cr.model.mu.Lock()
		var names []string
		for n, im := range cr.model.images {
			if !im.uncertain {
				names = append(names, n)
			}
		}
		cr.model.mu.Unlock()
		if len(names) > 3 && r.IntN(2) == 0 {
			sort.Strings(names)
			victim := names[r.IntN(len(names))]
			ok, _ := cr.stats.call(cr.leased, "images.delete", false, func(ctx context.Context) error {
				return is.Delete(ctx, victim)
			})
			cr.model.mu.Lock()
			if ok {
				delete(cr.model.images, victim)
			} else {
				cr.model.images[victim].uncertain = true
			}
			cr.model.mu.Unlock()
		}
		cr.pause(time.Duration(50+r.IntN(100)) * time.Millisecond)
	}
}

// checkImageList compares a listing with the model, which nothing changes
// meanwhile: the image worker is the only writer of images.
func (cr *chaosRun) checkImageList(list []images.Image) {
	cr.model.mu.Lock()
	defer cr.model.mu.Unlock()
	listed := map[string]bool{}
	for _, img := range list {
		listed[img.Name] = true
		im, ok := cr.model.images[img.Name]
		if !ok {
			cr.stats.problem("images.list shows %s, which the generator never created or deleted", img.Name)
		} else if img.Target.Digest != im.target {
			cr.stats.problem("images.list shows %s at %s, want %s", img.Name, img.Target.Digest, im.target)
		}
	}
	for n, im := range cr.model.images {
		if !im.uncertain && !listed[n] {
			cr.stats.problem("images.list lacks %s, created and never deleted", n)
		}
	}
}

// snapshotWorker prepares, commits and removes overlayfs snapshots.
func (cr *chaosRun) snapshotWorker() {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 77))
	sn := cr.c.SnapshotService("overlayfs")
	m := cr.model
	// leaves are the committed snapshots nothing (even uncertainly) builds on.
	committed := func(leavesOnly bool) []string {
		m.mu.Lock()
		defer m.mu.Unlock()
		parents := map[string]bool{}
		for _, s := range m.snaps {
			parents[s.parent] = true
		}
		var out []string
		for k, s := range m.snaps {
			if s.kind == snapshots.KindCommitted && !s.uncertain && (!leavesOnly || !parents[k]) {
				out = append(out, k)
			}
		}
		sort.Strings(out)
		return out
	}
	set := func(key string, s *chaosSnap) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if s == nil {
			delete(m.snaps, key)
		} else {
			m.snaps[key] = s
		}
	}
	for i := 0; !cr.stopped(); i++ {
		parent := ""
		if c := committed(false); len(c) > 0 && r.IntN(3) > 0 {
			parent = c[r.IntN(len(c))]
		}
		active, name := fmt.Sprintf("active-%d", i), fmt.Sprintf("layer-%d", i)
		ok, _ := cr.stats.call(cr.leased, "snapshots.prepare", false, func(ctx context.Context) error {
			_, err := sn.Prepare(ctx, active, parent)
			return err
		})
		set(active, &chaosSnap{kind: snapshots.KindActive, parent: parent, uncertain: !ok})
		if !ok {
			continue
		}
		var info snapshots.Info
		if ok, _ := cr.stats.call(cr.leased, "snapshots.stat", true, func(ctx context.Context) error {
			var err error
			info, err = sn.Stat(ctx, active)
			return err
		}); ok && (info.Kind != snapshots.KindActive || info.Parent != parent) {
			cr.stats.problem("snapshots.stat %s: kind %s parent %q, want active on %q", active, info.Kind, info.Parent, parent)
		}
		if r.IntN(3) > 0 {
			ok, _ := cr.stats.call(cr.leased, "snapshots.commit", false, func(ctx context.Context) error {
				return sn.Commit(ctx, name, active)
			})
			if ok {
				set(active, nil)
				set(name, &chaosSnap{kind: snapshots.KindCommitted, parent: parent})
			} else {
				set(active, &chaosSnap{kind: snapshots.KindActive, parent: parent, uncertain: true})
				set(name, &chaosSnap{kind: snapshots.KindCommitted, parent: parent, uncertain: true})
			}
		} else {
			ok, _ := cr.stats.call(cr.leased, "snapshots.remove", false, func(ctx context.Context) error {
				return sn.Remove(ctx, active)
			})
			if ok {
				set(active, nil)
			} else {
				set(active, &chaosSnap{kind: snapshots.KindActive, parent: parent, uncertain: true})
			}
		}
		if leaves := committed(true); len(leaves) > 4 && r.IntN(2) == 0 {
			victim := leaves[r.IntN(len(leaves))]
			m.mu.Lock()
			vparent := m.snaps[victim].parent
			m.mu.Unlock()
			ok, _ := cr.stats.call(cr.leased, "snapshots.remove", false, func(ctx context.Context) error {
				return sn.Remove(ctx, victim)
			})
			if ok {
				set(victim, nil)
			} else {
				set(victim, &chaosSnap{kind: snapshots.KindCommitted, parent: vparent, uncertain: true})
			}
		}
		cr.pause(time.Duration(20+r.IntN(60)) * time.Millisecond)
	}
}

// containerWorker runs a container to completion and removes it every
// couple of seconds.
func (cr *chaosRun) containerWorker(image containerd.Image) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 55))
	ctx := namespaces.WithNamespace(context.Background(), chaosRunNS)
	for i := 0; !cr.stopped(); i++ {
		id := fmt.Sprintf("run-%d", i)
		if !cr.runContainer(ctx, id, image) {
			cr.cleanupContainer(ctx, id)
		}
		cr.pause(time.Duration(1000+r.IntN(1000)) * time.Millisecond)
	}
}

// runContainer creates, starts, waits for and removes one container; false
// when a step failed.
func (cr *chaosRun) runContainer(ctx context.Context, id string, image containerd.Image) bool {
	setUncertain := func(u bool) {
		cr.model.mu.Lock()
		cr.model.containers[id] = u
		cr.model.mu.Unlock()
	}
	setUncertain(true)
	var ctr containerd.Container
	if ok, _ := cr.stats.call(ctx, "containers.new", false, func(ctx context.Context) error {
		var err error
		ctr, err = cr.c.NewContainer(ctx, id,
			containerd.WithNewSnapshot(id, image),
			containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("true")))
		return err
	}); !ok {
		return false
	}
	setUncertain(false)
	var task containerd.Task
	if ok, _ := cr.stats.call(ctx, "tasks.create", false, func(ctx context.Context) error {
		var err error
		task, err = ctr.NewTask(ctx, cio.NullIO)
		return err
	}); !ok {
		return false
	}
	// Wait outlives the per-call deadline: it ends with the task.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var exitCh <-chan containerd.ExitStatus
	if ok, _ := cr.stats.call(ctx, "tasks.wait", false, func(context.Context) error {
		var err error
		exitCh, err = task.Wait(wctx)
		return err
	}); !ok {
		return false
	}
	if ok, _ := cr.stats.call(ctx, "tasks.start", false, func(ctx context.Context) error {
		return task.Start(ctx)
	}); !ok {
		return false
	}
	var st containerd.ExitStatus
	select {
	case st = <-exitCh:
	case <-wctx.Done():
		cr.stats.problem("task %s: `true` did not exit within a minute", id)
		return false
	}
	code, _, err := st.Result()
	if ok := cr.stats.record("tasks.exit", false, 0, err); !ok {
		return false
	}
	if code != 0 {
		cr.stats.problem("task %s: `true` exited with %d", id, code)
	}
	if ok, _ := cr.stats.call(ctx, "tasks.delete", false, func(ctx context.Context) error {
		_, err := task.Delete(ctx)
		return err
	}); !ok {
		return false
	}
	setUncertain(true)
	if ok, _ := cr.stats.call(ctx, "containers.delete", false, func(ctx context.Context) error {
		return ctr.Delete(ctx, containerd.WithSnapshotCleanup)
	}); !ok {
		return false
	}
	cr.model.mu.Lock()
	delete(cr.model.containers, id)
	cr.model.mu.Unlock()
	return true
}

// cleanupContainer removes what is left of a container whose run failed,
// retrying while services come back; NotFound means already gone.
func (cr *chaosRun) cleanupContainer(ctx context.Context, id string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var ctr containerd.Container
		ok, err := cr.stats.call(ctx, "cleanup.containers.get", true, func(ctx context.Context) error {
			var err error
			ctr, err = cr.c.LoadContainer(ctx, id)
			return err
		}, codes.NotFound)
		if errdefs.IsNotFound(err) {
			cr.model.mu.Lock()
			delete(cr.model.containers, id)
			cr.model.mu.Unlock()
			return
		}
		if ok {
			var task containerd.Task
			ok, err = cr.stats.call(ctx, "cleanup.tasks.get", true, func(ctx context.Context) error {
				var err error
				task, err = ctr.Task(ctx, nil)
				return err
			}, codes.NotFound)
			if ok {
				ok, err = cr.stats.call(ctx, "cleanup.tasks.delete", false, func(ctx context.Context) error {
					_, err := task.Delete(ctx, containerd.WithProcessKill)
					return err
				}, codes.NotFound)
			}
			if ok || errdefs.IsNotFound(err) {
				ok, err = cr.stats.call(ctx, "cleanup.containers.delete", false, func(ctx context.Context) error {
					return ctr.Delete(ctx, containerd.WithSnapshotCleanup)
				}, codes.NotFound)
				if ok || errdefs.IsNotFound(err) {
					cr.model.mu.Lock()
					delete(cr.model.containers, id)
					cr.model.mu.Unlock()
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	cr.stats.problem("container %s: could not be removed within 30s after its run failed", id)
}

// chaosProbe is a call that needs one service, for measuring its recovery.
type chaosProbe func(ctx context.Context) error

// setUpProbes makes the objects the probes read, in namespace chaos-probe,
// and returns one probe per service.
func (cr *chaosRun) setUpProbes(services []string) map[string]chaosProbe {
	t := cr.t
	ctx := namespaces.WithNamespace(context.Background(), chaosProbeNS)
	l, err := cr.c.LeasesService().Create(ctx, leases.WithID("chaos-probe"))
	if err != nil {
		t.Fatal(err)
	}
	lctx := leases.WithLease(ctx, l.ID)
	data := []byte("the chaos probe's blob")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	cs := cr.c.ContentStore()
	if err := content.WriteBlob(lctx, cs, "probe", bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	probes := map[string]chaosProbe{
		// Reading bytes needs content (and metadata for the record).
		"content": func(ctx context.Context) error {
			got, err := content.ReadBlob(ctx, cs, desc)
			if err == nil && !bytes.Equal(got, data) {
				return fmt.Errorf("probe blob reads back as %q", got)
			}
			return err
		},
		"metadata": func(ctx context.Context) error {
			_, err := cs.Info(ctx, desc.Digest)
			return err
		},
		"tasks": func(ctx context.Context) error {
			_, err := cr.c.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
			return err
		},
	}
	for _, name := range []string{"overlayfs", "native"} {
		sn := cr.c.SnapshotService(name)
		if _, err := sn.Prepare(lctx, "probe", ""); err != nil {
			t.Fatalf("preparing the %s probe snapshot: %v", name, err)
		}
		// Mounts asks the snapshotter process itself.
		probes[name] = func(ctx context.Context) error {
			_, err := sn.Mounts(ctx, "probe")
			return err
		}
	}
	if slices.Contains(services, "cri") {
		rt, _ := cr.criClients()
		probes["cri"] = func(ctx context.Context) error {
			_, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
			return err
		}
	}
	for _, s := range services {
		p := probes[s]
		probes[s] = func(ctx context.Context) error {
			return p(namespaces.WithNamespace(ctx, chaosProbeNS))
		}
	}
	return probes
}

// criClients are plain gRPC clients of the CRI services on the gateway
// socket: their errors are the bare gRPC statuses the rules are about.
func (cr *chaosRun) criClients() (runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient) {
	conn, err := grpc.NewClient("unix://"+cr.d.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cr.t.Fatal(err)
	}
	cr.t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
}

// criWorker makes the read-only CRI calls the cri service answers today.
func (cr *chaosRun) criWorker() {
	rt, is := cr.criClients()
	bg := context.Background()
	for !cr.stopped() {
		cr.stats.call(bg, "cri.version", true, func(ctx context.Context) error {
			_, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
			return err
		})
		cr.stats.call(bg, "cri.status", true, func(ctx context.Context) error {
			_, err := rt.Status(ctx, &runtimeapi.StatusRequest{})
			return err
		})
		cr.stats.call(bg, "cri.listimages", true, func(ctx context.Context) error {
			_, err := is.ListImages(ctx, &runtimeapi.ListImagesRequest{})
			return err
		})
		cr.stats.call(bg, "cri.imagefsinfo", true, func(ctx context.Context) error {
			_, err := is.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
			return err
		})
		cr.pause(100 * time.Millisecond)
	}
}

// pidOf is a service's pid from Introspection (0 when unreadable), through
// the shared client: goroutines may not call d.servicePid, which fails the
// test.
func (cr *chaosRun) pidOf(ctx context.Context, name string) int {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cr.c.IntrospectionService().Plugins(ctx, "id=="+name)
	if err != nil {
		return 0
	}
	for _, p := range resp.Plugins {
		// The gateway's own services share its id space and type with cri;
		// only a service process has a socket.
		if p.ID == name && (p.Type != "io.containerd.grpc.v1" || p.Exports["socket"] != "") {
			pid, _ := strconv.Atoi(p.Exports["pid"])
			return pid
		}
	}
	return 0
}

type chaosKill struct {
	service string
	pid     int // the process killed
	at      time.Time
	// exited is how long the kernel took to end the process after the
	// kill -9, and dying the states /proc showed meanwhile (D: blocked
	// uninterruptibly, in an fsync say, which SIGKILL waits out).
	exited time.Duration
	dying  string
	// recovery is from the process's exit to the first successful call
	// needing the service: the supervisor's restart and the reconnect.
	recovery time.Duration
	back     bool
}

// chaosRecoveryTarget is how soon after a killed process's exit its
// service must serve again.
const chaosRecoveryTarget = time.Second

// killer kill -9s a random service every 2-4 s and measures each recovery.
func (cr *chaosRun) killer(services []string, probes map[string]chaosProbe) []chaosKill {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	var kills []chaosKill
	bg := context.Background()
	for {
		cr.pause(time.Duration(2000+r.IntN(2000)) * time.Millisecond)
		if cr.stopped() {
			return kills
		}
		svc := services[r.IntN(len(services))]
		old := cr.pidOf(bg, svc)
		if old <= 0 {
			cr.stats.problem("killer: no pid for %s in Introspection", svc)
			continue
		}
		k := chaosKill{service: svc, pid: old, at: time.Now()}
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			cr.stats.problem("killer: kill -9 %s (%d): %v", svc, old, err)
			continue
		}
		cr.measureRecovery(&k, probes[svc])
		dying := ""
		if k.dying != "" {
			dying = fmt.Sprintf(" (in state %s meanwhile)", k.dying)
		}
		cr.t.Logf("chaos: %s kill -9 %s (pid %d): exited after %s%s, serving again %s after its exit", k.at.Format("15:04:05.000"), svc, old, k.exited.Round(time.Millisecond), dying, k.recovery.Round(time.Millisecond))
		kills = append(kills, k)
	}
}

// measureRecovery waits for the killed process to exit and then measures
// how long until a call needing its service succeeds, within 30 s of the
// kill.
//
// The figure is the service's, not the probe's: probes start only once the
// killed process is gone (so a success is a new process's answer), and a
// new one starts every few milliseconds without waiting for those still in
// flight, so an attempt that waits out its own timeout or a backoff of its
// own delays nothing. The first attempt to succeed ends the measure; the
// Introspection check that a new process serves comes after it.
func (cr *chaosRun) measureRecovery(k *chaosKill, probe chaosProbe) {
	const (
		limit    = 30 * time.Second
		interval = 5 * time.Millisecond
		attempt  = 2 * time.Second // each attempt's deadline
		inFlight = 32              // attempts at most at once
	)
	for {
		st := processState(k.pid)
		if st == 0 || st == 'Z' || st == 'X' {
			break
		}
		if st != 'R' && st != 'S' && !strings.ContainsRune(k.dying, rune(st)) {
			k.dying += string(st)
		}
		if time.Since(k.at) > 5*time.Second {
			cr.stats.problem("%s (pid %d) still runs 5s after kill -9 (state %c)", k.service, k.pid, st)
			k.exited = time.Since(k.at)
			return
		}
		time.Sleep(time.Millisecond)
	}
	exitedAt := time.Now()
	k.exited = exitedAt.Sub(k.at)
	ctx, cancel := context.WithTimeout(context.Background(), limit-time.Since(k.at))
	defer cancel()
	succeeded := make(chan time.Time, 1)
	slots := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var recovered time.Time
probing:
	for {
		select {
		case slots <- struct{}{}:
			wg.Go(func() {
				defer func() { <-slots }()
				actx, acancel := context.WithTimeout(ctx, attempt)
				defer acancel()
				if probe(actx) == nil {
					select {
					case succeeded <- time.Now():
					default:
					}
				}
			})
		case recovered = <-succeeded:
			break probing
		case <-ctx.Done():
			break probing
		}
		select {
		case <-tick.C:
		case recovered = <-succeeded:
			break probing
		case <-ctx.Done():
			break probing
		}
	}
	cancel()
	wg.Wait()
	if recovered.IsZero() {
		k.recovery = time.Since(exitedAt)
		cr.stats.problem("%s not serving again %s after kill -9 at %s", k.service, limit, k.at.Format("15:04:05.000"))
		return
	}
	k.recovery, k.back = recovered.Sub(exitedAt), true
	// Introspection may name the new process a little after it serves.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if pid := cr.pidOf(context.Background(), k.service); pid > 0 && pid != k.pid {
			break
		}
		if time.Now().After(deadline) {
			cr.stats.problem("%s answered after kill -9 of pid %d, but Introspection names no new process 5s later", k.service, k.pid)
			break
		}
	}
}

// processState is the state letter /proc shows for pid (R, S, D, Z...),
// or 0 when there is no such process.
func processState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0
	}
	return s[i+2]
}

// waitAllServing waits until every probe passes, so that the comparison
// runs against a settled daemon.
func (cr *chaosRun) waitAllServing(probes map[string]chaosProbe) {
	cr.t.Helper()
	waitFor(cr.t, 30*time.Second, "every service to serve again after the load", func() bool {
		for _, p := range probes {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := p(ctx)
			cancel()
			if err != nil {
				return false
			}
		}
		return true
	})
}

// ctrList runs a ctr listing and returns its first column, header dropped
// unless quiet.
func (cr *chaosRun) ctrList(quiet bool, args ...string) map[string][]string {
	out, err := cr.d.ctrBytes(args...)
	if err != nil {
		cr.t.Fatalf("after the load: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !quiet && len(lines) > 0 {
		lines = lines[1:]
	}
	rows := map[string][]string{}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 {
			rows[f[0]] = f[1:]
		}
	}
	return rows
}

// compareListing checks that what ctr lists is what the generator believes:
// everything it knows exists is listed, and nothing else is listed but
// what an uncertain call may have made.
func compareListing[T any](t *testing.T, what string, listed map[string][]string, model map[string]T, uncertain func(T) bool) {
	t.Helper()
	var missing, extra []string
	for k, v := range model {
		if _, ok := listed[k]; !ok && !uncertain(v) {
			missing = append(missing, k)
		}
	}
	for k := range listed {
		if _, ok := model[k]; !ok {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("LOSS: ctr %s lacks %d the generator saw created and never removed: %v", what, len(missing), missing)
	}
	if len(extra) > 0 {
		t.Errorf("ctr %s lists %d the generator never created or saw removed: %v", what, len(extra), extra)
	}
}

// TestChaosKillingRandomServicesLosesNothing runs a load through the
// containerd client while service processes are kill -9ed at random, then
// checks that nothing committed was lost or corrupted, that the listings
// match what the load did, that meta.db is sound and that nothing leaked.
func TestChaosKillingRandomServicesLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test runs for a fixed time; skipped in -short")
	}
	duration := chaosDuration(t)
	requireTool(t, "ctr", "containerd")
	requireTool(t, "runc", "runc")
	d := newDaemon(t).start()
	t.Cleanup(d.reapLeftovers)
	_, archive := imageArchive(t, testimage.WithName(busyboxRef))
	d.mustCtr("-n", chaosRunNS, "images", "import", archive)

	cr := &chaosRun{t: t, d: d, c: d.client(), stats: newChaosStats(t), model: newChaosModel(), stop: make(chan struct{})}
	services := []string{"content", "metadata", "overlayfs", "native", "tasks"}
	if cr.pidOf(context.Background(), "cri") > 0 {
		services = append(services, "cri")
	} else {
		t.Log("no cri service in Introspection: not killed")
	}
	probes := cr.setUpProbes(services)

	ctx := namespaces.WithNamespace(context.Background(), chaosNS)
	l, err := cr.c.LeasesService().Create(ctx, leases.WithID("chaos-generator"))
	if err != nil {
		t.Fatal(err)
	}
	cr.leased = leases.WithLease(ctx, l.ID)
	image, err := cr.c.GetImage(namespaces.WithNamespace(context.Background(), chaosRunNS), busyboxRef)
	if err != nil {
		t.Fatal(err)
	}

	t.Logf("chaos: %s of load, killing one of %v every 2-4s", duration, services)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() { cr.contentWorker(w) })
	}
	wg.Go(cr.imageWorker)
	wg.Go(cr.snapshotWorker)
	wg.Go(func() { cr.containerWorker(image) })
	if slices.Contains(services, "cri") {
		wg.Go(cr.criWorker)
	}
	killsCh := make(chan []chaosKill, 1)
	go func() { killsCh <- cr.killer(services, probes) }()

	time.Sleep(duration)
	close(cr.stop)
	kills := <-killsCh
	quiet := make(chan struct{})
	go func() { wg.Wait(); close(quiet) }()
	select {
	case <-quiet:
	case <-time.After(3 * time.Minute):
		t.Fatal("the load generator did not stop within 3 minutes of being told to: a call hangs")
	}
	cr.waitAllServing(probes)

	cr.report(kills)
	cr.checkAfterLoad()

	// Nothing of the containers may be left: shims, mounts, bundles, shim
	// sockets, records, active snapshots. Reported rather than fatal, so
	// that meta.db is checked too.
	var left []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if left = d.taskLeftovers(chaosRunNS); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, l := range left {
		t.Errorf("LEAK after every container was removed: %s", l)
	}
	for _, p := range processes() {
		if slices.Contains(d.shimPids(), p.pid) {
			t.Logf("leaked shim %d: %v", p.pid, p.args)
		}
	}

	d.stop()
	if d.exitErr != nil {
		t.Errorf("flotillad exited with %v after SIGTERM", d.exitErr)
	}
	checkMetaDB(t, filepath.Join(d.root, "metadata", "meta.db"))
	checkNothingRunsAfterStop(t, d)
}

// report prints the figures and fails on every failed idempotent call and
// on every recovery slower than chaosRecoveryTarget.
func (cr *chaosRun) report(kills []chaosKill) {
	t, s := cr.t, cr.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	var ops []string
	total := 0
	for op, n := range s.ops {
		ops = append(ops, fmt.Sprintf("%s=%d (slowest %s)", op, n, s.slowest[op].Round(time.Millisecond)))
		total += n
	}
	sort.Strings(ops)
	t.Logf("chaos: %d operations:\n  %s", total, strings.Join(ops, "\n  "))

	perService := map[string][]time.Duration{}
	var longest chaosKill
	for _, k := range kills {
		perService[k.service] = append(perService[k.service], k.recovery)
		if k.recovery > longest.recovery {
			longest = k
		}
	}
	var lines []string
	for svc, rs := range perService {
		var sum, worst time.Duration
		for _, r := range rs {
			sum += r
			worst = max(worst, r)
		}
		lines = append(lines, fmt.Sprintf("%s: %d kills, recovery mean %s, max %s", svc, len(rs), (sum/time.Duration(len(rs))).Round(time.Millisecond), worst.Round(time.Millisecond)))
	}
	sort.Strings(lines)
	t.Logf("chaos: %d kills:\n  %s", len(kills), strings.Join(lines, "\n  "))

	var failed []string
	for c, n := range s.failedBy {
		failed = append(failed, fmt.Sprintf("%s=%d", c, n))
	}
	sort.Strings(failed)
	var allowed []string
	for c, n := range s.allowedBy {
		allowed = append(allowed, fmt.Sprintf("%s=%d", c, n))
	}
	sort.Strings(allowed)
	t.Logf("chaos: failed calls by code: %v (plus expected answers in cleanups: %v)", failed, allowed)
	var idem []string
	for op, n := range s.failedIdem {
		idem = append(idem, fmt.Sprintf("%s=%d", op, n))
	}
	sort.Strings(idem)
	t.Logf("chaos: FAILED IDEMPOTENT CALLS (must be 0): %d %v", len(s.idemFailures), idem)
	// An idempotent call (a read, a listing) is safe to make again, and
	// the gateway and the services' shared client do so when the service
	// behind it restarts: its caller should see a slower answer, never an
	// error.
	for _, l := range s.idemFailures {
		t.Errorf("an idempotent call failed; the daemon should have retried it across the restart: %s", l)
	}

	if len(kills) > 0 {
		verdict := "within the target"
		if longest.recovery > chaosRecoveryTarget {
			verdict = "MISSES THE TARGET"
		}
		var slowestExit chaosKill
		for _, k := range kills {
			if k.exited > slowestExit.exited {
				slowestExit = k
			}
		}
		t.Logf("chaos: LONGEST RECOVERY %s (%s killed at %s), target %s: %s; the slowest exit after kill -9 took %s (%s at %s)", longest.recovery.Round(time.Millisecond), longest.service, longest.at.Format("15:04:05.000"), chaosRecoveryTarget, verdict, slowestExit.exited.Round(time.Millisecond), slowestExit.service, slowestExit.at.Format("15:04:05.000"))
	}
	// A recovery is the time from the exit of a kill -9ed service process
	// to the first successful call that needs that service: the restart by
	// the supervisor and the reconnect by the gateway, which are Flotilla's.
	// The time the kernel takes to end the process before that is logged,
	// not judged.
	for _, k := range kills {
		if k.back && k.recovery > chaosRecoveryTarget {
			t.Errorf("slow recovery: %s (pid %d), killed with kill -9 at %s, exited %s later and took %s after its exit to serve again; the target is %s", k.service, k.pid, k.at.Format("15:04:05.000"), k.exited.Round(time.Millisecond), k.recovery.Round(time.Millisecond), chaosRecoveryTarget)
		}
	}
	for i, p := range s.problems {
		if i == 30 {
			t.Errorf("... and %d more problems", len(s.problems)-30)
			break
		}
		t.Errorf("under chaos: %s", p)
	}
}

// checkAfterLoad compares the daemon's listings with the generator's model
// and reads back every blob listed.
func (cr *chaosRun) checkAfterLoad() {
	t, m := cr.t, cr.model
	m.mu.Lock()
	defer m.mu.Unlock()

	blobs := cr.ctrList(true, "-n", chaosNS, "content", "ls", "-q")
	blobModel := map[string]*chaosBlob{}
	for d, b := range m.blobs {
		blobModel[d.String()] = b
	}
	compareListing(t, "-n chaos content ls", blobs, blobModel, func(b *chaosBlob) bool { return b.uncertain })
	// Every listed blob reads back whole, by digest, whether the generator
	// saw its commit or not.
	cs := cr.c.ContentStore()
	verified := 0
	for d := range blobs {
		b, ok := blobModel[d]
		if !ok {
			continue
		}
		ctx, cancel := context.WithTimeout(cr.leased, 30*time.Second)
		got, err := content.ReadBlob(ctx, cs, b.desc)
		cancel()
		switch {
		case err != nil:
			t.Errorf("LOSS: blob %s (%d bytes) is listed but does not read back: %v", d, b.desc.Size, err)
		case digest.FromBytes(got) != b.desc.Digest || int64(len(got)) != b.desc.Size:
			t.Errorf("CORRUPT: blob %s reads back as %d bytes of digest %s, want %d bytes", d, len(got), digest.FromBytes(got), b.desc.Size)
		default:
			verified++
		}
	}
	uncertainBlobs := 0
	for _, b := range m.blobs {
		if b.uncertain {
			uncertainBlobs++
		}
	}
	t.Logf("chaos: %d blobs listed and verified by digest (%d in the model, %d of them uncertain)", verified, len(m.blobs), uncertainBlobs)

	imgs := cr.ctrList(true, "-n", chaosNS, "images", "ls", "-q")
	compareListing(t, "-n chaos images ls", imgs, m.images, func(i *chaosImage) bool { return i.uncertain })
	for name := range imgs {
		im, ok := m.images[name]
		if !ok {
			continue
		}
		ctx, cancel := context.WithTimeout(cr.leased, 30*time.Second)
		img, err := cr.c.ImageService().Get(ctx, name)
		cancel()
		if err != nil || img.Target.Digest != im.target {
			t.Errorf("image %s: target %s, %v; want %s", name, img.Target.Digest, err, im.target)
		}
	}

	snaps := cr.ctrList(false, "-n", chaosNS, "snapshots", "--snapshotter", "overlayfs", "ls")
	compareListing(t, "-n chaos snapshots ls", snaps, m.snaps, func(s *chaosSnap) bool { return s.uncertain })
	for key, row := range snaps {
		s, ok := m.snaps[key]
		if !ok || len(row) == 0 {
			continue
		}
		want := []string{"Active"}
		if s.kind == snapshots.KindCommitted {
			want = []string{"Committed"}
		}
		if s.parent != "" {
			want = append([]string{s.parent}, want...)
		}
		if strings.Join(row, " ") != strings.Join(want, " ") {
			t.Errorf("snapshot %s listed as %v, want %v", key, row, want)
		}
	}
	t.Logf("chaos: after the load: %d images, %d snapshots listed; %d containers believed left", len(imgs), len(snaps), len(m.containers))

	ctrs := cr.ctrList(true, "-n", chaosRunNS, "containers", "ls", "-q")
	compareListing(t, "-n chaos-run containers ls", ctrs, m.containers, func(u bool) bool { return u })
	// Only uncertain ones can be left; they go now so that the leak check
	// sees a clean namespace.
	for id := range ctrs {
		cr.cleanupContainer(namespaces.WithNamespace(context.Background(), chaosRunNS), id)
	}
}

// checkMetaDB runs bbolt's consistency check on the stopped daemon's
// meta.db.
func checkMetaDB(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("opening meta.db read-only after the stop: %v", err)
	}
	defer db.Close()
	var problems []error
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			problems = append(problems, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading meta.db: %v", err)
	}
	for _, p := range problems {
		t.Errorf("CORRUPT: meta.db fails bbolt's consistency check: %v", p)
	}
	if len(problems) == 0 {
		t.Logf("chaos: meta.db passes bbolt's consistency check")
	}
}

// checkNothingRunsAfterStop looks for what a stopped flotillad must not
// leave: service processes, shims, socket files, mounts.
func checkNothingRunsAfterStop(t *testing.T, d *daemon) {
	t.Helper()
	for _, p := range processes() {
		if p.state == 'Z' || len(p.args) == 0 {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
		if err != nil || filepath.Dir(exe) != filepath.Clean(binDir) {
			continue
		}
		for _, a := range p.args {
			if strings.HasPrefix(a, d.dir) || strings.Contains(a, d.address) {
				t.Errorf("LEAK: process %d %v still runs after flotillad stopped", p.pid, p.args)
				break
			}
		}
	}
	if pids := d.shimPids(); len(pids) > 0 {
		t.Errorf("LEAK: shims %v still run after flotillad stopped", pids)
	}
	var socks []string
	_ = filepath.WalkDir(d.dir, func(path string, e os.DirEntry, err error) error {
		if err == nil && e.Type()&os.ModeSocket != 0 {
			socks = append(socks, path)
		}
		return nil
	})
	if len(socks) > 0 {
		t.Errorf("LEAK: socket files left after flotillad stopped: %v", socks)
	}
	if m := d.mountsUnder(); len(m) > 0 {
		t.Errorf("LEAK: mounts left after flotillad stopped: %v", m)
	}
}

// freeBytes is the space left on the filesystem of dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// TestDiskFullFailsCleanlyAndKeepsServing puts the daemon's root on a small
// tmpfs and fills it: an ingest and an unpack that do not fit fail, leave
// no blob or snapshot behind, and once space is freed the same daemon
// ingests and unpacks them.
func TestDiskFullFailsCleanlyAndKeepsServing(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	requireRoot(t)
	root := t.TempDir()
	if err := syscall.Mount("tmpfs", root, "tmpfs", 0, "size=48m,mode=0711"); err != nil {
		t.Skipf("cannot mount a tmpfs for the daemon's root: %v", err)
	}
	// Registered before the daemon's own cleanup, so it runs after the stop.
	t.Cleanup(func() { unmountUnder(root); unmount(root) })
	d := newDaemon(t, withRoot(root)).start()
	c := d.client()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	lctx := leases.WithLease(ctx, l.ID)

	img, archive := imageArchive(t, testimage.WithRandomLayer(4<<20, 3))
	d.mustCtr("images", "import", "--no-unpack", archive)
	pids := map[string]int{}
	for _, s := range []string{"content", "metadata", "overlayfs"} {
		pids[s] = d.servicePid(s)
	}

	// Leave 1 MiB: room for records, not for the blob or the layers.
	filler := filepath.Join(root, "filler")
	if err := os.WriteFile(filler, make([]byte, freeBytes(t, root)-(1<<20)), 0o600); err != nil {
		t.Fatalf("filling the tmpfs: %v", err)
	}
	t.Logf("disk full: %d bytes free", freeBytes(t, root))

	big := randomBytes(rand.New(rand.NewPCG(5, 5)), 8<<20, 8<<20+1)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(big), Size: int64(len(big))}
	cs := c.ContentStore()
	err = content.WriteBlob(lctx, cs, "too-big", bytes.NewReader(big), desc)
	if err == nil {
		t.Fatal("an 8 MiB ingest into 1 MiB of free space succeeded")
	}
	t.Logf("ingest into a full disk: %s: %v", chaosCode(err), err)
	if chaosCode(err) == codes.Unavailable {
		t.Errorf("ingest into a full disk answered Unavailable (a service died?): %v", err)
	}
	if _, err := cs.Info(ctx, desc.Digest); !errdefs.IsNotFound(err) {
		t.Errorf("the blob whose ingest hit a full disk: Info gives %v, want NotFound", err)
	}
	if err := cs.Abort(lctx, "too-big"); err != nil && !errdefs.IsNotFound(err) {
		t.Errorf("aborting the failed ingest: %v", err)
	}

	image := containerd.NewImage(c, images.Image{Name: img.Name, Target: img.Manifest})
	err = image.Unpack(ctx, "overlayfs")
	if err == nil {
		t.Fatal("unpacking 6 MB of layers into 1 MiB of free space succeeded")
	}
	t.Logf("unpack into a full disk: %s: %v", chaosCode(err), err)
	if out := d.mustCtr("snapshots", "ls"); len(snapshotRows(out)) != 0 {
		t.Errorf("an unpack that hit a full disk left snapshots:\n%s", out)
	}
	// Nor anything on disk: the half-written snapshot goes (at the next
	// collection), and so does the aborted ingest.
	waitFor(t, 10*time.Second, "the half-written snapshot directories to be removed", func() bool {
		return len(d.backendSnapshotDirs("overlayfs")) == 0
	})
	if ingests := dirEntries(filepath.Join(root, "content", "ingest")); len(ingests) != 0 {
		t.Errorf("the aborted ingest left %v on disk", ingests)
	}
	if b := d.diskBlobs(); len(b) != len(archiveBlobs(t, archive)) {
		t.Errorf("blobs on disk after the failed ingest: %v, want the image's %v", b, archiveBlobs(t, archive))
	}

	// Still serving, without a restart.
	for s, pid := range pids {
		if now := d.servicePid(s); now != pid {
			t.Errorf("%s restarted (pid %d, was %d) when the disk filled", s, now, pid)
		}
	}
	if out := d.mustCtr("images", "check"); !strings.Contains(out, img.Name) || !strings.Contains(out, "complete") {
		t.Errorf("the imported image is no longer complete after the disk filled:\n%s", out)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := content.WriteBlob(lctx, cs, "too-big", bytes.NewReader(big), desc); err != nil {
		t.Fatalf("the same ingest once space is free: %v", err)
	}
	if got, err := content.ReadBlob(ctx, cs, desc); err != nil || digest.FromBytes(got) != desc.Digest {
		t.Fatalf("the blob ingested once space is free reads back as %d bytes, %v", len(got), err)
	}
	if err := image.Unpack(ctx, "overlayfs"); err != nil {
		t.Fatalf("the same unpack once space is free: %v", err)
	}
	chain, err := image.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	top := identity.ChainID(chain).String()
	d.mustCtr("snapshots", "prepare", "work", top)
	requireBusyboxRuns(t, mountSnapshot(t, d, "", "work"))
}
