package contentserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/services/content/blobs"
)

// writeStream is a Write stream driven in-process: Recv asks next for each
// request, so a request can be built from the store's state at the moment the
// server asks for it.
type writeStream struct {
	grpc.ServerStream // nil: the server uses only what is overridden here
	ctx               context.Context
	next              func() (*api.WriteContentRequest, error)
	sent              []*api.WriteContentResponse
}

func (s *writeStream) Context() context.Context { return s.ctx }

func (s *writeStream) Recv() (*api.WriteContentRequest, error) { return s.next() }

func (s *writeStream) Send(resp *api.WriteContentResponse) error {
	s.sent = append(s.sent, resp)
	return nil
}

// program decodes fuzzer bytes into choices; once they run out every choice
// is zero, which ends the program.
type program struct{ b []byte }

func (p *program) byte() byte {
	if len(p.b) == 0 {
		return 0
	}
	c := p.b[0]
	p.b = p.b[1:]
	return c
}

func (p *program) pick(n int) int { return int(p.byte()) % n }

func (p *program) done() bool { return len(p.b) == 0 }

// fuzzRefs are the refs sessions use: few, so that sessions meet each
// other's ingests, and some that would escape the root were refs paths.
var fuzzRefs = []string{"r0", "r1", "../../../escape", "/abs/ref", "ns/1/layer-sha256:x"}

// writeFuzzer runs one fuzz program against a fresh store and checks the
// invariants of the Write protocol after every session.
type writeFuzzer struct {
	t       *testing.T
	ctx     context.Context
	parent  string // directory holding the root and nothing else
	store   *blobs.Store
	svc     *Service
	prog    *program
	data    []byte
	held    map[string]content.Writer // refs locked by a writer opened behind the server's back
	commits []digest.Digest           // blobs committed so far, for "already exists" digests
}

func FuzzWriteProtocol(f *testing.F) {
	// A program is read a byte at a time (see step and session): which
	// operation, on which ref, then for a session the number of messages and
	// for each its action, ref, offset, chunk, total, expected digest and
	// labels. Seeds only give the fuzzer a start.
	f.Add([]byte{0, 0, 3, 1, 0, 1, 0, 0, 8, 2, 0, 1, 1, 1, 0}, []byte("hello, content"))
	f.Add([]byte{0, 1, 2, 1, 0, 1, 1, 1, 20, 2, 0, 1, 1, 1, 0, 0, 1, 2, 2, 0, 1, 1, 1, 8}, []byte("resumed and committed"))
	f.Add([]byte{0, 2, 1, 2, 0, 0, 0, 2, 30, 0, 2, 1, 2, 0, 0, 0, 1, 30}, []byte("wrong digest then right one"))
	f.Add([]byte{0, 3, 2, 1, 0, 0, 0, 0, 5, 2, 0, 1, 1, 5, 5}, []byte("sha512 of this"))
	f.Add([]byte{0, 0, 1, 2, 0, 0, 1, 1, 9, 3, 0, 0, 0, 1, 3, 4, 0, 0, 1, 2, 0, 0, 1, 6, 9}, []byte("held, aborted, duplicated"))
	f.Add([]byte{0, 4, 2, 1, 0, 0, 0, 0, 7, 2, 0, 2, 2, 2, 0}, []byte("bad offsets"))
	f.Add([]byte{0, 1, 1, 2, 0, 0, 0, 1, 255, 5, 0, 0, 1, 2, 0, 0, 3, 0}, []byte("big"))

	f.Fuzz(func(t *testing.T, prog, data []byte) {
		if len(prog) > 512 || len(data) > 4096 {
			return // longer programs only repeat what shorter ones reach
		}
		parent := fastTempDir(t)
		s, err := blobs.Open(filepath.Join(parent, "content"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		fz := &writeFuzzer{
			t: t, ctx: context.Background(), parent: parent, store: s, svc: New(s),
			prog: &program{prog}, data: data, held: map[string]content.Writer{},
		}
		defer func() {
			for _, w := range fz.held {
				w.Close()
			}
		}()
		for steps := 0; !fz.prog.done() && steps < 32; steps++ {
			fz.step()
			fz.checkTree()
		}
	})
}

func (fz *writeFuzzer) step() {
	t := fz.t
	ref := fuzzRefs[fz.prog.pick(len(fuzzRefs))]
	switch fz.prog.pick(10) {
	case 0, 1, 2, 3, 4, 5:
		fz.session(ref)
	case 6: // lock the ref as a concurrent client would
		if _, ok := fz.held[ref]; ok {
			return
		}
		w, err := fz.store.Writer(fz.ctx, content.WithRef(ref))
		if err != nil {
			t.Fatalf("Writer(%q) outside any session: %v", ref, err)
		}
		fz.held[ref] = w
	case 7: // release it
		if w, ok := fz.held[ref]; ok {
			delete(fz.held, ref)
			if err := w.Close(); err != nil {
				t.Fatalf("Close of held writer %q: %v", ref, err)
			}
		}
	case 8:
		_, held := fz.held[ref]
		// Abort waits a while for a held ref to be released; not here.
		ctx, cancel := context.WithTimeout(fz.ctx, time.Millisecond)
		err := fz.store.Abort(ctx, ref)
		cancel()
		switch {
		case held && !errdefs.IsUnavailable(err):
			t.Fatalf("Abort(%q) of a held ref gave %v, want Unavailable", ref, err)
		case !held && err != nil && !errdefs.IsNotFound(err):
			t.Fatalf("Abort(%q): %v", ref, err)
		}
	case 9:
		if len(fz.commits) == 0 {
			return
		}
		i := fz.prog.pick(len(fz.commits))
		if err := fz.store.Delete(fz.ctx, fz.commits[i]); err != nil {
			t.Fatalf("Delete(%s) of a committed blob: %v", fz.commits[i], err)
		}
		fz.commits = slices.Delete(fz.commits, i, i+1)
	}
}

// ingestData is what the ingest of ref holds on disk (nil if none). The
// server writes straight to the file, so this is also what a commit would
// publish.
func (fz *writeFuzzer) ingestData(ref string) []byte {
	h := sha256.Sum256([]byte(ref))
	b, err := os.ReadFile(filepath.Join(fz.store.Root(), "ingest", hex.EncodeToString(h[:]), "data"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		fz.t.Fatal(err)
	}
	return b
}

func (fz *writeFuzzer) chunk() []byte {
	n := int(fz.prog.byte())
	if n == 255 {
		// Big enough for the writer's parallel hashing path.
		return bytes.Repeat(append([]byte{byte(len(fz.data))}, fz.data...), 300<<10/(len(fz.data)+1)+1)
	}
	return fz.data[:min(n, len(fz.data))]
}

// session runs one Write stream on ref and checks its outcome.
func (fz *writeFuzzer) session(ref string) {
	t := fz.t
	before := fz.blobSet()
	_, held := fz.held[ref]
	nmsgs := 1 + fz.prog.pick(4)

	var (
		sent     int
		total    int64         // the total the server holds the commit to
		expected digest.Digest // likewise the digest
		// What a commit in this session publishes, when it can be known:
		// not for a first message, whose writer may restart the ingest.
		commit   *api.WriteContentRequest
		predict  []byte
		knowable bool
	)
	next := func() (*api.WriteContentRequest, error) {
		if sent == nmsgs {
			return nil, io.EOF
		}
		sent++
		req := &api.WriteContentRequest{}
		// Choices that end a session (negative numbers, unknown actions,
		// another ref) are rarer than the rest, or few sessions would get
		// past their first message.
		switch fz.prog.pick(16) {
		case 0, 1, 2:
			req.Action = api.WriteAction_STAT
		case 3, 4, 5, 6, 7, 8:
			req.Action = api.WriteAction_WRITE
		case 9, 10, 11, 12, 13, 14:
			req.Action = api.WriteAction_COMMIT
		default:
			req.Action = api.WriteAction(3 + fz.prog.pick(3))
		}
		switch fz.prog.pick(16) {
		case 0, 1, 2, 3:
			if sent > 1 {
				req.Ref = ""
				break
			}
			req.Ref = ref
		case 15:
			if sent > 1 { // the first message names the session's ref
				req.Ref = fuzzRefs[fz.prog.pick(len(fuzzRefs))]
				break
			}
			req.Ref = ref
		default:
			req.Ref = ref
		}
		cur := fz.ingestData(ref)
		switch fz.prog.pick(16) {
		case 0, 1, 2, 3:
			req.Offset = 0
		case 12:
			req.Offset = int64(len(cur)) + 1
		case 13:
			req.Offset = -1
		case 14, 15:
			req.Offset = int64(fz.prog.byte())
		default:
			req.Offset = int64(len(cur))
		}
		data := fz.chunk()
		switch {
		case req.Action != api.WriteAction_WRITE && req.Action != api.WriteAction_COMMIT:
		case req.Offset == 0 && len(cur) > 0:
			// Offset 0 restarts the ingest, as in containerd.
			cur = nil
		}
		after := append(slices.Clip(cur), data...)
		switch fz.prog.pick(16) {
		case 0, 1, 2, 3, 4, 5:
			req.Total = 0
		case 12:
			req.Total = int64(len(after)) + 1
		case 13:
			req.Total = -1
		case 14, 15:
			req.Total = int64(fz.prog.byte())
		default:
			req.Total = int64(len(after))
		}
		switch fz.prog.pick(16) {
		case 0, 1, 2, 3, 4, 5, 6:
		case 7, 8, 9, 10:
			req.Expected = digest.FromBytes(after).String()
		case 11:
			req.Expected = digest.SHA512.FromBytes(after).String()
		case 12:
			req.Expected = digest.FromBytes(append(after, 'x')).String()
		case 13, 14:
			if len(fz.commits) > 0 {
				req.Expected = fz.commits[fz.prog.pick(len(fz.commits))].String()
			}
		default:
			req.Expected = []string{"sha256:nope", "sha256:../../x", "md5:00", ":", "sha256:" + strings.Repeat("A", 64)}[fz.prog.pick(5)]
		}
		if fz.prog.pick(4) == 0 {
			req.Labels = map[string]string{"fuzz": string(fz.data[:min(len(fz.data), 8)])}
		}
		if req.Action == api.WriteAction_WRITE || req.Action == api.WriteAction_COMMIT {
			req.Data = data
		}

		// Track what the server should hold the commit to; messages the
		// server refuses end the session, so only the accepted ones count.
		if req.Total > 0 || sent == 1 {
			total = req.Total
		}
		if req.Expected != "" {
			expected = digest.Digest(req.Expected)
		}
		if req.Action == api.WriteAction_COMMIT {
			commit, predict, knowable = req, after, sent > 1
		}
		return req, nil
	}

	stream := &writeStream{ctx: fz.ctx, next: next}
	err := fz.svc.Write(stream)
	after := fz.blobSet()

	if err != nil {
		if !isClientError(err) {
			t.Fatalf("session on %q failed with %v, which is no client error: a protocol fuzz should only produce those", ref, err)
		}
		if errdefs.IsUnavailable(err) && !held {
			t.Fatalf("session on %q gave %v though nothing else holds the ref", ref, err)
		}
		if !slices.Equal(before, after) {
			t.Fatalf("failed session (%v) changed blobs from %v to %v", err, before, after)
		}
		return
	}
	if held {
		t.Fatalf("session on %q succeeded while another writer held the ref", ref)
	}
	last := stream.sent[len(stream.sent)-1]
	if last.Action != api.WriteAction_COMMIT {
		if !slices.Equal(before, after) {
			t.Fatalf("session without commit changed blobs from %v to %v", before, after)
		}
		return
	}

	d, err := digest.Parse(last.Digest)
	if err != nil {
		t.Fatalf("commit answered with digest %q: %v", last.Digest, err)
	}
	if want := append(slices.Clone(before), d.String()); !slices.Equal(after, sortedStrings(want)) {
		t.Fatalf("commit of %s changed blobs from %v to %v", d, before, after)
	}
	got, err := os.ReadFile(filepath.Join(fz.store.Root(), "blobs", d.Algorithm().String(), d.Encoded()))
	if err != nil {
		t.Fatal(err)
	}
	if d.Algorithm().FromBytes(got) != d {
		t.Fatalf("blob published as %s has digest %s", d, d.Algorithm().FromBytes(got))
	}
	if expected != "" && d != expected {
		t.Fatalf("commit expecting %s published %s", expected, d)
	}
	if total > 0 && int64(len(got)) != total {
		t.Fatalf("commit expecting %d bytes published %d", total, len(got))
	}
	if last.Offset != int64(len(got)) {
		t.Fatalf("commit answered offset %d for a blob of %d bytes", last.Offset, len(got))
	}
	if knowable && !bytes.Equal(got, predict) {
		t.Fatalf("commit published %q, but the session wrote %q", got, predict)
	}
	if _, err := fz.store.Status(fz.ctx, ref); !errdefs.IsNotFound(err) {
		t.Fatalf("ingest %q still there after its commit: %v", ref, err)
	}
	info, err := fz.store.Info(fz.ctx, d)
	if err != nil || info.Size != int64(len(got)) || !mapsEqual(info.Labels, commit.Labels) {
		t.Fatalf("Info of the committed %s: %+v, %v; want %d bytes, labels %v", d, info, err, len(got), commit.Labels)
	}
	fz.commits = append(fz.commits, d)
}

// fastTempDir is a temporary directory on tmpfs when there is one: there
// fsync costs nothing, so the fuzzer spends its time on the protocol rather
// than waiting for the disk.
func fastTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "flotilla-fuzz")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// blobSet lists blobs/ on disk: what is published, whoever published it.
func (fz *writeFuzzer) blobSet() []string {
	var out []string
	base := filepath.Join(fz.store.Root(), "blobs")
	err := filepath.WalkDir(base, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			rel, _ := filepath.Rel(base, p)
			alg, enc, _ := strings.Cut(rel, string(filepath.Separator))
			out = append(out, alg+":"+enc)
		}
		return nil
	})
	if err != nil {
		fz.t.Fatal(err)
	}
	return sortedStrings(out)
}

// checkTree checks that nothing exists but the store's own layout: the root
// alone in its parent, and in it only blobs named by digest and ingests named
// by a ref's hash.
func (fz *writeFuzzer) checkTree() {
	t := fz.t
	entries, err := os.ReadDir(fz.parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "content" {
		t.Fatalf("files appeared beside the content root: %v", entries)
	}
	root := fz.store.Root()
	err = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.Type()&fs.ModeSymlink != 0 {
			t.Fatalf("symlink %s in the content root", p)
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(rel, string(filepath.Separator))
		switch {
		case rel == "." || rel == "blobs" || rel == "ingest" || rel == "meta.db":
		case parts[0] == "blobs" && len(parts) == 2 && e.IsDir():
			if !digest.Algorithm(parts[1]).Available() {
				t.Fatalf("directory for unknown algorithm %s", p)
			}
		case parts[0] == "blobs" && len(parts) == 3 && e.Type().IsRegular():
			if err := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2]).Validate(); err != nil {
				t.Fatalf("file %s in blobs/ is not named by a digest: %v", p, err)
			}
		case parts[0] == "ingest" && len(parts) == 2 && e.IsDir():
			if b, err := hex.DecodeString(parts[1]); err != nil || len(b) != sha256.Size {
				t.Fatalf("ingest directory %s is not named by a ref's hash", p)
			}
		case parts[0] == "ingest" && len(parts) == 3 && e.Type().IsRegular() &&
			(parts[2] == "data" || parts[2] == "status" || parts[2] == "status.tmp"):
		default:
			t.Fatalf("unexpected file %s in the content root", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// isClientError says whether err is one of the errdefs classes a client's
// bad or racing request earns, as opposed to a server fault.
func isClientError(err error) bool {
	return errdefs.IsInvalidArgument(err) || errdefs.IsNotFound(err) || errdefs.IsAlreadyExists(err) ||
		errdefs.IsFailedPrecondition(err) || errdefs.IsUnavailable(err) || errdefs.IsOutOfRange(err)
}

func sortedStrings(s []string) []string {
	slices.Sort(s)
	return s
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
