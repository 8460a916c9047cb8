package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/flotilla-project/flotilla/internal/svcstat"
	"github.com/flotilla-project/flotilla/pkg/metrics"
	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

// top shows the graph live: the supervisor's view of each service (admin
// Services: state, pid, restarts) beside what the service's own metrics
// socket says (CPU, memory, calls, latency, errors). The sockets are found
// in Introspection, where every service exports its "metrics" socket, and
// read directly: top runs on the daemon's machine, as root.

func topCmd(g *globals) *cobra.Command {
	var once bool
	var interval time.Duration
	var o outputFlags
	cmd := &cobra.Command{
		Use:   "top [--once] [-i 2s]",
		Short: "A live view of the graph: per service state, pid, restarts, CPU, memory, calls/s, p99, errors",
		Long: `A live view of the graph, refreshed in place: per service its state, pid
and restarts (from the supervisor), and from the service's own metrics its
CPU (% of one CPU), memory (RSS), calls served per second, the 99th
percentile latency of those calls and how many failed (any code but OK) in
the last interval. The gateway's row is flotillad's own process.

--once measures one interval and prints one frame, for scripts.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			if interval <= 0 {
				return usagef("--interval %s: want more than 0", interval)
			}
			src, err := newTopSource(g)
			if err != nil {
				return err
			}
			defer src.close()
			ctx := cmd.Context()
			if _, err := src.frame(ctx); err != nil {
				return err
			}
			tty := !once && o.format == "table" && isTerminal(g.stdout)
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				rows, err := src.frame(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				var buf bytes.Buffer
				if err := printTop(&buf, o, g.socket(), interval, rows); err != nil {
					return err
				}
				if tty {
					drawInPlace(g.stdout, buf.Bytes())
				} else {
					_, _ = g.stdout.Write(buf.Bytes())
				}
				if once {
					return nil
				}
				if !tty && o.format == "table" {
					fmt.Fprintln(g.stdout)
				}
			}
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "measure one interval, print one frame and exit")
	cmd.Flags().DurationVarP(&interval, "interval", "i", 2*time.Second, "time between frames (and the interval --once measures)")
	o.register(cmd.Flags())
	completeOutput(cmd)
	return cmd
}

// topRow is one process of the graph in one frame.
type topRow struct {
	Name        string   `json:"name"`
	State       string   `json:"state"`
	Pid         int64    `json:"pid"`
	Restarts    int64    `json:"restarts"`
	CPUPercent  *float64 `json:"cpuPercent"`
	MemoryBytes uint64   `json:"memoryBytes"`
	CallsPerSec *float64 `json:"callsPerSecond"`
	P99Seconds  *float64 `json:"p99Seconds"`
	Errors      *float64 `json:"errors"`
	ErrorsTotal *float64 `json:"errorsTotal"`
	// Metrics says why a row has no call figures, when it has none.
	Metrics string `json:"metricsError,omitempty"`
}

type topSource struct {
	g       *globals
	admin   adminpb.AdminClient
	intro   introspection.IntrospectionClient
	closeFn func() error
	scraper *svcstat.Scraper
	// prev is each service's last sample, by name and pid: a new process
	// starts its counters anew.
	prev map[string]prevSample
}

type prevSample struct {
	pid    int64
	sample svcstat.Sample
}

func newTopSource(g *globals) (*topSource, error) {
	conn, err := g.dial()
	if err != nil {
		return nil, err
	}
	return &topSource{
		g: g, admin: adminpb.NewAdminClient(conn), intro: introspection.NewIntrospectionClient(conn),
		closeFn: conn.Close, scraper: svcstat.NewScraper(), prev: map[string]prevSample{},
	}, nil
}

func (s *topSource) close() {
	s.scraper.Close()
	_ = s.closeFn()
}

// frame samples every process once and returns the rows measured against
// the previous samples.
func (s *topSource) frame(ctx context.Context) ([]topRow, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	svcs, err := s.admin.Services(ctx, &adminpb.ServicesRequest{})
	if err != nil {
		return nil, err
	}
	sockets, gatewayPid := map[string]string{}, int64(0)
	if resp, err := s.intro.Plugins(ctx, &introspection.PluginsRequest{}); err == nil {
		for _, p := range resp.GetPlugins() {
			name := p.GetID()
			if svc := p.GetExports()["service"]; svc != "" {
				name = svc // a snapshotter is listed by its snapshotter's name
			}
			if m := p.GetExports()["metrics"]; m != "" {
				sockets[name] = m
			}
			if p.GetID() == "version" && gatewayPid == 0 {
				gatewayPid, _ = strconv.ParseInt(p.GetExports()["pid"], 10, 64)
			}
		}
	}

	var rows []topRow
	if gatewayPid > 0 {
		rows = append(rows, s.gatewayRow(gatewayPid))
	}
	for _, svc := range svcs.GetServices() {
		r := topRow{Name: svc.GetName(), State: svc.GetState(), Pid: svc.GetPid(), Restarts: svc.GetRestarts(), MemoryBytes: svc.GetRssBytes()}
		sock := sockets[r.Name]
		switch {
		case r.Pid <= 0:
			delete(s.prev, r.Name)
		case sock == "":
			r.Metrics = "no metrics socket exported"
		default:
			cur, err := s.scraper.Scrape(ctx, sock)
			if err != nil {
				r.Metrics = err.Error()
				break
			}
			if p, ok := s.prev[r.Name]; ok && p.pid == r.Pid {
				r.setStats(svcstat.Between(p.sample, cur))
			}
			s.prev[r.Name] = prevSample{r.Pid, cur}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func (r *topRow) setStats(st svcstat.Stats) {
	r.CPUPercent, r.CallsPerSec, r.Errors, r.ErrorsTotal = ptr(st.CPUPercent), ptr(st.CallsPerSec), ptr(st.Errors), ptr(st.ErrorsTotal)
	if !math.IsNaN(st.P99) {
		r.P99Seconds = ptr(st.P99)
	}
	if st.RSS > 0 {
		r.MemoryBytes = uint64(st.RSS)
	}
}

func ptr(f float64) *float64 { return &f }

// gatewayRow is flotillad's own process, read from /proc: its metrics are
// served only on the TCP address of its config, if any.
func (s *topSource) gatewayRow(pid int64) topRow {
	r := topRow{Name: "gateway", State: "running", Pid: pid, Metrics: "flotillad's calls are on its [metrics] address"}
	if rss, ok := metrics.RSS(int(pid)); ok {
		r.MemoryBytes = rss
	}
	cpu, ok := procCPUSeconds(int(pid))
	if !ok {
		return r
	}
	cur := svcstat.Sample{At: time.Now(), CPUSeconds: cpu}
	if p, ok := s.prev["gateway"]; ok && p.pid == pid {
		st := svcstat.Between(p.sample, cur)
		r.CPUPercent = ptr(st.CPUPercent)
	}
	s.prev["gateway"] = prevSample{pid, cur}
	return r
}

// procCPUSeconds is a process's user and system CPU time from
// /proc/<pid>/stat, in seconds.
func procCPUSeconds(pid int) (float64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name may hold blanks and parentheses: fields are
	// counted after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	const clkTck = 100 // USER_HZ, 100 on every Linux architecture Go runs on
	return (utime + stime) / clkTck, true
}

func printTop(out io.Writer, o outputFlags, socket string, interval time.Duration, rows []topRow) error {
	if o.format == "table" && !o.quiet {
		fmt.Fprintf(out, "flotilla top  %s  %s  every %s\n\n", socket, time.Now().Format("15:04:05"), interval)
	}
	return writeList(out, o, rows, func(r topRow) string { return r.Name }, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "SERVICE\tSTATE\tPID\tRESTARTS\tCPU%\tMEMORY\tCALLS/S\tP99\tERRORS")
		for _, r := range rows {
			pid, mem := "-", "-"
			if r.Pid > 0 {
				pid = strconv.FormatInt(r.Pid, 10)
			}
			if r.MemoryBytes > 0 {
				mem = bytesString(r.MemoryBytes)
			}
			p99 := "-"
			if r.P99Seconds != nil {
				p99 = duration(time.Duration(*r.P99Seconds * float64(time.Second)))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Name, oneWord(r.State), pid, r.Restarts,
				number(r.CPUPercent, 1), mem, number(r.CallsPerSec, 1), p99, number(r.Errors, 0))
		}
	})
}

func number(f *float64, prec int) string {
	if f == nil {
		return "-"
	}
	return strconv.FormatFloat(*f, 'f', prec, 64)
}

// drawInPlace redraws the screen with frame, cut to the terminal's size.
func drawInPlace(out io.Writer, frame []byte) {
	width, height := 0, 0
	if f, ok := out.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
			width, height = int(ws.Col), int(ws.Row)
		}
	}
	lines := strings.Split(strings.TrimRight(string(frame), "\n"), "\n")
	if height > 1 && len(lines) > height-1 {
		lines = lines[:height-1]
	}
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J") // home, clear the screen
	for _, l := range lines {
		if width > 0 && len([]rune(l)) > width {
			l = string([]rune(l)[:width])
		}
		b.WriteString(l)
		b.WriteString("\n")
	}
	_, _ = io.WriteString(out, b.String())
}
