package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// srcImageName is the realistic image's name on both daemons.
const srcImageName = "docker.io/flotilla/bench:gosrc"

// srcParts are the trees of the Go distribution the realistic image holds,
// under srcPrefix: source and testdata (text, mostly small files) and the
// compiled tools (large binaries), about 200 MiB of ordinary files in all.
var srcParts = []string{"pkg", "src", "test"}

// srcPrefix is where the trees go in the image, as in the golang images.
const srcPrefix = "usr/local/go"

// srcEpoch is every timestamp in the realistic image's layers, so that
// their digests depend only on the files.
var srcEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// srcImage is the realistic image for unpack-gosrc: busybox, then the Go
// distribution's trees in gzip layers of about equal size, and what each
// file in them must hold once unpacked.
type srcImage struct {
	img        *testimage.Image
	files      map[string]srcFile // by path in the root filesystem
	fileBytes  int64              // sum of the regular files' sizes
	layerBytes []int64            // uncompressed tar size of each tree layer
}

// srcFile is what a path of the realistic image must be after an unpack.
type srcFile struct {
	mode fs.FileMode // type and permission bits
	size int64
	sum  [sha256.Size]byte // of a regular file's content
	link string            // a symlink's target
}

// goroot is the root of the Go installation the bench runs with.
func goroot() (string, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT (give -gosrc): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// srcEntry is one file, directory or symlink of the trees, in walk order.
type srcEntry struct {
	rel  string // slash path below goroot
	abs  string
	info fs.FileInfo
}

// buildSrcImage builds the realistic image from the trees srcParts of
// goroot: every directory, regular file and symlink in them (anything else
// is left out), in lexical order, cut into layers tars of about equal file
// bytes, each gzipped at the default level, as image builders store layers.
// A directory whose files span two layers appears in both, as it would in
// a built image's layers.
// opts go to testimage.Busybox (a test's fake busybox).
func buildSrcImage(root string, layers int, opts ...testimage.Option) (*srcImage, error) {
	var entries []srcEntry
	var total int64
	for _, part := range srcParts {
		base := filepath.Join(root, part)
		if _, err := os.Stat(base); err != nil {
			return nil, fmt.Errorf("realistic image: %w (the Go installation at %s lacks %s; give -gosrc)", err, root, part)
		}
		err := filepath.WalkDir(base, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := de.Info()
			if err != nil {
				return err
			}
			if !info.Mode().IsRegular() && !info.IsDir() && info.Mode().Type() != fs.ModeSymlink {
				return nil
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			entries = append(entries, srcEntry{rel: filepath.ToSlash(rel), abs: p, info: info})
			if info.Mode().IsRegular() {
				total += info.Size()
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("realistic image: walk %s: %w", base, err)
		}
	}
	if total == 0 {
		return nil, fmt.Errorf("realistic image: no files under %s", root)
	}

	src := &srcImage{files: map[string]srcFile{}}
	dirModes := map[string]int64{}
	for _, e := range entries {
		if e.info.IsDir() {
			dirModes[path.Join(srcPrefix, e.rel)] = int64(e.info.Mode().Perm())
		}
	}
	tars := make([]*layerTar, layers)
	for i := range tars {
		tars[i] = newLayerTar(dirModes)
	}
	var done int64
	for _, e := range entries {
		// The layer is chosen by the file bytes before this entry, so
		// each gets about total/layers bytes.
		lt := tars[min(layers-1, int(done*int64(layers)/total))]
		name := path.Join(srcPrefix, e.rel)
		mode := e.info.Mode()
		f := srcFile{mode: mode.Type() | mode.Perm()}
		hdr := &tar.Header{Name: name, Mode: int64(mode.Perm()), ModTime: srcEpoch}
		var data []byte
		switch {
		case mode.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		case mode.Type() == fs.ModeSymlink:
			target, err := os.Readlink(e.abs)
			if err != nil {
				return nil, err
			}
			hdr.Typeflag, hdr.Linkname, f.link = tar.TypeSymlink, target, target
		default:
			b, err := os.ReadFile(e.abs)
			if err != nil {
				return nil, err
			}
			data, f.size, f.sum = b, int64(len(b)), sha256.Sum256(b)
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(b))
			done += int64(len(b))
			src.fileBytes += int64(len(b))
		}
		if err := lt.add(hdr, data); err != nil {
			return nil, fmt.Errorf("realistic image: %s: %w", name, err)
		}
		src.files[name] = f
	}
	opts = append(opts, testimage.WithName(srcImageName))
	for _, lt := range tars {
		t, err := lt.close()
		if err != nil {
			return nil, err
		}
		src.layerBytes = append(src.layerBytes, int64(len(t)))
		opts = append(opts, testimage.WithGzipLayer(t, gzip.DefaultCompression))
	}
	img, err := testimage.Busybox(opts...)
	if err != nil {
		return nil, err
	}
	src.img = img
	return src, nil
}

// layerTar is one layer's tar being written: every entry comes with the
// directories above it, once each.
type layerTar struct {
	buf   bytes.Buffer
	tw    *tar.Writer
	dirs  map[string]bool
	modes map[string]int64 // of the trees' directories; others are 0755
}

func newLayerTar(modes map[string]int64) *layerTar {
	lt := &layerTar{dirs: map[string]bool{}, modes: modes}
	lt.tw = tar.NewWriter(&lt.buf)
	return lt
}

func (lt *layerTar) add(hdr *tar.Header, data []byte) error {
	name := strings.TrimSuffix(hdr.Name, "/")
	if hdr.Typeflag == tar.TypeDir {
		if lt.dirs[name] {
			return nil
		}
	}
	if err := lt.parents(path.Dir(name)); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		lt.dirs[name] = true
	}
	if err := lt.tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := lt.tw.Write(data)
	return err
}

// parents writes the directory entries for dir and those above it that the
// layer lacks, with the trees' own modes (0755 above the trees).
func (lt *layerTar) parents(dir string) error {
	if dir == "." || dir == "/" || lt.dirs[dir] {
		return nil
	}
	if err := lt.parents(path.Dir(dir)); err != nil {
		return err
	}
	lt.dirs[dir] = true
	mode, ok := lt.modes[dir]
	if !ok {
		mode = 0o755
	}
	return lt.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: srcEpoch})
}

func (lt *layerTar) close() ([]byte, error) {
	if err := lt.tw.Close(); err != nil {
		return nil, err
	}
	return lt.buf.Bytes(), nil
}

// verify checks a root filesystem against the image: every directory,
// symlink and file of the trees is there with its mode, and every file with
// its content (by SHA-256); nothing else is under srcPrefix.
func (s *srcImage) verify(root string) error {
	seen := 0
	base := filepath.Join(root, srcPrefix)
	err := filepath.WalkDir(base, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == srcPrefix {
			return nil
		}
		want, ok := s.files[rel]
		if !ok {
			return fmt.Errorf("%s is not in the image", rel)
		}
		seen++
		info, err := de.Info()
		if err != nil {
			return err
		}
		if got := info.Mode().Type() | info.Mode().Perm(); got != want.mode {
			return fmt.Errorf("%s has mode %v, want %v", rel, got, want.mode)
		}
		switch {
		case want.link != "":
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if target != want.link {
				return fmt.Errorf("%s links to %s, want %s", rel, target, want.link)
			}
		case want.mode.IsRegular():
			if info.Size() != want.size {
				return fmt.Errorf("%s has %d bytes, want %d", rel, info.Size(), want.size)
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			if !bytes.Equal(h.Sum(nil), want.sum[:]) {
				return fmt.Errorf("%s differs from the file it was made from", rel)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(s.files) {
		return fmt.Errorf("found %d of the image's %d paths under /%s", seen, len(s.files), srcPrefix)
	}
	return nil
}
