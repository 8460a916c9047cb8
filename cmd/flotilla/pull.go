package main

import (
	"context"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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

	var hostOpts []docker.RegistryOpt
	if plainHTTP {
		hostOpts = append(hostOpts, docker.WithPlainHTTP(docker.MatchAllHosts))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(hostOpts...)})

	// The client unpacks layers as they arrive, so unpacking may be under
	// way from the start.
	tr := newTracker(true)
	tr.startUnpack()
	start := time.Now()
	w := watch(ctx, tr, client.ContentStore(), client.SnapshotService(snapshotter), newDisplay(out))
	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(snapshotter),
		containerd.WithImageHandler(images.HandlerFunc(func(_ context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			tr.add(desc)
			return nil, nil
		})),
		// The snapshot labels a lazy snapshotter reads (image reference,
		// layer digest, the image's layers), as containerd's pulls add.
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)),
	)
	rows := w.stop(ctx)
	if err != nil {
		w.disp.finish(rows, "")
		return err
	}
	w.disp.finish(rows, summaryLine("pulled", []string{img.Name()}, rows, true, snapshotter, time.Since(start)))
	return nil
}
