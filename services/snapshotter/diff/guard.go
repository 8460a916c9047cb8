package diff

import (
	"archive/tar"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	paxXattr       = "SCHILY.xattr."
)

// guard vets each tar header before archive.Apply acts on it (it is
// archive.Apply's Filter, which sees the header after the name has been
// cleaned and before anything is written for it).
//
// containerd's archive.Apply already keeps every write inside the root, but
// it does so by quietly rewriting what an entry says: "../x" and "/x" become
// "<root>/x", a write through a symlink to "/etc" lands in "<root>/etc", a
// hard link to "/etc/shadow" links "<root>/etc/shadow". Layers built by any
// real tool never contain such entries, so a layer that does is either
// broken or hostile; Flotilla refuses it with ErrInvalidArgument, naming
// the entry, rather than unpacking something other than what the layer says
// (archive.Apply's scoping stays underneath as a second line of defence):
//
//   - a name or hard link target that is absolute or climbs out with "..";
//   - a name or hard link target whose parent directory is reached through
//     a symbolic link, whether the link is already in the snapshot (or one
//     of its overlay lower layers) or came earlier in the same layer;
//   - a whiteout of "", "." or "..";
//   - an entry type pkg/archive cannot create (old GNU sparse files are
//     passed on as the regular files archive/tar expands them to).
//
// Symbolic links themselves are data: any target is allowed, since it is
// only ever resolved inside the container.
//
// Extended attributes of the overlay driver are dropped from entries:
// whiteouts and opaque directories are expressed by the layer's .wh.
// entries, never by raw xattrs, which would steer the overlay mount
// (opaque, redirect, metacopy) when written into an upper directory.
// pkg/archive already ignores every trusted.* attribute; user.overlay.* is
// what overlayfs reads when mounted with userxattr.
type guard struct {
	// layers is the merged view an entry's parents are looked up in: the
	// directory being written first, then overlay lower layers, top first.
	layers []string
	// overlay is set when layers[0] is an overlay upper directory, so that
	// whiteout devices and opaque xattrs in it mean what overlayfs says.
	overlay     bool
	opaqueXattr string
	// dirs holds relative directories already found free of symlinks (or
	// absent, to be created as plain directories); any entry that could
	// turn one into something else invalidates it.
	dirs map[string]struct{}
}

func newGuard(root string, lowers []string, opaqueXattr string) *guard {
	return &guard{
		layers:      append([]string{root}, lowers...),
		overlay:     opaqueXattr != "",
		opaqueXattr: opaqueXattr,
		dirs:        make(map[string]struct{}),
	}
}

func refuse(name, format string, args ...any) error {
	return fmt.Errorf("layer entry %q: %s: %w", name, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// filter is an archive.Filter.
func (g *guard) filter(hdr *tar.Header) (bool, error) {
	name := filepath.Clean(hdr.Name)
	if err := checkInside(name); err != nil {
		return false, refuse(hdr.Name, "path %v", err)
	}
	if base := filepath.Base(name); base != opaqueMarker && strings.HasPrefix(base, whiteoutPrefix) {
		switch strings.TrimPrefix(base, whiteoutPrefix) {
		case "", ".", "..":
			return false, refuse(hdr.Name, "whiteout names no file")
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, //nolint:staticcheck // TypeRegA still occurs
		tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeXGlobalHeader:
	case tar.TypeGNUSparse:
		// archive/tar already expands the holes as the data is read;
		// pkg/archive only needs to see a regular file.
		hdr.Typeflag = tar.TypeReg
	default:
		return false, refuse(hdr.Name, "unsupported entry type %q", hdr.Typeflag)
	}
	if err := g.checkParents(filepath.Dir(name)); err != nil {
		return false, refuse(hdr.Name, "%v", err)
	}
	if hdr.Typeflag == tar.TypeLink {
		target := filepath.Clean(hdr.Linkname)
		if err := checkInside(target); err != nil {
			return false, refuse(hdr.Name, "hard link target %q %v", hdr.Linkname, err)
		}
		if target == "." {
			return false, refuse(hdr.Name, "hard link to the root directory")
		}
		if err := g.checkParents(filepath.Dir(target)); err != nil {
			return false, refuse(hdr.Name, "hard link target %q: %v", hdr.Linkname, err)
		}
	}
	for key := range hdr.PAXRecords {
		if x, ok := strings.CutPrefix(key, paxXattr); ok &&
			(strings.HasPrefix(x, "trusted.overlay.") || strings.HasPrefix(x, "user.overlay.")) {
			delete(hdr.PAXRecords, key)
		}
	}
	// Anything but a directory replaces what is at name: if that was a
	// directory we vouched for, forget what we know.
	if hdr.Typeflag != tar.TypeDir {
		if _, ok := g.dirs[name]; ok {
			clear(g.dirs)
		}
	}
	return true, nil
}

// checkInside refuses a cleaned relative path that is absolute or leaves
// the root.
func checkInside(p string) error {
	switch {
	case filepath.IsAbs(p):
		return errors.New("is absolute")
	case p == "..", strings.HasPrefix(p, "../"):
		return errors.New("climbs out of the root")
	}
	return nil
}

// checkParents refuses dir (relative, cleaned) if any of its components is
// a symbolic link in the merged view of g.layers.
func (g *guard) checkParents(dir string) error {
	if dir == "." {
		return nil
	}
	if _, ok := g.dirs[dir]; ok {
		return nil
	}
	visible := g.layers
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		var next []string
		found := false
		for _, l := range visible {
			fi, err := os.Lstat(filepath.Join(l, p))
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("inspect %q: %w", p, err)
			}
			if !found {
				found = true
				if fi.Mode()&fs.ModeSymlink != 0 {
					return fmt.Errorf("%q is a symbolic link; entries may not be written through it", p)
				}
				if !fi.IsDir() {
					// A file or an overlay whiteout hides everything
					// below it; archive.Apply decides what happens.
					return nil
				}
			}
			if !fi.IsDir() {
				break // hides this name in the layers below
			}
			next = append(next, l)
			if g.opaque(filepath.Join(l, p)) {
				break
			}
		}
		g.dirs[p] = struct{}{}
		if !found {
			// Absent: archive.Apply creates plain directories from here.
			for k := i + 1; k < len(parts); k++ {
				g.dirs[strings.Join(parts[:k+1], "/")] = struct{}{}
			}
			return nil
		}
		visible = next
	}
	return nil
}

// opaque reports whether overlay directory path hides the layers below it.
func (g *guard) opaque(path string) bool {
	if !g.overlay {
		return false
	}
	var b [1]byte
	n, err := unix.Lgetxattr(path, g.opaqueXattr, b[:])
	return err == nil && n == 1 && b[0] == 'y'
}
