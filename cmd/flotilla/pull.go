package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const pullUsage = `usage: flotilla pull [--namespace default] [--snapshotter overlayfs] [--plain-http] <ref>

Pulls an image from its registry and unpacks it for the snapshotter,
showing each blob's progress.
`

func pullCmd(address string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pull", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), pullUsage) }
	ns := fs.String("namespace", namespaces.Default, "containerd namespace")
	snapshotter := fs.String("snapshotter", "overlayfs", "snapshotter to unpack into")
	plainHTTP := fs.Bool("plain-http", false, "speak HTTP, not HTTPS, to the registry")
	pos, err := parse(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("pull takes one image reference")
	}
	ref := pos[0]

	client, err := containerd.New(address, containerd.WithDefaultNamespace(*ns), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), *ns)

	// The resolver logs each failed attempt at info level; the error it
	// returns says the same, once.
	_ = log.SetLevel("warn")

	var hostOpts []docker.RegistryOpt
	if *plainHTTP {
		hostOpts = append(hostOpts, docker.WithPlainHTTP(docker.MatchAllHosts))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(hostOpts...)})

	// The client unpacks layers as they arrive, so unpacking may be under
	// way from the start.
	tr := newTracker(true)
	tr.startUnpack()
	start := time.Now()
	w := watch(ctx, tr, client.ContentStore(), client.SnapshotService(*snapshotter), newDisplay(out))
	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
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
		return err
	}
	w.disp.finish(rows, summaryLine("pulled", []string{img.Name()}, rows, true, *snapshotter, time.Since(start)))
	return nil
}
