package diff

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/moby/sys/userns"
	"golang.org/x/sys/unix"
)

// applyMounts writes the tar stream r onto mounts.
//
// Two shapes the snapshotters hand out are written without mounting
// anything, as containerd does for the first: an overlay mount is applied
// straight into its upperdir, turning OCI whiteouts into overlay ones and
// inheriting new directories' attributes from the lower layers; a plain
// read-write bind mount is applied into its source. Anything else is
// mounted on a temporary directory and applied through the mount.
func applyMounts(ctx context.Context, mounts []mount.Mount, r io.Reader, syncFs bool) error {
	if len(mounts) == 1 {
		m := mounts[0]
		switch {
		case m.Type == "overlay" && !userns.RunningInUserNS(): // mknod c 0 0 needs the initial namespace
			if upper, lowers, prefix, ok := overlayLayers(m.Options); ok {
				return applyTree(ctx, upper, r, lowers, prefix, syncFs)
			}
		case isPlainBind(m):
			return applyTree(ctx, m.Source, r, nil, "", syncFs)
		}
	}
	return mount.WithTempMount(ctx, mounts, func(root string) error {
		return applyTree(ctx, root, r, nil, "", syncFs)
	})
}

// applyTree applies the tar stream r to the directory root. With an xattr
// prefix ("trusted." or "user."), root is an overlay upper directory over
// lowers (top first) and whiteouts become overlay whiteouts; without one,
// root is the whole filesystem and whiteouts remove files. Every header
// passes the guard first (guard.go).
func applyTree(ctx context.Context, root string, r io.Reader, lowers []string, xattrPrefix string, syncFs bool) error {
	opaqueXattr := ""
	if xattrPrefix != "" {
		opaqueXattr = xattrPrefix + "overlay.opaque"
	}
	g := newGuard(root, lowers, opaqueXattr)
	opts := []archive.ApplyOpt{archive.WithFilter(g.filter)}
	if xattrPrefix != "" {
		opts = append(opts, archive.WithConvertWhiteout(overlayWhiteouts(opaqueXattr)))
		if len(lowers) > 0 {
			opts = append(opts, archive.WithParents(lowers))
		}
	}
	if _, err := archive.Apply(ctx, root, r, opts...); err != nil {
		return err
	}
	if syncFs {
		return syncFilesystem(root)
	}
	return nil
}

// overlayWhiteouts turns OCI whiteouts into overlayfs ones inside an upper
// directory: ".wh.name" becomes a 0/0 character device "name", and an opaque
// marker becomes the opaque xattr on its directory.
func overlayWhiteouts(opaqueXattr string) archive.ConvertWhiteout {
	return func(hdr *tar.Header, path string) (bool, error) {
		base, dir := filepath.Base(path), filepath.Dir(path)
		if base == opaqueMarker {
			return false, unix.Lsetxattr(dir, opaqueXattr, []byte{'y'}, 0)
		}
		name, ok := strings.CutPrefix(base, whiteoutPrefix)
		if !ok {
			return true, nil
		}
		target := filepath.Join(dir, name)
		if err := unix.Mknod(target, unix.S_IFCHR, 0); err != nil {
			if errors.Is(err, unix.EEXIST) {
				// The same layer also adds name: a whiteout only hides
				// lower layers' files (OCI image-spec, layer.md).
				return false, nil
			}
			return false, fmt.Errorf("create whiteout %q: %w", target, err)
		}
		return false, os.Lchown(target, hdr.Uid, hdr.Gid)
	}
}

// overlayLayers reads an overlay mount's upper and lower directories. It
// declines (ok false) what it cannot apply into directly: no upperdir, or
// relative paths.
func overlayLayers(options []string) (upper string, lowers []string, xattrPrefix string, ok bool) {
	xattrPrefix = "trusted."
	for _, o := range options {
		switch {
		case strings.HasPrefix(o, "upperdir="):
			upper = strings.TrimPrefix(o, "upperdir=")
		case strings.HasPrefix(o, "lowerdir="):
			lowers = strings.Split(strings.TrimPrefix(o, "lowerdir="), ":")
		case strings.HasPrefix(o, "lowerdir+="):
			lowers = append(lowers, strings.TrimPrefix(o, "lowerdir+="))
		case o == "userxattr":
			xattrPrefix = "user."
		}
	}
	if !filepath.IsAbs(upper) {
		return "", nil, "", false
	}
	for _, l := range lowers {
		if !filepath.IsAbs(l) {
			return "", nil, "", false
		}
	}
	return upper, lowers, xattrPrefix, true
}

// isPlainBind reports whether m only exposes a directory read-write, so
// that writing into its source is the same as writing through it.
func isPlainBind(m mount.Mount) bool {
	if m.Type != "bind" && m.Type != "rbind" {
		return false
	}
	if !filepath.IsAbs(m.Source) {
		return false
	}
	for _, o := range m.Options {
		if !slices.Contains([]string{"bind", "rbind", "rw"}, o) {
			return false
		}
	}
	return true
}

func syncFilesystem(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s to sync: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
