package main

import (
	"context"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/spf13/cobra"
)

func pullCmd(g *globals) *cobra.Command {
	var ns, snapshotter string
	var plainHTTP bool
	cmd := &cobra.Command{
		Use:   "pull [--namespace default] [--snapshotter overlayfs] [--plain-http] <ref>",
		Short: "Pull an image and unpack it, with per-layer progress",
		Long: `Pull an image from its registry and unpack it for the snapshotter, showing
each blob's progress: bars on a terminal, a line per change otherwise.`,
		Args: exactArgs(1, "one image reference"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return pull(cmd.Context(), g, args[0], ns, snapshotter, plainHTTP)
		},
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", namespaces.Default, "containerd namespace")
	cmd.Flags().StringVar(&snapshotter, "snapshotter", "overlayfs", "snapshotter to unpack into")
	cmd.Flags().BoolVar(&plainHTTP, "plain-http", false, "speak HTTP, not HTTPS, to the registry")
	return cmd
}

func pull(ctx context.Context, g *globals, ref, ns, snapshotter string, plainHTTP bool) error {
	out := g.stdout
	client, err := g.containerd(containerd.WithDefaultNamespace(ns))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, ns)

	// The resolver logs each failed attempt at info level; the error it
	// returns says the same, once.
	_ = log.SetLevel("warn")

	var regOpts []registry.Opt
	if plainHTTP {
		regOpts = append(regOpts, registry.WithDefaultScheme("http"))
	}
	src, err := registry.NewOCIRegistry(ctx, ref, regOpts...)
	if err != nil {
		return err
	}
	// The pull runs in the daemon's transfer service, next to the stores
	// (layers fetched in parallel and unpacked as they download), for the
	// host's platform as ctr pulls.
	dst := image.NewStore(ref, image.WithPlatforms(platforms.DefaultSpec()), image.WithUnpack(platforms.DefaultSpec(), snapshotter))

	// Layers are unpacked as they arrive, so unpacking may be under way
	// from the start. The transfer's progress names each blob; the
	// display follows them in the stores.
	tr := newTracker(true)
	tr.startUnpack()
	start := time.Now()
	w := watch(ctx, tr, client.ContentStore(), client.SnapshotService(snapshotter), newDisplay(out))
	err = client.Transfer(ctx, src, dst, transfer.WithProgress(func(p transfer.Progress) {
		if p.Desc != nil {
			tr.add(*p.Desc)
		}
	}))
	rows := w.stop(ctx)
	if err != nil {
		w.disp.finish(rows, "")
		return err
	}
	w.disp.finish(rows, summaryLine("pulled", []string{ref}, rows, true, snapshotter, time.Since(start)))
	return nil
}
