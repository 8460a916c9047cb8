package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/flotilla-project/flotilla/internal/containerdroot"
)

func adoptCmd(g *globals) *cobra.Command {
	var o adoptOptions
	cmd := &cobra.Command{
		Use:   "adopt-containerd [--root /var/lib/containerd]",
		Short: "Bring a stopped containerd's images and their content into Flotilla",
		Long: `Bring every namespace's images, and the content they need, from a stopped
containerd's root into the running Flotilla, so nothing is pulled again:
containerd's meta.db is read (read-only, with Flotilla's own reader of its
documented layout), each blob is written to Flotilla's content store through
containerd's content API on Flotilla's socket (checked against its digest,
with its labels), then the image record, and each image is unpacked for the
snapshotter so ctr run works at once.

Containers, snapshots and leases are not carried over: containers are
re-created from their images. containerd must be stopped (its meta.db is
locked while it runs).`,
		Example: "  systemctl stop containerd\n  flotilla adopt-containerd --root /var/lib/containerd\n  flotilla adopt-containerd --root /var/lib/containerd --dry-run",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return adopt(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.root, "root", "/var/lib/containerd", "containerd's root directory")
	f.StringSliceVarP(&o.namespaces, "namespace", "n", nil, "adopt only these namespaces (default: every one)")
	f.StringVar(&o.snapshotter, "snapshotter", "overlayfs", "snapshotter to unpack the images into")
	f.BoolVar(&o.noUnpack, "no-unpack", false, "only store content and image records")
	f.BoolVar(&o.overwrite, "overwrite", false, "point an image Flotilla already has at containerd's target")
	f.BoolVar(&o.dryRun, "dry-run", false, "list what would be adopted and change nothing")
	return cmd
}

type adoptOptions struct {
	root, snapshotter           string
	namespaces                  []string
	noUnpack, overwrite, dryRun bool
}

// adoptTally counts what an adoption did.
type adoptTally struct {
	images, blobs, present, failed int
	bytes                          int64
}

func adopt(ctx context.Context, g *globals, o adoptOptions) error {
	start := time.Now()
	all, err := containerdroot.Read(o.root)
	if err != nil {
		return err
	}
	var nss []containerdroot.Namespace
	for _, ns := range all {
		if len(o.namespaces) == 0 || slices.Contains(o.namespaces, ns.Name) {
			nss = append(nss, ns)
		}
	}
	nImages, nBlobs := 0, 0
	for _, ns := range nss {
		nImages += len(ns.Images)
		nBlobs += len(ns.Blobs)
	}
	out := g.stdout
	fmt.Fprintf(out, "containerd root %s: %d namespace(s), %d image(s), %d blob record(s)\n", o.root, len(nss), nImages, nBlobs)
	if o.dryRun {
		for _, ns := range nss {
			fmt.Fprintf(out, "namespace %s: %d image(s), %d blob(s)\n", ns.Name, len(ns.Images), len(ns.Blobs))
			for _, img := range ns.Images {
				fmt.Fprintf(out, "  image %s %s\n", img.Name, img.Target.Digest)
			}
		}
		return nil
	}

	client, err := g.containerd()
	if err != nil {
		return err
	}
	defer client.Close()
	var t adoptTally
	for _, ns := range nss {
		if err := adoptNamespace(ctx, client, o, ns, out, &t); err != nil {
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
	}
	fmt.Fprintf(out, "adopted %d image(s) from %d namespace(s): %d blob(s) copied (%s), %d already present, in %s (through the content API)\n",
		t.images, len(nss), t.blobs, bytesString(uint64(t.bytes)), t.present, time.Since(start).Round(time.Millisecond))
	if t.failed > 0 {
		return fmt.Errorf("%d image(s) not fully adopted (see above)", t.failed)
	}
	return nil
}

func adoptNamespace(ctx context.Context, client *containerd.Client, o adoptOptions, ns containerdroot.Namespace, out io.Writer, t *adoptTally) error {
	ctx = namespaces.WithNamespace(ctx, ns.Name)
	if err := client.NamespaceService().Create(ctx, ns.Name, ns.Labels); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace: %w", err)
	}
	// A lease holds every blob written until its image record names it
	// (and the garbage collector would otherwise take it).
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer done(context.WithoutCancel(ctx))

	cs := client.ContentStore()
	copied, present := 0, 0
	var copiedBytes int64
	blobs, dropped := referencedBlobs(ns)
	if dropped > 0 {
		// Left behind by an import or pull that containerd's collector had
		// not reached yet: copied, Flotilla's would remove them, and a
		// second adoption would copy them again.
		fmt.Fprintf(out, "namespace %s: %d blob(s) no image or gc.root label keeps, not copied\n", ns.Name, dropped)
	}
	for _, b := range blobs {
		wrote, err := adoptBlob(ctx, cs, o.root, b)
		if err != nil {
			// A record whose bytes are gone (containerd was mid-GC, say)
			// fails only the images that need it: Check says which.
			fmt.Fprintf(out, "  blob %s: %v\n", b.Digest, err)
			continue
		}
		if wrote {
			copied++
			copiedBytes += b.Size
		} else {
			present++
		}
	}
	fmt.Fprintf(out, "namespace %s: %d image(s); %d blob(s) copied (%s), %d already present\n",
		ns.Name, len(ns.Images), copied, bytesString(uint64(copiedBytes)), present)
	t.blobs += copied
	t.present += present
	t.bytes += copiedBytes

	is := client.ImageService()
	for _, img := range ns.Images {
		status, err := adoptImage(ctx, client, is, cs, o, img)
		if err != nil {
			t.failed++
			fmt.Fprintf(out, "  image %s: %v\n", img.Name, err)
			continue
		}
		t.images++
		fmt.Fprintf(out, "  image %s %s: %s\n", img.Name, shortDigest(img.Target.Digest), status)
	}
	return nil
}

// adoptBlob writes one blob from containerd's store into Flotilla's, with
// containerd's labels (the gc.ref ones keep its children); a blob Flotilla
// has already gets the labels it lacks. It reports whether it wrote bytes.
func adoptBlob(ctx context.Context, cs content.Store, root string, b containerdroot.Blob) (bool, error) {
	if info, err := cs.Info(ctx, b.Digest); err == nil {
		var paths []string
		if info.Labels == nil {
			info.Labels = map[string]string{}
		}
		for k, v := range b.Labels {
			if _, ok := info.Labels[k]; !ok {
				info.Labels[k] = v
				paths = append(paths, "labels."+k)
			}
		}
		if len(paths) > 0 {
			if _, err := cs.Update(ctx, info, paths...); err != nil {
				return false, fmt.Errorf("labels: %w", err)
			}
		}
		return false, nil
	} else if !errdefs.IsNotFound(err) {
		return false, err
	}
	f, err := os.Open(containerdroot.BlobPath(root, b.Digest))
	if err != nil {
		return false, err
	}
	defer f.Close()
	size := b.Size
	if fi, err := f.Stat(); err == nil && size <= 0 {
		size = fi.Size()
	}
	desc := ocispec.Descriptor{Digest: b.Digest, Size: size}
	if err := content.WriteBlob(ctx, cs, "adopt-"+b.Digest.String(), f, desc, content.WithLabels(b.Labels)); err != nil {
		return false, err
	}
	return true, nil
}

// adoptImage creates the image record (or finds it there) and unpacks the
// image for this platform.
func adoptImage(ctx context.Context, client *containerd.Client, is images.Store, cs content.Store, o adoptOptions, img containerdroot.Image) (string, error) {
	available, _, _, missing, err := images.Check(ctx, cs, img.Target, platforms.Default())
	if err != nil {
		return "", fmt.Errorf("check content: %w", err)
	}
	if !available {
		return "", fmt.Errorf("incomplete for %s: %d blob(s) missing in containerd's store too (first %s); pull it again",
			platforms.DefaultString(), len(missing), missing[0].Digest)
	}
	rec := images.Image{Name: img.Name, Target: img.Target, Labels: img.Labels, CreatedAt: img.CreatedAt, UpdatedAt: img.UpdatedAt}
	status := "adopted"
	if _, err := is.Create(ctx, rec); errdefs.IsAlreadyExists(err) {
		have, err := is.Get(ctx, img.Name)
		if err != nil {
			return "", err
		}
		switch {
		case have.Target.Digest == img.Target.Digest:
			status = "already there"
		case o.overwrite:
			if _, err := is.Update(ctx, rec, "target"); err != nil {
				return "", err
			}
			status = "adopted (replaced " + shortDigest(have.Target.Digest) + ")"
		default:
			return "", fmt.Errorf("Flotilla has it as %s, containerd as %s: kept Flotilla's (--overwrite takes containerd's)",
				shortDigest(have.Target.Digest), shortDigest(img.Target.Digest))
		}
	} else if err != nil {
		return "", fmt.Errorf("create image: %w", err)
	}
	if o.noUnpack {
		return status, nil
	}
	image := containerd.NewImageWithPlatform(client, rec, platforms.Default())
	if ok, err := image.IsUnpacked(ctx, o.snapshotter); err == nil && ok {
		return status + ", already unpacked in " + o.snapshotter, nil
	}
	if err := image.Unpack(ctx, o.snapshotter); err != nil {
		return "", fmt.Errorf("%s, but unpack into %s: %w", status, o.snapshotter, err)
	}
	return status + ", unpacked into " + o.snapshotter, nil
}

// referencedBlobs are the namespace's blobs its images keep (their targets
// and what containerd's gc.ref.content labels reach from them) or a
// gc.root label keeps, as containerd's collector reckons; dropped counts
// the others.
func referencedBlobs(ns containerdroot.Namespace) (kept []containerdroot.Blob, dropped int) {
	byDigest := map[digest.Digest]containerdroot.Blob{}
	for _, b := range ns.Blobs {
		byDigest[b.Digest] = b
	}
	reached := map[digest.Digest]bool{}
	var walk func(d digest.Digest)
	follow := func(labels map[string]string) {
		for k, v := range labels {
			if strings.HasPrefix(k, "containerd.io/gc.ref.content") {
				if d, err := digest.Parse(v); err == nil {
					walk(d)
				}
			}
		}
	}
	walk = func(d digest.Digest) {
		if reached[d] {
			return
		}
		reached[d] = true
		if b, ok := byDigest[d]; ok {
			follow(b.Labels)
		}
	}
	for _, img := range ns.Images {
		walk(img.Target.Digest)
		follow(img.Labels)
	}
	for _, b := range ns.Blobs {
		if _, ok := b.Labels["containerd.io/gc.root"]; ok {
			walk(b.Digest)
		}
	}
	for _, b := range ns.Blobs {
		if reached[b.Digest] {
			kept = append(kept, b)
		} else {
			dropped++
		}
	}
	return kept, dropped
}
