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
	"github.com/flotilla-project/flotilla/pkg/version"
)

func main() {
	// One executable runs the whole graph: started as flotilla-<service>
	// (flotillad sets argv[0]; a link of that name does the same), or as
	// `flotillad service <name>`, it is that service's process.
	if name, ok := strings.CutPrefix(filepath.Base(os.Args[0]), "flotilla-"); ok {
		if e, ok := roster.Lookup(name); ok {
			build, _ := roster.Constructor(name)
			service.RunArgs(e.Name, build, os.Args[1:])
		}
	}
	if env, supervised, err := handshake.FromEnviron(); supervised && err == nil {
		// Started by a supervisor through a wrapper that could not keep
		// argv[0]: the environment names the service.
		if e, ok := roster.Lookup(env.Name); ok {
			build, _ := roster.Constructor(env.Name)
			service.RunArgs(e.Name, build, os.Args[1:])
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
	err := run(os.Args[1:])
	var usage usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &usage):
		fmt.Fprintf(os.Stderr, "flotillad: %v\n", err)
		os.Exit(2)
	case errors.As(err, new(flagError)):
		os.Exit(2) // the flag package said what, with the usage
	default:
		fmt.Fprintf(os.Stderr, "flotillad: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("flotillad", flag.ContinueOnError)
	var (
		cfgPath     = fs.String("config", config.DefaultPath, "configuration file (TOML); when it is the default and missing, the defaults apply (`flotillad config default` prints them)")
		root        = fs.String("root", "", "persistent data directory (default /var/lib/flotilla)")
		state       = fs.String("state", "", "runtime state directory (default /run/flotilla)")
		address     = fs.String("address", "", "client socket (default <state>/flotilla.sock)")
		logLevel    = fs.String("log-level", "", "trace, debug, info, warn or error")
		logFmt      = fs.String("log-format", "", "text or json")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	fs.BoolVar(showVersion, "v", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: flotillad [flags]
       flotillad [flags] config default|dump   (every setting at its default | in effect after the file and flags)
       flotillad config migrate [containerd-config]   (containerd's config.toml as Flotilla's; default %s)
       flotillad service <name> [flags]        (a service's process, run by hand)
       flotillad services                      (the services of the graph)

`, containerdConfig)
		fs.PrintDefaults()
	}
	// load reads the configuration and lays the flags over it.
	load := func() (*config.Config, error) {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return nil, err
		}
		override(&cfg.Root, *root)
		override(&cfg.State, *state)
		override(&cfg.GRPC.Address, *address)
		override(&cfg.Debug.Level, *logLevel)
		override(&cfg.Debug.Format, *logFmt)
		return cfg, nil
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version.String("flotillad"))
		return nil
	}
	if fs.NArg() > 0 && fs.Arg(0) == "config" {
		return configCommand(fs, fs.Args()[1:], load)
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serve(ctx, cfg)
}

// parseFlags parses args with fs, an error as a flagError (already told).
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return flagError{err}
	}
	return err
}

// flagError is a flag the flag package refused, and has said so.
type flagError struct{ error }

// usageError is a command line flotillad cannot make sense of.
type usageError string

func (e usageError) Error() string { return string(e) }

func override(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

// containerdConfig is what `flotillad config migrate` reads by default.
const containerdConfig = "/etc/containerd/config.toml"

// configCommand is `flotillad config ...`; flags after `config dump` count
// as well as those before it.
func configCommand(fs *flag.FlagSet, args []string, load func() (*config.Config, error)) error {
	if len(args) == 0 {
		return usageError("usage: flotillad config default|dump|migrate")
	}
	switch args[0] {
	case "default":
		if len(args) > 1 {
			return usageError("usage: flotillad config default")
		}
		b, err := config.DefaultFile()
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(b)
		return err
	case "dump":
		if err := parseFlags(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return usageError(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
		}
		return dumpConfig(load)
	case "migrate":
		switch len(args) {
		case 1:
			return migrateConfig(containerdConfig)
		case 2:
			return migrateConfig(args[1])
		}
		return usageError("usage: flotillad config migrate [containerd-config]")
	}
	return usageError(fmt.Sprintf("unknown config command %q (want default, dump or migrate)", args[0]))
}

// dumpConfig is `flotillad config dump`: the configuration in effect, its
// zero values spelled out; warnings about the file on stderr.
func dumpConfig(load func() (*config.Config, error)) error {
	cfg, err := load()
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(os.Stderr, "flotillad: warning:", w)
	}
	src := cfg.Source
	if src == "" {
		src = "no file: the defaults"
	}
	b, err := cfg.Effective().Marshal()
	if err != nil {
		return err
	}
	fmt.Printf("# Flotilla's configuration in effect (`flotillad config dump`): %s, then the flags.\n", src)
	_, err = os.Stdout.Write(b)
	return err
}
