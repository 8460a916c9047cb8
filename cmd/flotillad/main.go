// flotillad starts Flotilla: the gateway on the client socket and, under the
// supervisor, one process per service.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flotilla-project/flotilla/pkg/config"
	"github.com/flotilla-project/flotilla/pkg/handshake"
	"github.com/flotilla-project/flotilla/pkg/roster"
	"github.com/flotilla-project/flotilla/pkg/service"
)

func main() {
	// One executable runs the whole graph: started as flotilla-<service>
	// (flotillad sets argv[0]; a link of that name does the same), or as
	// `flotillad service <name>`, it is that service's process.
	if name, ok := strings.CutPrefix(filepath.Base(os.Args[0]), "flotilla-"); ok {
		if e, ok := roster.Lookup(name); ok {
			service.RunArgs(e.Name, e.Build, os.Args[1:])
		}
	}
	if env, supervised, err := handshake.FromEnviron(); supervised && err == nil {
		// Started by a supervisor through a wrapper that could not keep
		// argv[0]: the environment names the service.
		if e, ok := roster.Lookup(env.Name); ok {
			service.RunArgs(e.Name, e.Build, os.Args[1:])
		}
	}
	if len(os.Args) >= 3 && os.Args[1] == "service" {
		e, ok := roster.Lookup(os.Args[2])
		if !ok {
			fmt.Fprintf(os.Stderr, "flotillad: no service %q (want one of %s)\n", os.Args[2], strings.Join(roster.Names(), ", "))
			os.Exit(2)
		}
		service.RunArgs(e.Name, e.Build, os.Args[3:])
	}
	if len(os.Args) == 2 && os.Args[1] == "services" {
		// For the build, which makes a flotilla-<name> link per service.
		fmt.Println(strings.Join(roster.Names(), "\n"))
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "flotillad: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) >= 1 && args[0] == "config" {
		return configCommand(args[1:])
	}
	fs := flag.NewFlagSet("flotillad", flag.ContinueOnError)
	var (
		cfgPath  = fs.String("config", "", "path to the configuration file (TOML); `flotillad config default` prints one")
		root     = fs.String("root", "", "persistent data directory (default /var/lib/flotilla)")
		state    = fs.String("state", "", "runtime state directory (default /run/flotilla)")
		address  = fs.String("address", "", "client socket (default <state>/flotilla.sock)")
		logLevel = fs.String("log-level", "", "trace, debug, info, warn or error")
		logFmt   = fs.String("log-format", "", "text or json")
	)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: flotillad [flags]\n       flotillad config default\n       flotillad service <name> [flags]   (a service's process, run by hand)\n       flotillad services                 (the services of the graph)\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	override(&cfg.Root, *root)
	override(&cfg.State, *state)
	override(&cfg.GRPC.Address, *address)
	override(&cfg.Debug.Level, *logLevel)
	override(&cfg.Debug.Format, *logFmt)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serve(ctx, cfg)
}

func override(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func configCommand(args []string) error {
	if len(args) != 1 || args[0] != "default" {
		return errors.New("usage: flotillad config default")
	}
	b, err := config.Default().Marshal()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}
