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
	"syscall"

	"github.com/flotilla-project/flotilla/pkg/config"
)

func main() {
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
		fmt.Fprintf(fs.Output(), "usage: flotillad [flags]\n       flotillad config default\n\n")
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
