package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzApply feeds fuzzer-built layer tars to the applier (applyTree, what
// Apply runs once the target is mounted) and checks that, whatever the
// layer and whether or not it is refused, nothing outside the target
// changes: a sentinel directory beside it keeps every name, byte, mode,
// link count and time, and nothing appears next to the two. A crash or
// hang is a failure too.
//
// The input is a small program: the first byte picks the mode (bit 0: the
// rest is a raw tar stream instead of a program; bit 1: the target is an
// overlay upper directory over a lower layer), then each entry is four
// bytes (type, name, link target, mode) drawing names from fragments that
// matter to path handling: "..", absolute paths into the sentinel,
// symlinks already in place, whiteouts and opaque markers.
//
// make fuzz runs it for 10s; for a longer run:
//
//	go test -run '^$' -fuzz '^FuzzApply$' -fuzztime 30m ./services/snapshotter/diff/
func FuzzApply(f *testing.F) {
	seeds := [][]byte{
		{0, 0, 1, 0, 0},
		{0, 2, 5, 0, 0, 0, 6, 0, 0},   // symlink then a write through it
		{2, 4, 0, 1, 0, 0, 8, 0, 0},   // overlay: whiteout, opaque
		{0, 3, 1, 4, 0},               // hard link outward
		{0, 0, 12, 0, 0, 1, 13, 0, 0}, // absolute names
		{0, 2, 2, 9, 0, 0, 15, 0, 0, 0, 16, 0, 0},
	}
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "x", Linkname: "../sentinel"})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "x/file", Size: 1, Mode: 0o644})
	tw.Write([]byte("!"))
	tw.Close()
	seeds = append(seeds, append([]byte{1}, raw.Bytes()...))
	for _, s := range seeds {
		f.Add(s)
	}

	base := fuzzBase(f)
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) == 0 || len(prog) > 4096 {
			return
		}
		dir, err := os.MkdirTemp(base, "case")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		fx := &escapeFixture{base: dir, target: filepath.Join(dir, "target"), sentinel: filepath.Join(dir, "sentinel")}
		for _, d := range []string{fx.target, filepath.Join(fx.sentinel, "dir")} {
			must(t, os.MkdirAll(d, 0o755))
		}
		for _, p := range []string{"file", "dir/inner"} {
			must(t, os.WriteFile(filepath.Join(fx.sentinel, p), []byte("original"), 0o644))
		}
		// Symlinks already in the snapshot, pointing out.
		must(t, os.Symlink(fx.sentinel, filepath.Join(fx.target, "pre")))
		must(t, os.Symlink("../sentinel/dir", filepath.Join(fx.target, "rel")))
		must(t, os.MkdirAll(filepath.Join(fx.target, "a"), 0o755))
		var lowers []string
		var lowerBefore map[string]string
		prefix := ""
		if prog[0]&2 != 0 {
			lower := filepath.Join(dir, "lower")
			must(t, os.MkdirAll(filepath.Join(lower, "b"), 0o755))
			must(t, os.Symlink(fx.sentinel, filepath.Join(lower, "ls")))
			must(t, os.Symlink("../../sentinel", filepath.Join(lower, "b", "s")))
			must(t, os.Mkdir(filepath.Join(dir, "work"), 0o755)) // for check()'s listing
			lowers, prefix = []string{lower}, "trusted."
			lowerBefore = treeState(t, lower, true)
		}
		fx.before = treeState(t, fx.sentinel, true)

		var layer []byte
		if prog[0]&1 != 0 {
			layer = prog[1:]
		} else {
			layer = fuzzLayer(fx, prog[1:])
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = applyTree(ctx, fx.target, bytes.NewReader(layer), lowers, prefix, false)
		fx.check(t)
		if lowers != nil {
			if d := diffStates(lowerBefore, treeState(t, lowers[0], true)); d != "" {
				t.Errorf("the layer changed the read-only lower layer:\n%s", d)
			}
		}
	})
}

// fuzzLayer builds a tar from prog, four bytes an entry.
func fuzzLayer(fx *escapeFixture, prog []byte) []byte {
	fragments := []string{
		"a", "b", "s", "pre", "rel", "..", ".", ".wh.a", ".wh..wh..opq", ".wh..",
		"ls", "b/s", fx.sentinel, fx.base, "file", "dir", "x", ".wh.x", "a/..", "",
	}
	name := func(b byte) string {
		// Up to three fragments joined: the low bits pick each one.
		n := int(b%3) + 1
		parts := make([]string, 0, n)
		v := int(b)
		for range n {
			parts = append(parts, fragments[v%len(fragments)])
			v = v/len(fragments) + 7*len(parts)
		}
		return strings.Join(parts, "/")
	}
	types := []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeReg, tar.TypeFifo, tar.TypeChar}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for len(prog) >= 4 {
		typ, nm, link, mode := prog[0], prog[1], prog[2], prog[3]
		prog = prog[4:]
		h := &tar.Header{
			Typeflag: types[int(typ)%len(types)],
			Name:     name(nm),
			Mode:     int64(mode&0o7) << 6,
			ModTime:  time.Unix(1700000000, 0),
			Uid:      os.Getuid(),
			Gid:      os.Getgid(),
		}
		if typ&0x80 != 0 {
			h.Name = "/" + h.Name
		}
		body := ""
		switch h.Typeflag {
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = name(link)
		case tar.TypeReg:
			body = "pwned"
			h.Size = int64(len(body))
		case tar.TypeChar:
			h.Devmajor, h.Devminor = 1, 3
		}
		if typ&0x40 != 0 {
			h.PAXRecords = map[string]string{"SCHILY.xattr.user.overlay.opaque": "y", "SCHILY.xattr.user.x": "1"}
			h.Format = tar.FormatPAX
		}
		if tw.WriteHeader(h) != nil {
			continue
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return buf.Bytes()
}

// fuzzBase is where each case gets its directories: tmpfs when there is
// one, since every case creates and removes a small tree and on a disk
// filesystem that bookkeeping, not the applier, would take most of the
// run (about 20 times slower on ext4).
func fuzzBase(f *testing.F) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "flotilla-fuzzapply-"); err == nil {
			f.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return f.TempDir()
}
