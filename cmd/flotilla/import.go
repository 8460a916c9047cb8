package main

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
)

// maxPrescanBlob bounds the blobs read into memory before the import:
// indexes, manifests and configs are small, layers are not.
const maxPrescanBlob = 1 << 20

func importCmd(g *globals) *cobra.Command {
	var ns, snapshotter string
	var noUnpack bool
	cmd := &cobra.Command{
		Use:   "import [--namespace default] [--snapshotter overlayfs] [--no-unpack] <archive.tar>",
		Short: "Import an image archive and unpack it, with per-layer progress",
		Long: `Import an OCI image layout (or docker save) archive into the content store
and unpack its images for the snapshotter, showing each blob's progress: bars
on a terminal, a line per change otherwise.`,
		Args: exactArgs(1, "one archive"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return importArchive(cmd.Context(), g, args[0], ns, snapshotter, noUnpack)
		},
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", namespaces.Default, "containerd namespace")
	cmd.Flags().StringVar(&snapshotter, "snapshotter", "overlayfs", "snapshotter to unpack into")
	cmd.Flags().BoolVar(&noUnpack, "no-unpack", false, "only store the blobs")
	return cmd
}

func importArchive(ctx context.Context, g *globals, archive, ns, snapshotter string, noUnpack bool) error {
	out := g.stdout
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := newTracker(!noUnpack)
	// The archive is listed first so every blob has a row from the start;
	// an archive this cannot read (compressed, say) is still imported,
	// its rows appearing as its blobs are written.
	if err := prescanArchive(f, tr); err != nil {
		fmt.Fprintf(g.stderr, "flotilla: listing %s: %v (importing anyway)\n", archive, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}

	client, err := g.containerd(containerd.WithDefaultNamespace(ns))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, ns)

	start := time.Now()
	w := watch(ctx, tr, client.ContentStore(), client.SnapshotService(snapshotter), newDisplay(out))
	imgs, err := client.Import(ctx, f)
	if err == nil && !noUnpack {
		tr.startUnpack()
		for _, i := range imgs {
			if err = containerd.NewImage(client, i).Unpack(ctx, snapshotter); err != nil {
				err = fmt.Errorf("unpack %s: %w", i.Name, err)
				break
			}
		}
	}
	rows := w.stop(ctx)
	if err != nil {
		w.disp.finish(rows, "")
		return err
	}
	names := make([]string, 0, len(imgs))
	for _, i := range imgs {
		names = append(names, i.Name)
	}
	w.disp.finish(rows, summaryLine("imported", names, rows, !noUnpack, snapshotter, time.Since(start)))
	return nil
}

// prescanArchive adds a row for every blob in an OCI layout archive and
// keeps the small ones (index.json, manifests, configs) in the tracker's
// memory, so rows are named and layers ordered before the import reaches
// them. Large entries are skipped over (a file seeks past them).
func prescanArchive(r io.Reader, tr *tracker) error {
	t := tar.NewReader(r)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for {
		h, err := t.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean(h.Name)
		var d digest.Digest
		if dir, hex := path.Split(name); strings.TrimSuffix(dir, "/") == "blobs/sha256" {
			if d, err = digest.Parse("sha256:" + hex); err != nil {
				continue
			}
		} else if name != ocispec.ImageIndexFile {
			continue
		}
		var b []byte
		if h.Size <= maxPrescanBlob {
			if b, err = io.ReadAll(t); err != nil {
				return err
			}
		}
		desc := ocispec.Descriptor{Digest: d, Size: h.Size}
		if name == ocispec.ImageIndexFile {
			// The importer stores index.json as a blob too.
			desc = ocispec.Descriptor{Digest: digest.FromBytes(b), Size: h.Size, MediaType: ocispec.MediaTypeImageIndex}
		}
		tr.byRef["tar-"+name] = tr.addLocked(desc) // the importer's ingest ref
		if b != nil {
			tr.memory[desc.Digest] = b
		}
	}
	// Naming children needs media types, which only the parents give.
	tr.resolveLocked(context.Background(), emptyProvider{})
	return nil
}
