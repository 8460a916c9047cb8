package diff

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// memStore is an in-memory content store: what the Diff service reads
// layers from and writes diffs to. It records the outgoing gRPC metadata
// of the last call so that tests can see what a proxy client would send.
type memStore struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte
	labels  map[digest.Digest]map[string]string
	lastCtx context.Context
}

func newMemStore() *memStore {
	return &memStore{blobs: map[digest.Digest][]byte{}, labels: map[digest.Digest]map[string]string{}}
}

// add stores b under its own digest and returns a descriptor for it.
func (m *memStore) add(mediaType string, b []byte) ocispec.Descriptor {
	d := digest.FromBytes(b)
	m.put(d, b)
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

// put stores b under d, which need not be its digest.
func (m *memStore) put(d digest.Digest, b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blobs[d] = b
}

func (m *memStore) seen(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastCtx = ctx
}

func (m *memStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	m.seen(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return bytesReaderAt{bytes.NewReader(b)}, nil
}

type bytesReaderAt struct{ *bytes.Reader }

func (bytesReaderAt) Close() error { return nil }

func (m *memStore) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	m.seen(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	if !ok {
		return content.Info{}, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	return content.Info{Digest: d, Size: int64(len(b)), Labels: maps.Clone(m.labels[d])}, nil
}

func (m *memStore) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	m.seen(ctx)
	m.mu.Lock()
	if _, ok := m.blobs[info.Digest]; !ok {
		m.mu.Unlock()
		return content.Info{}, errdefs.ErrNotFound
	}
	if m.labels[info.Digest] == nil {
		m.labels[info.Digest] = map[string]string{}
	}
	for _, f := range fieldpaths {
		k := strings.TrimPrefix(f, "labels.")
		m.labels[info.Digest][k] = info.Labels[k]
	}
	m.mu.Unlock()
	return m.Info(ctx, info.Digest)
}

func (m *memStore) Abort(ctx context.Context, ref string) error { m.seen(ctx); return nil }

func (m *memStore) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	m.seen(ctx)
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	return &memWriter{store: m, ref: wo.Ref, d: digest.Canonical.Digester()}, nil
}

type memWriter struct {
	store *memStore
	ref   string
	buf   bytes.Buffer
	d     digest.Digester
}

func (w *memWriter) Write(p []byte) (int, error) {
	w.d.Hash().Write(p)
	return w.buf.Write(p)
}
func (w *memWriter) Close() error          { return nil }
func (w *memWriter) Digest() digest.Digest { return w.d.Digest() }
func (w *memWriter) Truncate(size int64) error {
	if size != 0 {
		return errdefs.ErrNotImplemented
	}
	w.buf.Reset()
	w.d = digest.Canonical.Digester()
	return nil
}
func (w *memWriter) Status() (content.Status, error) {
	return content.Status{Ref: w.ref, Offset: int64(w.buf.Len())}, nil
}
func (w *memWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	var info content.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return err
		}
	}
	if size != 0 && size != int64(w.buf.Len()) {
		return fmt.Errorf("size %d, wrote %d: %w", size, w.buf.Len(), errdefs.ErrFailedPrecondition)
	}
	if expected != "" && expected != w.Digest() {
		return fmt.Errorf("digest %s, wrote %s: %w", expected, w.Digest(), errdefs.ErrFailedPrecondition)
	}
	w.store.mu.Lock()
	defer w.store.mu.Unlock()
	if _, ok := w.store.blobs[w.Digest()]; ok {
		return fmt.Errorf("blob %s: %w", w.Digest(), errdefs.ErrAlreadyExists)
	}
	w.store.blobs[w.Digest()] = bytes.Clone(w.buf.Bytes())
	w.store.labels[w.Digest()] = maps.Clone(info.Labels)
	return nil
}

func newTestService(t testing.TB) (*Service, *memStore) {
	cs := newMemStore()
	return New(cs), cs
}

// entry is one tar member for buildTar.
type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
}
func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}
func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// hardlink's mode must be its target's: both name one inode.
func hardlink(name, target string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: mode}}
}

// buildTar writes entries owned by the current user (so that tests need
// not be root unless they say so) with a fixed mtime.
func buildTar(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Uid == 0 && h.Gid == 0 {
			h.Uid, h.Gid = os.Getuid(), os.Getgid()
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if h.Format == tar.FormatUnknown && len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

func bindMount(dir string) []mount.Mount {
	return []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root (mounts, device nodes, ownership, trusted xattrs)")
	}
}

// treeState describes every file under root: type, mode, owner, size,
// link count, mtime, symlink target, content hash and xattrs. Two trees
// with equal states are the same as far as a layer can tell.
func treeState(t testing.TB, root string, withTimes bool) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size=%d nlink=%d sha=%x", st.Size, st.Nlink, sha256.Sum256(b))
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" dev=%d", st.Rdev)
		}
		if withTimes && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			desc += fmt.Sprintf(" mtime=%d", st.Mtim.Sec)
		}
		desc += " xattrs=" + xattrs(p)
		state[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return state
}

func xattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var out []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 4096)
		m, _ := unix.Lgetxattr(p, name, v)
		if m < 0 {
			m = 0
		}
		out = append(out, name+"="+string(v[:m]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func diffStates(a, b map[string]string) string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			out = append(out, fmt.Sprintf("only in first: %s (%s)", k, v))
		} else if v != w {
			out = append(out, fmt.Sprintf("%s: %s != %s", k, v, w))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("only in second: %s (%s)", k, v))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func statOf(t testing.TB, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}
