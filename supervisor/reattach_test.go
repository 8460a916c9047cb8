package supervisor

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/handshake"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/service"
)

// The test binary doubles as a service process: started by a supervisor
// (the handshake environment is set), it serves nothing but Describe and
// logs "poked" on SIGHUP.
func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv(handshake.EnvVar); ok {
		service.Run("fake", func(ctx context.Context, p *service.Process) (*service.Instance, error) {
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			go func() {
				for range hup {
					logging.G(ctx).Info("poked")
				}
			}()
			// SIGUSR1 makes it use far more memory than cgroup_test.go's
			// limit, as a runaway service would.
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			go func() {
				<-usr1
				for {
					b := make([]byte, 16<<20)
					for i := 0; i < len(b); i += 4096 {
						b[i] = 1
					}
					hog = append(hog, b)
				}
			}()
			return &service.Instance{Type: "io.flotilla.test.v1", Register: func(grpc.ServiceRegistrar) {}}, nil
		})
	}
	os.Exit(m.Run())
}

// hog keeps what a fake service allocated on SIGUSR1 alive.
var hog [][]byte

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type fixture struct {
	t   *testing.T
	dir string
}

func newFixture(t *testing.T) *fixture {
	// Unix socket paths must stay short: not under t.TempDir().
	dir, err := os.MkdirTemp("", "sv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return &fixture{t: t, dir: dir}
}

func (f *fixture) spec(options map[string]any) Spec {
	return Spec{
		Name: "fake",
		Path: os.Args[0],
		Env: handshake.Env{
			Name:    "fake",
			Root:    filepath.Join(f.dir, "root"),
			State:   filepath.Join(f.dir, "state", "fake"),
			Socket:  filepath.Join(f.dir, "fake.sock"),
			Log:     logging.Options{Level: "info"},
			Options: options,
		},
	}
}

// supervisor starts a supervisor of spec and ends what it runs when the
// test is over, whatever happened.
func (f *fixture) supervisor(spec Spec) (*Supervisor, *lockedBuffer) {
	f.t.Helper()
	out := &lockedBuffer{}
	s, err := New(Options{
		Logger:       slog.New(slog.NewTextHandler(io.MultiWriter(out, testWriter{f.t}), nil)),
		Output:       out,
		StartTimeout: 10 * time.Second,
	}, []Spec{spec})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(s.Stop)
	return s, out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func running(t *testing.T, s *Supervisor) Status {
	t.Helper()
	st := s.Statuses()[0]
	if st.State != Running || st.Pid == 0 {
		t.Fatalf("service is %s (pid %d, error %q), want running", st.State, st.Pid, st.LastError)
	}
	return st
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNewSupervisorReattachesToTheProcessTheOldOneLeftRunning(t *testing.T) {
	f := newFixture(t)
	first, _ := f.supervisor(f.spec(nil))
	pid := running(t, first).Pid
	rec, err := first.order[0].loadReattach()
	if err != nil || rec.Pid != pid || filepath.Dir(rec.Addr) != filepath.Join(f.dir, "state", "fake") {
		t.Fatalf("reattach record %+v, %v: want pid %d and go-plugin's socket in the service's state", rec, err, pid)
	}
	first.Detach()
	if !alive(pid) {
		t.Fatalf("service %d died when its supervisor let go of it", pid)
	}

	second, out := f.supervisor(f.spec(nil))
	st := running(t, second)
	if st.Pid != pid {
		t.Fatalf("second supervisor runs pid %d, want the reattached %d", st.Pid, pid)
	}
	if st.Info == nil || st.Info.Name != "fake" {
		t.Errorf("reattached service was not described: %+v", st.Info)
	}
	// The log ring holds what the process wrote before, and what it writes
	// now reaches the new supervisor's output.
	logs, _ := second.Logs("fake", 0)
	if !strings.Contains(strings.Join(logs, "\n"), `msg=serving`) {
		t.Errorf("the reattached service's earlier output is not in its log ring:\n%s", strings.Join(logs, "\n"))
	}
	_ = syscall.Kill(pid, syscall.SIGHUP)
	waitUntil(t, "the reattached service's output", func() bool { return strings.Contains(out.String(), "msg=poked") })

	// An exit is noticed, and the service started again, as for a child.
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitUntil(t, "a new process after the reattached one was killed", func() bool {
		st := second.Statuses()[0]
		return st.State == Running && st.Pid != pid
	})
	if st := second.Statuses()[0]; st.Restarts != 1 {
		t.Errorf("restarts = %d after one kill, want 1", st.Restarts)
	}

	newPid := second.Statuses()[0].Pid
	second.Stop()
	waitUntil(t, "the service to stop", func() bool { return !alive(newPid) })
	for _, name := range []string{reattachFile, "fake.pid"} {
		if _, err := os.Stat(filepath.Join(f.dir, "state", "fake", name)); !os.IsNotExist(err) {
			t.Errorf("%s left behind after a stop: %v", name, err)
		}
	}
	if socks, _ := filepath.Glob(filepath.Join(f.dir, "state", "fake", "plugin*")); len(socks) > 0 {
		t.Errorf("go-plugin sockets left behind: %v", socks)
	}
}

func TestReattachedServiceStopsOnStop(t *testing.T) {
	f := newFixture(t)
	first, _ := f.supervisor(f.spec(nil))
	pid := running(t, first).Pid
	first.Detach()
	second, out := f.supervisor(f.spec(nil))
	if got := running(t, second).Pid; got != pid {
		t.Fatalf("second supervisor runs pid %d, want the reattached %d", got, pid)
	}
	done := make(chan struct{})
	go func() { second.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop of a reattached service hangs")
	}
	if alive(pid) {
		t.Errorf("reattached service %d still runs after Stop", pid)
	}
	// It stopped gracefully (go-plugin's Shutdown), not by SIGKILL.
	if !strings.Contains(out.String(), "msg=stopping") {
		t.Errorf("the reattached service did not shut down gracefully:\n%s", out.String())
	}
}

func TestServiceThatDiedUnsupervisedIsStartedAfresh(t *testing.T) {
	f := newFixture(t)
	first, _ := f.supervisor(f.spec(nil))
	pid := running(t, first).Pid
	first.Detach()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitUntil(t, "the service to die", func() bool { return !alive(pid) })

	second, out := f.supervisor(f.spec(nil))
	if got := running(t, second).Pid; got == pid {
		t.Fatalf("second supervisor claims the dead process %d", pid)
	}
	if !strings.Contains(out.String(), "cannot reattach") {
		t.Errorf("the fresh start does not say why it did not reattach:\n%s", out.String())
	}
}

func TestReconfiguredServiceIsRestartedNotReattached(t *testing.T) {
	f := newFixture(t)
	first, _ := f.supervisor(f.spec(map[string]any{"x": 1}))
	pid := running(t, first).Pid
	first.Detach()

	second, _ := f.supervisor(f.spec(map[string]any{"x": 2}))
	if got := running(t, second).Pid; got == pid {
		t.Fatalf("a service started with other options was reattached (pid %d)", pid)
	}
	waitUntil(t, "the old process to be killed", func() bool { return !alive(pid) })
}

func TestProcStartTimeTellsProcessesApart(t *testing.T) {
	a, err := procStartTime(os.Getpid())
	if err != nil || a == 0 {
		t.Fatalf("procStartTime(self) = %d, %v", a, err)
	}
	if b, _ := procStartTime(os.Getpid()); b != a {
		t.Errorf("start time changed between two reads: %d, %d", a, b)
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Error("procStartTime of a pid that cannot exist succeeded")
	}
}

func TestLogFollowerCopiesWholeLinesAndBoundsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	out, ring := &lockedBuffer{}, newLogRing(10)
	if err := os.WriteFile(path, []byte("before\npart"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := followLog(path, false, out, ring)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, _ = w.WriteString("ial\nafter\n")
	waitUntil(t, "the appended lines", func() bool { return strings.Contains(out.String(), "after\n") })
	if got := out.String(); got != "partial\nafter\n" {
		t.Errorf("output = %q, want only the lines written after following began", got)
	}
	if got := strings.Join(ring.last(0), ","); got != "before,partial,after" {
		t.Errorf("ring = %q", got)
	}
	big := strings.Repeat("x", 1<<20) + "\n"
	for i := 0; i < maxLogSize>>20+1; i++ {
		_, _ = w.WriteString(big)
	}
	l.drain()
	if fi, _ := os.Stat(path); fi.Size() != 0 {
		t.Errorf("file is %d bytes after the follower read past %d", fi.Size(), maxLogSize)
	}
	_, _ = w.WriteString("last\n")
	l.close()
	l.close()
	if !strings.HasSuffix(out.String(), "last\n") {
		t.Errorf("close did not copy the last line")
	}
}
