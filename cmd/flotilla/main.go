// flotilla is the operator's tool for a running flotillad: it lists the
// service processes, restarts one gracefully, and shows a service's output,
// through Flotilla's admin API on the daemon's client socket; it pulls and
// imports images with per-layer progress through containerd's API there.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

const defaultAddress = "/run/flotilla/flotilla.sock"

const usage = `usage: flotilla [--address <socket>] <command> [arguments]

commands:
  services                     list the service processes
  restart [--drain 10s] <name> restart a service; clients see latency, not errors
  logs [-n 100] <name>         print the last lines a service wrote
  trace [--state <dir>] last | <trace id> | ls
                               draw a client call across processes as a
                               waterfall (needs [trace] file = true)
  pull [--namespace default] [--snapshotter overlayfs] [--plain-http] <ref>
                               pull and unpack an image, with per-layer progress
  import [--namespace default] [--snapshotter overlayfs] [--no-unpack] <archive.tar>
                               import and unpack an image archive, with
                               per-layer progress

The address defaults to $FLOTILLA_ADDRESS, else ` + defaultAddress + `.
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if s, ok := status.FromError(err); ok {
			err = fmt.Errorf("%s (%s)", s.Message(), s.Code())
		}
		fmt.Fprintf(os.Stderr, "flotilla: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("flotilla", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	address := fs.String("address", envOr("FLOTILLA_ADDRESS", defaultAddress), "flotillad's client socket")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	cmd, args := fs.Arg(0), fs.Args()[1:]
	if cmd == "trace" {
		// Span files are read where the daemon writes them, with no call
		// to it: the state directory is the socket's by default.
		return traceCmd(args, filepath.Dir(*address), out)
	}
	// Pull and import are containerd client calls, not admin ones.
	switch cmd {
	case "pull":
		return pullCmd(*address, args, out)
	case "import":
		return importCmd(*address, args, out)
	}

	conn, err := rpc.Dial(*address)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := adminpb.NewAdminClient(conn)

	switch cmd {
	case "services", "ps", "ls":
		return services(client, args, out)
	case "restart":
		return restart(client, args, out)
	case "logs":
		return logs(client, args, out)
	case "help":
		fs.Usage()
		return nil
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parse parses a command's flags wherever they stand among its arguments
// (`logs metadata -n 5` as well as `logs -n 5 metadata`) and returns the
// positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// oneName parses a command that takes exactly one service name.
func oneName(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parse(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("%s takes one service name", fs.Name())
	}
	return pos[0], nil
}

func services(c adminpb.AdminClient, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("services", flag.ContinueOnError)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return errors.New("services takes no arguments")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Services(ctx, &adminpb.ServicesRequest{})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	// Single-word columns first: scripts split rows on blanks.
	fmt.Fprintln(tw, "NAME\tSTATE\tPID\tRESTARTS\tOOM-KILLS\tLAST-EXIT\tUPTIME\tMEMORY\tSOCKET\tERROR")
	for _, s := range resp.GetServices() {
		uptime, pid, mem := "-", "-", "-"
		if s.GetPid() > 0 {
			pid = fmt.Sprint(s.GetPid())
		}
		if s.GetUptime() != nil && s.GetPid() > 0 {
			uptime = s.GetUptime().AsDuration().Round(time.Second).String()
		}
		if s.GetRssBytes() > 0 {
			mem = bytesString(s.GetRssBytes())
		}
		if l := s.GetMemoryLimitBytes(); l > 0 {
			mem += " (max " + bytesString(l) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", s.GetName(), s.GetState(), pid,
			s.GetRestarts(), s.GetOomKills(), orDash(s.GetLastExit()), uptime, mem, orDash(s.GetSocket()), s.GetError())
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesString(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func restart(c adminpb.AdminClient, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("restart", flag.ContinueOnError)
	drain := fs.Duration("drain", 10*time.Second, "how long calls in flight may take to finish before the restart goes ahead")
	name, err := oneName(fs, args)
	if err != nil {
		return err
	}
	// The daemon bounds the restart (drain, then the process's exit and
	// start); this only keeps a wedged daemon from hanging the tool.
	ctx, cancel := context.WithTimeout(context.Background(), 2**drain+2*time.Minute)
	defer cancel()
	resp, err := c.Restart(ctx, &adminpb.RestartRequest{Name: name, DrainTimeout: durationpb.New(*drain)})
	if err != nil {
		return err
	}
	s := resp.GetService()
	fmt.Fprintf(out, "restarted %s: pid %d, calls held for %s\n", name, s.GetPid(),
		resp.GetHeld().AsDuration().Round(time.Millisecond))
	if n := resp.GetAbandonedCalls(); n > 0 {
		fmt.Fprintf(out, "warning: %d call(s) were still in flight after %s and may have failed\n", n, *drain)
	}
	return nil
}

func logs(c adminpb.AdminClient, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	n := fs.Int("n", 100, "number of lines; 0 for every line kept")
	name, err := oneName(fs, args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Logs(ctx, &adminpb.LogsRequest{Name: name, Lines: int32(*n)})
	if err != nil {
		return err
	}
	for _, l := range resp.GetLines() {
		fmt.Fprintln(out, l)
	}
	return nil
}
