// flotilla is the operator's tool for a running flotillad: it lists the
// service processes, restarts one gracefully, shows a service's output, draws
// traces and a live view of the graph, checks the host, pulls and imports
// images with per-layer progress, and brings a stopped containerd's images
// over. It speaks Flotilla's admin API and containerd's API on the daemon's
// client socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flotilla-project/flotilla/pkg/version"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/status"
)

const defaultAddress = "/run/flotilla/flotilla.sock"

// toolVersion is the semantic version the build embedded (pkg/version).
func toolVersion() string { return strings.TrimPrefix(version.Version, "v") }

// Exit codes, as most CLIs have them: a call that failed is 1, a command
// line that makes no sense is 2 (and --help is 0).
const (
	exitFailed = 1
	exitUsage  = 2
)

// usageError is a command line the tool cannot run: a wrong flag, a missing
// or extra argument, an unknown command.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd, err := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(report(cmd, err, os.Stderr))
}

// report prints err the way the tool does and returns the exit code.
func report(cmd *cobra.Command, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		path := "flotilla"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "flotilla: %v\nRun '%s --help' for usage.\n", err, path)
		return exitUsage
	}
	var se silentError
	if errors.As(err, &se) {
		return se.code
	}
	if s, ok := status.FromError(err); ok {
		err = fmt.Errorf("%s (%s)", s.Message(), s.Code())
	}
	fmt.Fprintf(stderr, "flotilla: %v\n", err)
	return exitFailed
}

// silentError ends the tool with a code and nothing more to say (doctor has
// printed its findings already).
type silentError struct{ code int }

func (e silentError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run runs one command line with its output to out, for tests.
func run(args []string, out io.Writer) error {
	_, err := execute(context.Background(), args, out, io.Discard)
	return err
}

func execute(ctx context.Context, args []string, stdout, stderr io.Writer) (*cobra.Command, error) {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContextC(ctx)
}

// globals are the flags every command has.
type globals struct {
	address string
	stdout  io.Writer
	stderr  io.Writer
}

// socket is the daemon's client socket: --address, else $FLOTILLA_ADDRESS,
// else $CONTAINERD_ADDRESS (what ctr reads), else the default.
func (g *globals) socket() string {
	if g.address != "" {
		return g.address
	}
	for _, env := range []string{"FLOTILLA_ADDRESS", "CONTAINERD_ADDRESS"} {
		if v := os.Getenv(env); v != "" {
			return v
		}
	}
	return defaultAddress
}

// stateDir is where the daemon keeps its state: its socket's directory.
func (g *globals) stateDir() string { return filepath.Dir(g.socket()) }

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "flotilla",
		Short: "Operate a running flotillad: its services, their logs and metrics, images, the host",
		Long: `flotilla operates a running flotillad through its client socket: Flotilla's
admin API for the service processes, containerd's API for images.

The socket is --address, else $FLOTILLA_ADDRESS, else $CONTAINERD_ADDRESS,
else ` + defaultAddress + `.`,
		Version:       toolVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_ = cmd.Usage()
			return usagef("a command is needed")
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("flotilla version {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&g.address, "address", "",
		"flotillad's client socket (default $FLOTILLA_ADDRESS, $CONTAINERD_ADDRESS or "+defaultAddress+")")
	root.CompletionOptions.HiddenDefaultCmd = false

	root.AddGroup(&cobra.Group{ID: "services", Title: "Services:"}, &cobra.Group{ID: "images", Title: "Images:"},
		&cobra.Group{ID: "host", Title: "Host:"})
	for _, c := range []*cobra.Command{servicesCmd(g), restartCmd(g), logsCmd(g), topCmd(g), traceCmd(g)} {
		c.GroupID = "services"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{pullCmd(g), importCmd(g), adoptCmd(g)} {
		c.GroupID = "images"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{doctorCmd(g), versionCmd(g)} {
		c.GroupID = "host"
		root.AddCommand(c)
	}
	return root
}

// noArgs, exactArgs and maxArgs check positional arguments as cobra's
// validators do, with a usage error the tool exits 2 on.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s, got %d argument(s)", cmd.CommandPath(), what, len(args))
		}
		return nil
	}
}

// outputFlags are -o and -q of a listing command.
type outputFlags struct {
	format string
	quiet  bool
}

func (o *outputFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&o.format, "output", "o", "table", "output format: table, json or yaml")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print only names (ids), one a line")
}

func (o *outputFlags) check() error {
	switch o.format {
	case "table", "json", "yaml":
		return nil
	}
	return usagef("-o %q: want table, json or yaml", o.format)
}

func completeOutput(cmd *cobra.Command) {
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
}
