package gc

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

func TestMarkFollowsReferencesAndStopsAtCycles(t *testing.T) {
	n := func(k string) Node { return Node{Type: Content, Namespace: "ns", Key: k} }
	edges := map[Node][]Node{
		n("a"): {n("b")},
		n("b"): {n("c"), n("a")},
		n("x"): {n("y")},
	}
	calls := map[Node]int{}
	got, err := Mark([]Node{n("a")}, func(from Node, visit func(Node)) error {
		calls[from]++
		for _, to := range edges[from] {
			visit(to)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if _, ok := got[n(k)]; !ok {
			t.Errorf("%s is reachable from the root but was not marked", k)
		}
	}
	for _, k := range []string{"x", "y"} {
		if _, ok := got[n(k)]; ok {
			t.Errorf("%s is unreachable but was marked", k)
		}
	}
	for node, c := range calls {
		if c != 1 {
			t.Errorf("references of %v were read %d times, want once", node, c)
		}
	}
}

func TestSchedulerCoalescesBurstsAndRunsSyncAtOnce(t *testing.T) {
	var runs atomic.Int32
	s := NewScheduler(t.Context(), func(context.Context) error { runs.Add(1); return nil }, 50*time.Millisecond)
	defer s.Close()
	for i := 0; i < 20; i++ {
		s.Trigger(false)
	}
	time.Sleep(200 * time.Millisecond)
	if got := runs.Load(); got != 1 {
		t.Fatalf("20 triggers within the delay ran %d collections, want 1", got)
	}
	s.Trigger(true)
	if got := runs.Load(); got != 2 {
		t.Fatalf("a synchronous trigger returned before collecting (runs=%d)", got)
	}
}

func TestSchedulerLogsAFailedCollectionThroughItsContext(t *testing.T) {
	var buf bytes.Buffer
	ctx := logging.With(logging.WithLogger(t.Context(), slog.New(slog.NewTextHandler(&buf, nil))), "service", "metadata")
	s := NewScheduler(ctx, func(context.Context) error { return errors.New("disk on fire") }, time.Hour)
	defer s.Close()
	s.Trigger(true)
	line := buf.String()
	if !strings.Contains(line, `msg="garbage collection failed"`) || !strings.Contains(line, "service=metadata") || !strings.Contains(line, `error="disk on fire"`) {
		t.Fatalf("log = %q, want the failure logged by the logger of the scheduler's context, with its fields", line)
	}
}
