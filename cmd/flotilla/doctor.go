package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/internal/hostcheck"
)

const defaultRoot = "/var/lib/flotilla"

func doctorCmd(g *globals) *cobra.Command {
	var root string
	var o outputFlags
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the host for what Flotilla needs, each finding with its fix",
		Long: `Check the host before a failure does: overlayfs (a real mount on the root's
filesystem, and its options), cgroups and their delegation, runc and
containerd-shim-runc-v2 and their versions, CNI plugins and a network config,
kernel features (idmapped mounts, seccomp, AppArmor), the daemon's socket and
free disk under the root. Run it as root: overlay and idmapped mounts are
tried for real.

Exits 1 when something required (overlayfs, cgroups, runc, the shim) is
missing; warnings name what is optional or worth fixing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			daemonRoot, daemonDir := runningDaemon(cmd.Context(), g)
			if !cmd.Flags().Changed("root") && daemonRoot != "" {
				root = daemonRoot
			}
			e := hostcheck.Default(root, g.socket())
			if daemonDir != "" {
				// The shim the running daemon uses is the one beside it.
				e.Path = append([]string{daemonDir}, e.Path...)
			}
			e.Ping = func(ctx context.Context) (string, error) {
				conn, err := g.dial()
				if err != nil {
					return "", err
				}
				defer conn.Close()
				ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				v, err := versionapi.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
				return v.GetVersion(), err
			}
			results := hostcheck.Run(cmd.Context(), e)
			if err := printDoctor(g.stdout, o, results); err != nil {
				return err
			}
			if hostcheck.Failed(results) {
				return silentError{exitFailed}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", defaultRoot, "flotillad's root directory, where overlay and disk are checked (default: the running daemon's, else "+defaultRoot+")")
	o.register(cmd.Flags())
	completeOutput(cmd)
	return cmd
}

// printDoctor prints one line a check: its verdict, name and finding, and
// under a warning or failure the fix.
func printDoctor(out io.Writer, o outputFlags, results []hostcheck.Result) error {
	if o.quiet || o.format != "table" {
		// -q lists what needs attention.
		var list []hostcheck.Result
		for _, r := range results {
			if !o.quiet || r.Status == hostcheck.Fail || r.Status == hostcheck.Warn {
				list = append(list, r)
			}
		}
		return writeList(out, o, list, func(r hostcheck.Result) string { return r.Name }, nil)
	}
	counts := map[hostcheck.Status]int{}
	for _, r := range results {
		counts[r.Status]++
		name := r.Name
		if r.Required {
			name += "*"
		}
		fmt.Fprintf(out, "%-4s  %-16s %s\n", strings.ToUpper(string(r.Status)), name, r.Detail)
		if r.Fix != "" && (r.Status == hostcheck.Warn || r.Status == hostcheck.Fail) {
			fmt.Fprintf(out, "      %-16s fix: %s\n", "", r.Fix)
		}
	}
	verdict := "ready"
	if hostcheck.Failed(results) {
		verdict = "NOT ready: a required check (*) failed"
	}
	fmt.Fprintf(out, "\n%s — %d pass, %d warn, %d fail, %d skipped\n", verdict,
		counts[hostcheck.Pass], counts[hostcheck.Warn], counts[hostcheck.Fail], counts[hostcheck.Skip])
	return nil
}

// runningDaemon asks the daemon on the socket, if one answers, for its root
// directory (its content service exports <root>/content) and the directory
// of its executable (flotillad runs the shim found beside it first).
func runningDaemon(ctx context.Context, g *globals) (root, binDir string) {
	if _, err := os.Stat(g.socket()); err != nil {
		return "", ""
	}
	conn, err := g.dial()
	if err != nil {
		return "", ""
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := introspection.NewIntrospectionClient(conn).Plugins(ctx, &introspection.PluginsRequest{})
	if err != nil {
		return "", ""
	}
	for _, p := range resp.GetPlugins() {
		switch p.GetID() {
		case "content":
			if r := p.GetExports()["root"]; filepath.IsAbs(r) {
				root = filepath.Dir(r)
			}
		case "version": // served by flotillad itself
			if exe, err := os.Readlink("/proc/" + p.GetExports()["pid"] + "/exe"); err == nil {
				binDir = filepath.Dir(exe)
			}
		}
	}
	return root, binDir
}
