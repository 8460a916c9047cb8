package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestMedianOfOddAndEvenCounts(t *testing.T) {
	for _, tc := range []struct {
		in   []time.Duration
		want time.Duration
		ok   bool
	}{
		{nil, 0, false},
		{[]time.Duration{5}, 5, true},
		{[]time.Duration{9, 1, 5}, 5, true},
		{[]time.Duration{4, 1, 3, 2}, 2, true}, // (2+3)/2 in integer nanoseconds
		{[]time.Duration{10, 30}, 20, true},
	} {
		got, ok := median(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("median(%v) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestMedianLeavesSamplesInOrder(t *testing.T) {
	in := []time.Duration{3, 1, 2}
	median(in)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Fatalf("median reordered its input: %v", in)
	}
}

func TestRatioIsFlotillaOverContainerd(t *testing.T) {
	r := &result{unit: time.Millisecond, samples: map[string][]time.Duration{
		"containerd": {100 * time.Millisecond},
		"flotilla":   {150 * time.Millisecond},
	}, errs: map[string]error{}}
	if got := r.row().ratioText(); got != "1.50" {
		t.Errorf("ratio = %s, want 1.50", got)
	}
	r.errs["flotilla"] = errors.New("boom")
	if got := r.row().ratioText(); got != "n/a" {
		t.Errorf("ratio with a failed daemon = %s, want n/a", got)
	}
}

func TestMetComparesTheRatioAsShown(t *testing.T) {
	ratio := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		r    row
		want string
	}{
		{row{Ratio: ratio(1.004), Target: &target{Max: 1.0, Issue: 9}}, "yes"}, // shown as 1.00
		{row{Ratio: ratio(1.006), Target: &target{Max: 1.0, Issue: 9}}, "no"},  // shown as 1.01
		{row{Ratio: ratio(1.6), Target: &target{Max: 1.5, Issue: 9}}, "no"},
		{row{Target: &target{Max: 1.0, Issue: 9}}, "n/a"},
		{row{Ratio: ratio(3)}, ""},
	} {
		if got := tc.r.met(); got != tc.want {
			t.Errorf("met(ratio %v, target %v) = %q, want %q", tc.r.Ratio, tc.r.Target, got, tc.want)
		}
	}
}

func TestReportShowsSkippedDaemonAndErrors(t *testing.T) {
	r := &result{name: "ingest", what: "w", unit: time.Millisecond, target: &target{Max: 1, Issue: 9}, samples: map[string][]time.Duration{
		"containerd": {12 * time.Millisecond, 14 * time.Millisecond, 13 * time.Millisecond},
	}, errs: map[string]error{"flotilla": errors.New("prepare: lease\nwith detail")}}
	var b strings.Builder
	rep := &report{Date: time.Unix(0, 0), Commit: "abc1234", Host: "h", Go: "go", Iterations: 3, Calls: 10,
		Daemons: []daemonInfo{{Name: "containerd", Version: "2.4.2"}, {Name: "flotilla", Skipped: "no flotillad"}},
		Rows:    []row{r.row()}}
	if err := writeMarkdown(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"| ingest | ms | 13.0 | error | n/a | ≤ 1.00 | n/a | 3/0 |", "flotilla failed: prepare: lease with detail",
		"flotilla: not measured: no flotillad", "commit abc1234", "partial run"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatKeepsThreeSignificantFigures(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		unit time.Duration
		want string
	}{
		{1234 * time.Millisecond, time.Millisecond, "1234"},
		{12345 * time.Microsecond, time.Millisecond, "12.3"},
		{1500 * time.Microsecond, time.Millisecond, "1.50"},
		{187 * time.Microsecond, time.Microsecond, "187"},
	} {
		if got := formatIn(tc.d, tc.unit); got != tc.want {
			t.Errorf("formatIn(%v, %v) = %s, want %s", tc.d, tc.unit, got, tc.want)
		}
	}
}

func TestUnknownWorkloadIsRejected(t *testing.T) {
	all := []workload{{name: "ingest"}, {name: "read"}}
	if _, err := selectWorkloads(all, "ingest,bogus"); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("err = %v, want one naming the unknown workload", err)
	}
	got, err := selectWorkloads(all, "read")
	if err != nil || len(got) != 1 || got[0].name != "read" {
		t.Fatalf("selectWorkloads(read) = %v, %v", got, err)
	}
}

func TestOnlySelectsGroupsInTheOrderOfAll(t *testing.T) {
	all := []workload{{name: "run"}, {name: "memory-idle", group: "memory"}, {name: "memory-10running", group: "memory"}}
	got, err := selectWorkloads(all, "memory,run")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range got {
		names = append(names, w.name)
	}
	// In the order of all, not of -only: run keeps an image that earlier
	// workloads must not find.
	if strings.Join(names, ",") != "run,memory-idle,memory-10running" {
		t.Fatalf("selectWorkloads(memory,run) = %v", names)
	}
}

func TestReportShowsFloorColumnAndMiB(t *testing.T) {
	run := &result{name: "run", what: "w", unit: time.Millisecond, samples: map[string][]time.Duration{
		"containerd": {80 * time.Millisecond}, "flotilla": {88 * time.Millisecond}, floorName: {24 * time.Millisecond},
	}, errs: map[string]error{}}
	mem := &result{name: "memory-idle", what: "w", unit: unitMiB, samples: map[string][]time.Duration{
		"containerd": {50 << 20}, "flotilla": {75 << 20},
	}, errs: map[string]error{}}
	var b strings.Builder
	rep := &report{Date: time.Unix(0, 0), Host: "h", Go: "go", Iterations: 1, Calls: 1, Rows: []row{run.row(), mem.row()}}
	if err := writeMarkdown(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"| runc floor |", "| run | ms | 80.0 | 88.0 | 1.10 | — |  | 24.0 | 1/1 |", "| memory-idle | MiB | 50.0 | 75.0 | 1.50 | — |  | — | 1/1 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestStatsSummariseInTheUnit(t *testing.T) {
	ds := []time.Duration{5 * time.Millisecond, 1 * time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	st, ok := statsOf(ds, time.Millisecond)
	if !ok || st != (stats{N: 5, Median: 3, Min: 1, P25: 2, P75: 4, Max: 5}) {
		t.Fatalf("statsOf = %+v, %v", st, ok)
	}
	if _, ok := statsOf(nil, time.Millisecond); ok {
		t.Fatal("statsOf(nil) claims figures")
	}
}
