package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// result is one row's samples on every daemon it ran on: a workload's
// figure, or one of its further figures (the memory workloads' RSS).
type result struct {
	name, title, what string
	unit              time.Duration
	target            *target
	samples           map[string][]time.Duration
	errs              map[string]error
}

func newResult(w workload) *result {
	var t *target
	if tg, ok := targets[w.name]; ok {
		t = &tg
	}
	return &result{name: w.name, title: w.title, what: w.what, unit: w.unit, target: t,
		samples: map[string][]time.Duration{}, errs: map[string]error{}}
}

// figureResult is the row of w's further figure f; no target applies to it.
func figureResult(w workload, f figure) *result {
	return &result{name: w.name + "-" + f.name, title: f.title, what: f.what, unit: w.unit,
		samples: map[string][]time.Duration{}, errs: map[string]error{}}
}

// target is the most a workload's ratio (flotilla/containerd) may be, and
// the issue that sets it.
type target struct {
	Max   float64 `json:"max"`
	Issue int     `json:"issue"`
}

// targets are the issues' targets by workload. Issue 9's are the current
// ones; where issue 9 sets none, an earlier issue's still stands.
var targets = map[string]target{
	"ingest":           {1.0, 9},
	"read":             {1.0, 9},
	"namespaces":       {1.3, 9},
	"memory-idle":      {1.5, 9},
	"memory-10running": {1.1, 9},
	"ctr-create":       {1.0, 9},
	"ctr-start":        {1.0, 9},
	"ctr-status":       {1.0, 9},
	"ctr-remove":       {1.0, 9},
	"img-list":         {1.0, 9},
	"img-status":       {1.0, 9},
	"run":              {1.0, 9},
	"unpack-gosrc":     {1.0, 9},
	"unpack":           {0.8, 3},
	"snapshots":        {1.0, 3},
	"pod-run":          {1.0, 5},
	"pod-stop":         {1.0, 5},
	"pod-remove":       {1.0, 5},
	"cri-pull":         {1.0, 5},
	"pull-gosrc":       {0.8, 10},
	"cri-pull-gosrc":   {0.8, 10},
}

// currentIssue is the issue whose targets the report is about; targets
// of other issues are marked with theirs.
const currentIssue = 9

// median of ds; false when there are none. With an even count it is the
// mean of the two middle values.
func median(ds []time.Duration) (time.Duration, bool) {
	if len(ds) == 0 {
		return 0, false
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m], true
	}
	return (s[m-1] + s[m]) / 2, true
}

// formatIn prints d in unit with three significant figures' worth of
// decimals, without the unit (the table header carries it).
func formatIn(d, unit time.Duration) string {
	return formatValue(float64(d) / float64(unit))
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func unitName(u time.Duration) string {
	switch u {
	case time.Microsecond:
		return "µs"
	case time.Millisecond:
		return "ms"
	case time.Second:
		return "s"
	case unitMiB:
		return "MiB"
	}
	return u.String()
}

// report is one run: what bench/results/<stem>.json holds. The markdown
// report beside it and the README's performance table are both rendered
// from it, so neither says anything the run did not measure.
type report struct {
	Date time.Time `json:"date"`
	// Commit is the source tree's HEAD, short, "-dirty" with uncommitted
	// changes (bench/results aside).
	Commit string `json:"commit"`
	// Complete is every workload on both daemons: no -only, no daemon
	// skipped. Only a complete report goes into the README.
	Complete bool   `json:"complete"`
	Host     string `json:"host"`
	// Load is the host's 1-minute load average when the run started and
	// when it ended: other work on the machine, which the figures share it
	// with.
	Load       string       `json:"load,omitempty"`
	Go         string       `json:"go"`
	Iterations int          `json:"iterations"`
	Calls      int          `json:"calls"`
	Runs       int          `json:"runs"`
	Pods       int          `json:"pods,omitempty"`
	Daemons    []daemonInfo `json:"daemons"`
	Notes      []string     `json:"notes,omitempty"`
	Rows       []row        `json:"rows"`
}

type daemonInfo struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Shim    string `json:"shim,omitempty"`
	Skipped string `json:"skipped,omitempty"`
}

// row is one workload figure: its statistics on each daemon (and the runc
// floor), in Unit.
type row struct {
	Name   string            `json:"name"`
	Title  string            `json:"title"`
	What   string            `json:"what"`
	Unit   string            `json:"unit"`
	Stats  map[string]stats  `json:"stats,omitempty"`
	Errors map[string]string `json:"errors,omitempty"`
	// Ratio is flotilla's median over containerd's; absent when either
	// has none or failed.
	Ratio  *float64 `json:"ratio,omitempty"`
	Target *target  `json:"target,omitempty"`
}

type stats struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	P25    float64 `json:"p25"`
	P75    float64 `json:"p75"`
	Max    float64 `json:"max"`
}

// statsOf summarises ds in unit (rounded to a thousandth: the samples'
// own precision is far coarser).
func statsOf(ds []time.Duration, unit time.Duration) (stats, bool) {
	m, ok := median(ds)
	if !ok {
		return stats{}, false
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	in := func(d time.Duration) float64 { return math.Round(float64(d)/float64(unit)*1000) / 1000 }
	q := func(p float64) time.Duration { return s[int(math.Round(p*float64(len(s)-1)))] }
	return stats{N: len(s), Median: in(m), Min: in(s[0]), P25: in(q(0.25)), P75: in(q(0.75)), Max: in(s[len(s)-1])}, true
}

func (r *result) row() row {
	out := row{Name: r.name, Title: r.title, What: r.what, Unit: unitName(r.unit), Target: r.target,
		Stats: map[string]stats{}, Errors: map[string]string{}}
	for d, ds := range r.samples {
		if st, ok := statsOf(ds, r.unit); ok && r.errs[d] == nil {
			out.Stats[d] = st
		}
	}
	for d, err := range r.errs {
		out.Errors[d] = firstLine(err.Error())
	}
	// The ratio from the unrounded medians.
	f, okF := median(r.samples["flotilla"])
	c, okC := median(r.samples["containerd"])
	if okF && okC && c > 0 && r.errs["flotilla"] == nil && r.errs["containerd"] == nil {
		ratio := math.Round(float64(f)/float64(c)*1000) / 1000
		out.Ratio = &ratio
	}
	return out
}

// cell is a daemon's median for a table, or why there is none.
func (r row) cell(daemon string) string {
	if _, failed := r.Errors[daemon]; failed {
		return "error"
	}
	st, ok := r.Stats[daemon]
	if !ok {
		return "—"
	}
	return formatValue(st.Median)
}

func (r row) ratioText() string {
	if r.Ratio == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *r.Ratio)
}

// met says whether the ratio is within the target: "" without a target,
// "n/a" without a ratio. The ratio is compared as the table shows it,
// rounded to two decimals.
func (r row) met() string {
	switch {
	case r.Target == nil:
		return ""
	case r.Ratio == nil:
		return "n/a"
	case math.Round(*r.Ratio*100)/100 <= r.Target.Max:
		return "yes"
	default:
		return "no"
	}
}

func (r row) targetText() string {
	if r.Target == nil {
		return "—"
	}
	s := fmt.Sprintf("≤ %.2f", r.Target.Max)
	if r.Target.Issue != currentIssue {
		s += fmt.Sprintf(" (issue %d)", r.Target.Issue)
	}
	return s
}

func (rep *report) daemon(name string) (daemonInfo, bool) {
	for _, d := range rep.Daemons {
		if d.Name == name {
			return d, true
		}
	}
	return daemonInfo{}, false
}

// writeMarkdown writes rep as the markdown report.
func writeMarkdown(w io.Writer, rep *report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Flotilla vs containerd %s\n\n", containerdVersion)
	cri := ""
	if rep.Pods > 0 {
		cri = fmt.Sprintf("; cri: %d pods or containers each", rep.Pods)
	}
	complete := "complete run (every workload, both daemons)"
	if !rep.Complete {
		complete = "partial run"
	}
	load := ""
	if rep.Load != "" {
		load = ", load average " + rep.Load
	}
	fmt.Fprintf(&b, "%s, commit %s, %s%s, %s; %s. Iterations: %d per workload (latency workloads: %d calls each; run: %d containers each%s), daemons alternated A/B.\n\n",
		rep.Date.UTC().Format("2006-01-02 15:04 UTC"), rep.Commit, rep.Host, load, rep.Go, complete, rep.Iterations, rep.Calls, rep.Runs, cri)
	for _, d := range rep.Daemons {
		if d.Skipped != "" {
			fmt.Fprintf(&b, "- %s: not measured: %s\n", d.Name, d.Skipped)
			continue
		}
		fmt.Fprintf(&b, "- %s: version %s", d.Name, d.Version)
		if d.Shim != "" {
			fmt.Fprintf(&b, ", shim %s", d.Shim)
		}
		b.WriteString("\n")
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "- note: %s\n", n)
	}
	// The floor column only when a row has one (the container runs).
	floor := slices.ContainsFunc(rep.Rows, func(r row) bool {
		_, ok := r.Stats[floorName]
		_, failed := r.Errors[floorName]
		return ok || failed
	})
	b.WriteString("\n| workload | unit | containerd median | flotilla median | flotilla/containerd | target | met |")
	if floor {
		b.WriteString(" runc floor |")
	}
	b.WriteString(" samples (c/f) |\n|---|---|---:|---:|---:|---|---|")
	if floor {
		b.WriteString("---:|")
	}
	b.WriteString("---|\n")
	for _, r := range rep.Rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |", r.Name, r.Unit,
			r.cell("containerd"), r.cell("flotilla"), r.ratioText(), r.targetText(), r.met())
		if floor {
			fmt.Fprintf(&b, " %s |", r.cell(floorName))
		}
		fmt.Fprintf(&b, " %d/%d |\n", r.Stats["containerd"].N, r.Stats["flotilla"].N)
	}
	fmt.Fprintf(&b, "\nRatio above 1: Flotilla takes longer (e.g. 1.30 = 30%% slower), or for MiB rows uses more memory, than containerd. Target: the most the ratio may be, set by issue %d unless marked; met compares the ratio as shown, rounded to two decimals. Memory ratios are on PSS; the -rss rows show RSS beside it.", currentIssue)
	if floor {
		b.WriteString(" The runc floor is `runc run` alone on a prepared bundle: no daemon, shim or snapshotter.")
	}
	b.WriteString("\n\n")
	for _, r := range rep.Rows {
		fmt.Fprintf(&b, "- **%s**: %s\n", r.Name, r.What)
		for _, name := range []string{"containerd", "flotilla", floorName} {
			if e, ok := r.Errors[name]; ok {
				fmt.Fprintf(&b, "  - %s failed: %s\n", name, e)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// firstLine flattens a multi-line error (one with a log tail) into one
// table-friendly line.
func firstLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	s = strings.Join(parts, " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
