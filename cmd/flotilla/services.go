package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

// dial connects to the daemon's socket; a socket that is not there is
// said at once, not after the dial's timeout.
func (g *globals) dial() (*grpc.ClientConn, error) {
	sock := g.socket()
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("no flotillad socket at %s (set --address or $FLOTILLA_ADDRESS): %w", sock, err)
	}
	return rpc.Dial(sock)
}

// containerd is a containerd client of the daemon's socket.
func (g *globals) containerd(opts ...containerd.Opt) (*containerd.Client, error) {
	sock := g.socket()
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("no flotillad socket at %s (set --address or $FLOTILLA_ADDRESS): %w", sock, err)
	}
	return containerd.New(sock, append([]containerd.Opt{containerd.WithTimeout(10 * time.Second)}, opts...)...)
}

// admin runs fn with an admin client, bounded by timeout.
func (g *globals) admin(ctx context.Context, timeout time.Duration, fn func(context.Context, adminpb.AdminClient) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return fn(ctx, adminpb.NewAdminClient(conn))
}

// completeServices offers the daemon's service names.
func completeServices(g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		_ = g.admin(cmd.Context(), 3*time.Second, func(ctx context.Context, c adminpb.AdminClient) error {
			resp, err := c.Services(ctx, &adminpb.ServicesRequest{})
			for _, s := range resp.GetServices() {
				names = append(names, s.GetName())
			}
			return err
		})
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// serviceView is one service as `services` prints it, in every format.
type serviceView struct {
	Name             string     `json:"name"`
	State            string     `json:"state"`
	Pid              int64      `json:"pid"`
	Restarts         int64      `json:"restarts"`
	OOMKills         int64      `json:"oomKills"`
	LastExit         string     `json:"lastExit"`
	StartedAt        *time.Time `json:"startedAt"`
	UptimeSeconds    float64    `json:"uptimeSeconds"`
	MemoryBytes      uint64     `json:"memoryBytes"`
	MemoryLimitBytes uint64     `json:"memoryLimitBytes"`
	CPULimit         float64    `json:"cpuLimit"`
	Cgroup           string     `json:"cgroup"`
	Socket           string     `json:"socket"`
	Error            string     `json:"error"`
}

func viewService(s *adminpb.ServiceStatus) serviceView {
	v := serviceView{
		Name: s.GetName(), State: s.GetState(), Pid: s.GetPid(), Restarts: s.GetRestarts(),
		OOMKills: s.GetOomKills(), LastExit: s.GetLastExit(), MemoryBytes: s.GetRssBytes(),
		MemoryLimitBytes: s.GetMemoryLimitBytes(), CPULimit: s.GetCpuLimit(), Cgroup: s.GetCgroup(),
		Socket: s.GetSocket(), Error: s.GetError(),
	}
	if s.GetStartedAt() != nil && s.GetPid() > 0 {
		t := s.GetStartedAt().AsTime()
		v.StartedAt = &t
	}
	if s.GetUptime() != nil && s.GetPid() > 0 {
		v.UptimeSeconds = s.GetUptime().AsDuration().Seconds()
	}
	return v
}

func servicesCmd(g *globals) *cobra.Command {
	var o outputFlags
	cmd := &cobra.Command{
		Use:     "services",
		Aliases: []string{"ps", "ls"},
		Short:   "List the service processes: state, pid, restarts, memory and limits",
		Example: "  flotilla services\n  flotilla services -o json | jq '.[] | select(.state != \"running\")'\n  flotilla services -q",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			var views []serviceView
			err := g.admin(cmd.Context(), 10*time.Second, func(ctx context.Context, c adminpb.AdminClient) error {
				resp, err := c.Services(ctx, &adminpb.ServicesRequest{})
				for _, s := range resp.GetServices() {
					views = append(views, viewService(s))
				}
				return err
			})
			if err != nil {
				return err
			}
			return printServices(g.stdout, o, views)
		},
	}
	o.register(cmd.Flags())
	completeOutput(cmd)
	return cmd
}

func printServices(out io.Writer, o outputFlags, views []serviceView) error {
	return writeList(out, o, views, func(v serviceView) string { return v.Name }, func(tw *tabwriter.Writer) {
		// One word a column (scripts split rows on blanks); the error,
		// which may hold blanks, comes last.
		fmt.Fprintln(tw, "NAME\tSTATE\tPID\tRESTARTS\tOOM-KILLS\tLAST-EXIT\tUPTIME\tMEMORY\tMEM-LIMIT\tCPU-LIMIT\tSOCKET\tERROR")
		for _, v := range views {
			pid, uptime, mem, limit, cpu := "-", "-", "-", "-", "-"
			if v.Pid > 0 {
				pid = strconv.FormatInt(v.Pid, 10)
				if v.UptimeSeconds > 0 {
					uptime = (time.Duration(v.UptimeSeconds * float64(time.Second))).Round(time.Second).String()
				}
			}
			if v.MemoryBytes > 0 {
				mem = bytesString(v.MemoryBytes)
			}
			if v.MemoryLimitBytes > 0 {
				limit = bytesString(v.MemoryLimitBytes)
			}
			if v.CPULimit > 0 {
				cpu = strconv.FormatFloat(v.CPULimit, 'f', -1, 64)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, oneWord(v.State), pid,
				v.Restarts, v.OOMKills, oneWord(v.LastExit), uptime, mem, limit, cpu, oneWord(v.Socket), v.Error)
		}
	})
}

func restartCmd(g *globals) *cobra.Command {
	var drain time.Duration
	cmd := &cobra.Command{
		Use:   "restart <service>",
		Short: "Restart a service gracefully: clients see latency, not errors",
		Long: `Restart a service gracefully: the gateway holds new calls to it, lets the
calls in flight finish (up to --drain), restarts the process, then releases
the held calls.`,
		Args:              exactArgs(1, "one service name"),
		ValidArgsFunction: completeServices(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			// The daemon bounds the restart (drain, then the process's
			// exit and start); this only keeps a wedged daemon from
			// hanging the tool.
			return g.admin(cmd.Context(), 2*drain+2*time.Minute, func(ctx context.Context, c adminpb.AdminClient) error {
				resp, err := c.Restart(ctx, &adminpb.RestartRequest{Name: name, DrainTimeout: durationpb.New(drain)})
				if err != nil {
					return err
				}
				s := resp.GetService()
				fmt.Fprintf(g.stdout, "restarted %s: pid %d, calls held for %s\n", name, s.GetPid(),
					resp.GetHeld().AsDuration().Round(time.Millisecond))
				if n := resp.GetAbandonedCalls(); n > 0 {
					fmt.Fprintf(g.stdout, "warning: %d call(s) were still in flight after %s and may have failed\n", n, drain)
				}
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&drain, "drain", 10*time.Second, "how long calls in flight may take to finish before the restart goes ahead")
	return cmd
}

// logsPollInterval is how often logs -f asks for new lines.
const logsPollInterval = 500 * time.Millisecond

// logsFollowWindow is how many of the last lines each poll of logs -f reads.
const logsFollowWindow = 2000

func logsCmd(g *globals) *cobra.Command {
	var n int
	var follow bool
	cmd := &cobra.Command{
		Use:               "logs [-n 100] [-f] <service>",
		Short:             "Print the last lines a service wrote (across its restarts); -f follows",
		Args:              exactArgs(1, "one service name"),
		ValidArgsFunction: completeServices(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 0 {
				return usagef("-n %d: want 0 (every line kept) or more", n)
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			c := adminpb.NewAdminClient(conn)
			fetch := func(lines int) ([]string, error) {
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				defer cancel()
				resp, err := c.Logs(ctx, &adminpb.LogsRequest{Name: args[0], Lines: int32(lines)})
				return resp.GetLines(), err
			}
			lines, err := fetch(n)
			if err != nil {
				return err
			}
			for _, l := range lines {
				fmt.Fprintln(g.stdout, l)
			}
			if !follow {
				return nil
			}
			return followLogs(cmd.Context(), g.stdout, lines, func() ([]string, error) { return fetch(logsFollowWindow) })
		},
	}
	cmd.Flags().IntVarP(&n, "lines", "n", 100, "number of lines; 0 for every line kept")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	return cmd
}

// followLogs polls for the last lines and prints those after the ones seen
// (the admin API returns a window of the last lines, not a stream): the new
// window is matched against the tail of what was printed.
func followLogs(ctx context.Context, out io.Writer, seen []string, fetch func() ([]string, error)) error {
	tick := time.NewTicker(logsPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		lines, err := fetch()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fresh := newLines(seen, lines)
		for _, l := range fresh {
			fmt.Fprintln(out, l)
		}
		seen = append(seen, fresh...)
		if len(seen) > logsFollowWindow {
			seen = seen[len(seen)-logsFollowWindow:]
		}
	}
}

// tailMatch is how many of the last lines seen must match for a window to be
// taken as continuing them.
const tailMatch = 8

// newLines returns the lines of window that come after seen: it finds the
// last place in window where seen's tail ends. With no overlap (more lines
// came than one window holds, or nothing was seen) the whole window is new.
func newLines(seen, window []string) []string {
	if len(seen) == 0 {
		return window
	}
	tail := seen[max(0, len(seen)-tailMatch):]
	for end := len(window); end >= 1; end-- {
		// window[..end] ends with tail, or with a shorter suffix of it
		// when window starts part-way into tail.
		k := min(len(tail), end)
		if equalLines(window[end-k:end], tail[len(tail)-k:]) && (k == len(tail) || end == k) {
			return window[end:]
		}
	}
	return window
}

func equalLines(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the tool's version and, when it answers, the daemon's",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(g.stdout, "Client:\n  Version: %s\n", toolVersion())
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			v, err := versionapi.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
			if err != nil {
				return fmt.Errorf("server %s: %w", g.socket(), err)
			}
			fmt.Fprintf(g.stdout, "\nServer:\n  Version:  %s\n  Revision: %s\n", v.GetVersion(), v.GetRevision())
			return nil
		},
	}
}
