package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// result is one workload's samples on every daemon it ran on.
type result struct {
	name, what string
	unit       time.Duration
	samples    map[string][]time.Duration
	errs       map[string]error
}

func newResult(w workload) *result {
	return &result{name: w.name, what: w.what, unit: w.unit, samples: map[string][]time.Duration{}, errs: map[string]error{}}
}

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
	v := float64(d) / float64(unit)
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

// cell is a daemon's median for the table, or why there is none.
func (r *result) cell(daemon string) string {
	if err := r.errs[daemon]; err != nil {
		return "error"
	}
	m, ok := median(r.samples[daemon])
	if !ok {
		return "—"
	}
	return formatIn(m, r.unit)
}

// ratio is flotilla's median over containerd's: above 1 Flotilla is slower.
func (r *result) ratio(flotilla, containerd string) string {
	f, okF := median(r.samples[flotilla])
	c, okC := median(r.samples[containerd])
	if !okF || !okC || c == 0 || r.errs[flotilla] != nil || r.errs[containerd] != nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", float64(f)/float64(c))
}

type reportMeta struct {
	date      time.Time
	host      string
	versions  map[string]string
	skipped   map[string]string
	n, calls  int
	runs      int
	pods      int // pods or containers per iteration of the cri workloads; 0 when none ran
	goVersion string
	shims     map[string]string // daemon -> the shim binary it runs containers with
}

// writeMarkdown writes the results as a markdown report.
func writeMarkdown(w io.Writer, meta reportMeta, results []*result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Flotilla vs containerd %s\n\n", containerdVersion)
	cri := ""
	if meta.pods > 0 {
		cri = fmt.Sprintf("; cri: %d pods or containers each", meta.pods)
	}
	fmt.Fprintf(&b, "%s, %s, %s. Iterations: %d per workload (latency workloads: %d calls each; run: %d containers each%s), daemons alternated A/B.\n\n",
		meta.date.UTC().Format("2006-01-02 15:04 UTC"), meta.host, meta.goVersion, meta.n, meta.calls, meta.runs, cri)
	for _, name := range []string{"containerd", "flotilla"} {
		if v, ok := meta.versions[name]; ok {
			fmt.Fprintf(&b, "- %s: version %s", name, v)
			if shim := meta.shims[name]; shim != "" {
				fmt.Fprintf(&b, ", shim %s", shim)
			}
			b.WriteString("\n")
		}
		if why, ok := meta.skipped[name]; ok {
			fmt.Fprintf(&b, "- %s: not measured: %s\n", name, firstLine(why))
		}
	}
	// The floor column only when a workload has one (the container runs).
	floor := slices.ContainsFunc(results, func(r *result) bool {
		return len(r.samples[floorName]) > 0 || r.errs[floorName] != nil
	})
	b.WriteString("\n| workload | unit | containerd median | flotilla median | flotilla/containerd |")
	if floor {
		b.WriteString(" runc floor |")
	}
	b.WriteString(" samples (c/f) |\n|---|---|---:|---:|---:|")
	if floor {
		b.WriteString("---:|")
	}
	b.WriteString("---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |", r.name, unitName(r.unit),
			r.cell("containerd"), r.cell("flotilla"), r.ratio("flotilla", "containerd"))
		if floor {
			fmt.Fprintf(&b, " %s |", r.cell(floorName))
		}
		fmt.Fprintf(&b, " %d/%d |\n", len(r.samples["containerd"]), len(r.samples["flotilla"]))
	}
	b.WriteString("\nRatio above 1: Flotilla takes longer (e.g. 1.30 = 30% slower), or for MiB rows uses more memory, than containerd.")
	if floor {
		b.WriteString(" The runc floor is `runc run` alone on a prepared bundle: no daemon, shim or snapshotter.")
	}
	b.WriteString("\n\n")
	for _, r := range results {
		fmt.Fprintf(&b, "- **%s**: %s\n", r.name, r.what)
		for _, name := range []string{"containerd", "flotilla", floorName} {
			if err := r.errs[name]; err != nil {
				fmt.Fprintf(&b, "  - %s failed: %s\n", name, firstLine(err.Error()))
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
