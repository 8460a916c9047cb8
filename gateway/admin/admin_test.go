package admin

import (
	"context"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/durationpb"

	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

// recorder is a fake supervisor and router that records what is asked of
// them, in order.
type recorder struct {
	mu       sync.Mutex
	events   []string
	inflight int64
	procs    []Process
}

func (r *recorder) log(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) Processes() []Process { return r.procs }
func (r *recorder) Restart(_ context.Context, name string, _ time.Duration) error {
	r.log("restart " + name)
	return nil
}
func (r *recorder) Logs(name string, n int) ([]string, error) {
	return []string{"a", "b", "c"}[3-n:], nil
}
func (r *recorder) Hold(name string)    { r.log("hold " + name) }
func (r *recorder) Release(name string) { r.log("release " + name) }
func (r *recorder) Drain(ctx context.Context, name string) error {
	r.log("drain " + name)
	if r.inflight > 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}
func (r *recorder) InFlight(string) int64 { return r.inflight }

func newService(r *recorder) *Service {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), r)
	s.SetSupervisor(r)
	return s
}

func TestRestartHoldsDrainsRestartsThenReleases(t *testing.T) {
	r := &recorder{procs: []Process{{Name: "metadata", State: "running", Pid: os.Getpid(), Since: time.Now()}}}
	resp, err := newService(r).Restart(context.Background(), &adminpb.RestartRequest{Name: "metadata"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"hold metadata", "drain metadata", "restart metadata", "release metadata"}
	if !reflect.DeepEqual(r.events, want) {
		t.Errorf("did %q, want %q", r.events, want)
	}
	if resp.GetService().GetPid() != int64(os.Getpid()) || resp.GetAbandonedCalls() != 0 {
		t.Errorf("unexpected response %v", resp)
	}
}

func TestRestartGoesAheadWhenCallsDoNotDrainInTime(t *testing.T) {
	r := &recorder{inflight: 2, procs: []Process{{Name: "metadata", Pid: 1}}}
	resp, err := newService(r).Restart(context.Background(), &adminpb.RestartRequest{
		Name: "metadata", DrainTimeout: durationpb.New(50 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAbandonedCalls() != 2 {
		t.Errorf("abandoned calls %d, want 2", resp.GetAbandonedCalls())
	}
	if r.events[len(r.events)-1] != "release metadata" {
		t.Errorf("the service was left held: %q", r.events)
	}
}

func TestRestartOfUnknownServiceIsNotFoundAndHoldsNothing(t *testing.T) {
	r := &recorder{procs: []Process{{Name: "metadata"}}}
	_, err := newService(r).Restart(context.Background(), &adminpb.RestartRequest{Name: "nope"})
	if !errdefs.IsNotFound(err) {
		t.Fatalf("got %v, want NotFound", err)
	}
	if len(r.events) != 0 {
		t.Errorf("did %q for an unknown service", r.events)
	}
}

func TestServicesReportsMemoryAndUptime(t *testing.T) {
	r := &recorder{procs: []Process{{Name: "content", State: "running", Pid: os.Getpid(), Since: time.Now().Add(-time.Minute), Socket: "/x.sock"}}}
	resp, err := newService(r).Services(context.Background(), &adminpb.ServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st := resp.GetServices()[0]
	if st.GetRssBytes() == 0 {
		t.Error("no resident memory reported for a running process")
	}
	if st.GetUptime().AsDuration() < time.Minute || st.GetSocket() != "/x.sock" {
		t.Errorf("unexpected status %v", st)
	}
}

func TestLogsReturnsTheLastLines(t *testing.T) {
	r := &recorder{procs: []Process{{Name: "content"}}}
	resp, err := newService(r).Logs(context.Background(), &adminpb.LogsRequest{Name: "content", Lines: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(resp.GetLines(), []string{"b", "c"}) {
		t.Errorf("got %q", resp.GetLines())
	}
}

func TestCallsBeforeSupervisorAreUnavailable(t *testing.T) {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), &recorder{})
	if _, err := s.Services(context.Background(), &adminpb.ServicesRequest{}); !errdefs.IsUnavailable(err) {
		t.Fatalf("got %v, want Unavailable", err)
	}
}
