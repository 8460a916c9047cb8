package main

import (
	"fmt"
	"io"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-project/flotilla/pkg/tracing"
)

// The trace command reads the span files every process writes when
// flotillad's config says [trace] file = true, straight from the state
// directory: it runs on the daemon's machine, and the files are the whole
// truth (the daemon keeps no spans of its own).

// barWidth is the width of the waterfall's bars, in characters.
const barWidth = 40

func traceCmd(g *globals) *cobra.Command {
	var state string
	var n int
	var o outputFlags
	cmd := &cobra.Command{
		Use:   "trace [--state <dir>] last | <trace id> | ls [-n 20]",
		Short: "Draw a client call across processes as a waterfall (needs [trace] file = true)",
		Long: `Draw a client call across the processes it touched as a waterfall.

  last        draw the most recent client call
  <trace id>  draw that trace (a unique prefix will do)
  ls          list the most recent traces (-o json|yaml, -q for ids)

Spans are read from <state>/traces, written when flotillad's config has
[trace] file = true. The state directory defaults to the directory of the
daemon's socket.`,
		Args: exactArgs(1, "one of: last, ls, a trace id"),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"last", "ls"}, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			if state == "" {
				state = g.stateDir()
			}
			dir := filepath.Join(state, "traces")
			spans, err := tracing.ReadFileSpans(dir)
			if err != nil {
				return err
			}
			traces := groupTraces(spans)
			if len(traces) == 0 {
				return fmt.Errorf("no spans in %s", dir)
			}
			out := g.stdout
			switch arg := args[0]; arg {
			case "ls", "list":
				return listTraces(traces, n, o, out)
			case "last":
				return drawTrace(lastCall(traces), out)
			default:
				t, err := findTrace(traces, strings.ToLower(arg))
				if err != nil {
					return err
				}
				return drawTrace(t, out)
			}
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "flotillad's state directory (default: the socket's directory)")
	cmd.Flags().IntVarP(&n, "n", "n", 20, "traces listed by ls")
	o.register(cmd.Flags())
	completeOutput(cmd)
	return cmd
}

// spanTrace is one trace's spans as a tree.
type spanTrace struct {
	id       string
	spans    []*tracing.FileSpan
	roots    []*tracing.FileSpan // spans whose parent is in no file
	children map[string][]*tracing.FileSpan
	start    time.Time
	end      time.Time
}

func groupTraces(spans []tracing.FileSpan) map[string]*spanTrace {
	traces := map[string]*spanTrace{}
	seen := map[string]bool{}
	for i := range spans {
		s := &spans[i]
		// A rotated file and its successor may overlap by a batch.
		if key := s.TraceID + "/" + s.SpanID; seen[key] {
			continue
		} else {
			seen[key] = true
		}
		t, ok := traces[s.TraceID]
		if !ok {
			t = &spanTrace{id: s.TraceID, children: map[string][]*tracing.FileSpan{}, start: s.Start, end: s.End}
			traces[s.TraceID] = t
		}
		t.spans = append(t.spans, s)
		if s.Start.Before(t.start) {
			t.start = s.Start
		}
		if s.End.After(t.end) {
			t.end = s.End
		}
	}
	for _, t := range traces {
		ids := map[string]bool{}
		for _, s := range t.spans {
			ids[s.SpanID] = true
		}
		for _, s := range t.spans {
			if s.ParentID != "" && ids[s.ParentID] {
				t.children[s.ParentID] = append(t.children[s.ParentID], s)
			} else {
				t.roots = append(t.roots, s)
			}
		}
		byStart := func(l []*tracing.FileSpan) {
			sort.SliceStable(l, func(i, j int) bool { return l[i].Start.Before(l[j].Start) })
		}
		byStart(t.roots)
		for _, c := range t.children {
			byStart(c)
		}
	}
	return traces
}

// clientCall reports whether a trace began as a client's call to the
// gateway, rather than as a service's own work (a scheduled garbage
// collection, an event published after the call returned).
func (t *spanTrace) clientCall() bool {
	for _, r := range t.roots {
		if r.Service == tracing.ServiceName("gateway") && r.Kind == "server" {
			return true
		}
	}
	return false
}

// lastCall is the trace of the most recent client call, or the most recent
// trace of any kind if no client call was traced.
func lastCall(traces map[string]*spanTrace) *spanTrace {
	var best, bestAny *spanTrace
	for _, t := range traces {
		if bestAny == nil || t.start.After(bestAny.start) {
			bestAny = t
		}
		if t.clientCall() && (best == nil || t.start.After(best.start)) {
			best = t
		}
	}
	if best != nil {
		return best
	}
	return bestAny
}

func findTrace(traces map[string]*spanTrace, id string) (*spanTrace, error) {
	if t, ok := traces[id]; ok {
		return t, nil
	}
	var found []*spanTrace
	for k, t := range traces {
		if strings.HasPrefix(k, id) {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no trace %s in the span files", id)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%d traces begin with %s; give more of the id", len(found), id)
}

// traceView is one trace as `trace ls` lists it.
type traceView struct {
	ID       string    `json:"id"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"durationSeconds"`
	Spans    int       `json:"spans"`
	Services []string  `json:"services"`
	Root     string    `json:"root"`
}

func listTraces(traces map[string]*spanTrace, n int, o outputFlags, out io.Writer) error {
	all := make([]*spanTrace, 0, len(traces))
	for _, t := range traces {
		all = append(all, t)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].start.After(all[j].start) })
	if n > 0 && len(all) > n {
		all = all[:n]
	}
	views := make([]traceView, 0, len(all))
	for _, t := range all {
		root := "-"
		if len(t.roots) > 0 {
			root = shortService(t.roots[0].Service) + " " + shortName(t.roots[0].Name)
		}
		views = append(views, traceView{ID: t.id, Started: t.start, Seconds: t.end.Sub(t.start).Seconds(),
			Spans: len(t.spans), Services: t.services(), Root: root})
	}
	return writeList(out, o, views, func(v traceView) string { return v.ID }, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "TRACE\tSTARTED\tDURATION\tSPANS\tSERVICES\tROOT")
		for _, v := range views {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", v.ID, v.Started.Local().Format("15:04:05.000"),
				duration(time.Duration(v.Seconds*float64(time.Second))), v.Spans, strings.Join(v.Services, ","), v.Root)
		}
	})
}

func (t *spanTrace) services() []string {
	set := map[string]bool{}
	for _, s := range t.spans {
		set[shortService(s.Service)] = true
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

type waterfallRow struct {
	span  *tracing.FileSpan
	depth int
}

// drawTrace prints one line per span, depth first from the roots, each
// indented under its parent, with a bar placed on the trace's time line.
func drawTrace(t *spanTrace, out io.Writer) error {
	var rows []waterfallRow
	var walk func(s *tracing.FileSpan, depth int)
	walk = func(s *tracing.FileSpan, depth int) {
		rows = append(rows, waterfallRow{s, depth})
		for _, c := range t.children[s.SpanID] {
			walk(c, depth+1)
		}
	}
	for _, r := range t.roots {
		walk(r, 0)
	}
	total := t.end.Sub(t.start)
	fmt.Fprintf(out, "trace %s  %s  %s, %d spans across %s\n\n", t.id,
		t.start.Local().Format("2006-01-02 15:04:05.000"), duration(total), len(t.spans), strings.Join(t.services(), ", "))

	svcW, nameW := len("SERVICE"), len("SPAN")
	for _, r := range rows {
		svcW = max(svcW, len(shortService(r.span.Service)))
		nameW = max(nameW, 2*r.depth+len(shortName(r.span.Name)))
	}
	nameW = min(nameW, 72)
	fmt.Fprintf(out, "%-*s  %-*s  %-6s  %9s  %9s  %s\n", svcW, "SERVICE", nameW, "SPAN", "KIND", "START", "DURATION", "TIMELINE")
	for _, r := range rows {
		s := r.span
		name := strings.Repeat("  ", r.depth) + shortName(s.Name)
		if len(name) > nameW {
			name = name[:nameW-1] + "…"
		}
		line := fmt.Sprintf("%-*s  %-*s  %-6s  %9s  %9s  |%s|", svcW, shortService(s.Service), nameW, name,
			s.Kind, duration(s.Start.Sub(t.start)), duration(s.End.Sub(s.Start)), bar(s.Start.Sub(t.start), s.End.Sub(s.Start), total))
		if s.Error != "" {
			line += " ✗ " + s.Error
		}
		fmt.Fprintln(out, strings.TrimRight(line, " "))
	}
	return nil
}

// bar draws a span starting off into the trace and lasting d, on a line of
// barWidth characters standing for total; every span gets at least one.
func bar(off, d, total time.Duration) string {
	if total <= 0 {
		return strings.Repeat("█", barWidth)
	}
	from := int(float64(off) / float64(total) * barWidth)
	to := int(math.Ceil(float64(off+d) / float64(total) * barWidth))
	from = min(max(from, 0), barWidth-1)
	to = min(max(to, from+1), barWidth)
	return strings.Repeat(" ", from) + strings.Repeat("█", to-from) + strings.Repeat(" ", barWidth-to)
}

func shortService(s string) string { return strings.TrimPrefix(s, "flotilla-") }

// shortName drops the prefix every containerd API method shares.
func shortName(s string) string { return strings.TrimPrefix(s, "containerd.services.") }

func duration(d time.Duration) string {
	switch {
	case d < 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3fs", d.Seconds())
	}
}
