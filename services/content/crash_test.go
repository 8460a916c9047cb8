package content_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// These tests SIGKILL flotilla-content, which is what a crash or an OOM kill
// does to it: no deferred Close, no final status write. They do not lose the
// page cache, so they check the ordering of the store's steps, not fsync.

func TestCommittedBlobSurvivesSIGKILL(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "content")
	blob := bytes.Repeat([]byte("committed before the crash "), 40_000)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	labels := map[string]string{"containerd.io/gc.root": "yes"}

	p := start(t, root)
	conn, cs := dial(t, p.Socket)
	w, err := content.OpenWriter(ctx, cs, content.WithRef("committed"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest, content.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	conn.Close()

	p = start(t, root)
	defer p.Stop()
	conn, cs = dial(t, p.Socket)
	defer conn.Close()
	info, err := cs.Info(ctx, desc.Digest)
	if err != nil {
		t.Fatalf("blob committed before SIGKILL is gone after restart: %v", err)
	}
	if info.Size != desc.Size || info.Labels["containerd.io/gc.root"] != "yes" {
		t.Fatalf("after SIGKILL and restart the blob is %+v; want %d bytes and labels %v", info, desc.Size, labels)
	}
	got, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		t.Fatal(err)
	}
	if digest.FromBytes(got) != desc.Digest {
		t.Fatalf("blob read back after SIGKILL has digest %s, want %s", digest.FromBytes(got), desc.Digest)
	}
	if _, err := cs.Status(ctx, "committed"); !errdefs.IsNotFound(err) {
		t.Fatalf("ingest of a committed blob is still there after restart: %v", err)
	}
	checkRootAfterCrash(t, root, map[digest.Digest][]byte{desc.Digest: blob})
}

func TestIngestInterruptedBySIGKILLIsResumable(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "content")
	blob := bytes.Repeat([]byte("resumed after a crash "), 50_000)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	written := len(blob) / 3

	p := start(t, root)
	conn, cs := dial(t, p.Socket)
	w, err := content.OpenWriter(ctx, cs, content.WithRef("resume"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	// Several writes, each acknowledged by the server before the next.
	for off := 0; off < written; off += 64 << 10 {
		if _, err := w.Write(blob[off:min(off+64<<10, written)]); err != nil {
			t.Fatal(err)
		}
	}
	p.Kill() // the writer was never closed
	conn.Close()

	p = start(t, root)
	defer p.Stop()
	conn, cs = dial(t, p.Socket)
	defer conn.Close()
	st, err := cs.Status(ctx, "resume")
	if err != nil {
		t.Fatalf("ingest interrupted by SIGKILL is gone after restart: %v", err)
	}
	if st.Offset != int64(written) || st.Total != desc.Size || st.Expected != desc.Digest {
		t.Fatalf("after SIGKILL the ingest is %+v; want offset %d, total %d, expected %s", st, written, desc.Size, desc.Digest)
	}
	// The killed process held the ref; the new one must not think so.
	w, err = content.OpenWriter(ctx, cs, content.WithRef("resume"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatalf("resuming the interrupted ingest: %v", err)
	}
	ws, err := w.Status()
	if err != nil {
		t.Fatal(err)
	}
	if ws.Offset != int64(written) || w.Digest() != digest.FromBytes(blob[:written]) {
		t.Fatalf("resumed writer at offset %d with digest %s; want %d and the digest of what was written", ws.Offset, w.Digest(), written)
	}
	if _, err := w.Write(blob[written:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil {
		t.Fatalf("committing the resumed ingest: %v", err)
	}
	got, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, blob) {
		t.Fatal("blob finished after SIGKILL differs from the one written")
	}
	checkRootAfterCrash(t, root, map[digest.Digest][]byte{desc.Digest: blob})
}

func TestIngestInterruptedBySIGKILLIsAbortable(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "content")
	blob := bytes.Repeat([]byte("aborted after a crash "), 50_000)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}

	p := start(t, root)
	conn, cs := dial(t, p.Socket)
	w, err := content.OpenWriter(ctx, cs, content.WithRef("abort"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob[:len(blob)/2]); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	conn.Close()

	p = start(t, root)
	defer p.Stop()
	conn, cs = dial(t, p.Socket)
	defer conn.Close()
	if err := cs.Abort(ctx, "abort"); err != nil {
		t.Fatalf("aborting the ingest interrupted by SIGKILL: %v", err)
	}
	if sts, err := cs.ListStatuses(ctx); err != nil || len(sts) != 0 {
		t.Fatalf("ingests after abort: %+v, %v; want none", sts, err)
	}
	if _, err := cs.Info(ctx, desc.Digest); !errdefs.IsNotFound(err) {
		t.Fatalf("aborted ingest's digest: %v, want NotFound", err)
	}
	checkRootAfterCrash(t, root, nil)
}

// TestSIGKILLDuringCommitsPublishesOnlyWholeBlobs kills the service while
// several clients write and commit, at whatever step each one is, and checks
// that what it left is a consistent store: every blob whole under its digest,
// every acknowledged commit there, every other ingest resumable or abortable.
func TestSIGKILLDuringCommitsPublishesOnlyWholeBlobs(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the service several times")
	}
	root := filepath.Join(t.TempDir(), "content")
	committed := map[digest.Digest][]byte{}
	refs := map[string]bool{}
	rng := rand.New(rand.NewPCG(1, 2))

	for round := range 4 {
		p := start(t, root)
		conn, cs := dial(t, p.Socket)
		ctx, cancel := context.WithCancel(context.Background())
		var (
			mu sync.Mutex
			wg sync.WaitGroup
		)
		for worker := range 3 {
			seed := rng.Uint64()
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, uint64(worker)))
				for i := 0; ctx.Err() == nil; i++ {
					ref := fmt.Sprintf("round%d-worker%d-%d", round, worker, i)
					blob := make([]byte, 1+r.IntN(2<<20))
					for j := range blob {
						blob[j] = byte(r.Uint32())
					}
					mu.Lock()
					refs[ref] = true
					mu.Unlock()
					if err := writeAndCommit(ctx, cs, ref, blob); err == nil {
						mu.Lock()
						committed[digest.FromBytes(blob)] = blob
						mu.Unlock()
					}
				}
			}()
		}
		// Long enough for commits to be under way, short enough to catch
		// most of them in the middle.
		time.Sleep(time.Duration(150+rng.IntN(300)) * time.Millisecond)
		p.Kill()
		cancel()
		wg.Wait()
		conn.Close()
	}
	if len(committed) == 0 {
		t.Fatal("no commit finished before the kills; the test checked nothing")
	}

	ctx := context.Background()
	p := start(t, root)
	defer p.Stop()
	conn, cs := dial(t, p.Socket)
	defer conn.Close()
	for d, blob := range committed {
		got, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: d})
		if err != nil {
			t.Fatalf("blob %s acknowledged before a SIGKILL is unreadable after restart: %v", d, err)
		}
		if !bytes.Equal(got, blob) {
			t.Fatalf("blob %s acknowledged before a SIGKILL reads back different", d)
		}
	}
	// Whatever else was published was published whole (checkRootAfterCrash
	// hashes every file), and every ingest left is resumable or abortable.
	sts, err := cs.ListStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		w, err := content.OpenWriter(ctx, cs, content.WithRef(st.Ref))
		if err != nil {
			t.Fatalf("ingest %q left by SIGKILL cannot be resumed: %v", st.Ref, err)
		}
		ws, err := w.Status()
		if err != nil || ws.Offset != st.Offset {
			t.Fatalf("resumed ingest %q: %+v, %v; want offset %d", st.Ref, ws, err, st.Offset)
		}
		w.Close()
	}
	for ref := range refs {
		if err := cs.Abort(ctx, ref); err != nil && !errdefs.IsNotFound(err) {
			t.Fatalf("aborting ingest %q left by SIGKILL: %v", ref, err)
		}
	}
	t.Logf("%d blobs acknowledged, %d ingests left by 4 kills", len(committed), len(sts))
	checkRootAfterCrash(t, root, nil)
	for d := range committed {
		if _, err := cs.Info(ctx, d); err != nil {
			t.Fatalf("Info(%s) after aborting every ingest: %v", d, err)
		}
	}
}

func writeAndCommit(ctx context.Context, cs content.Store, ref string, blob []byte) error {
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		return err
	}
	defer w.Close()
	half := len(blob) / 2
	if _, err := w.Write(blob[:half]); err != nil {
		return err
	}
	if _, err := w.Write(blob[half:]); err != nil {
		return err
	}
	return w.Commit(ctx, desc.Size, desc.Digest)
}

// checkRootAfterCrash checks the root on disk once every ingest is committed
// or aborted: every file under blobs/ is named by a digest and holds exactly
// the bytes of that digest (nothing half-written or temporary was published),
// the blobs are exactly those in want (when want is not nil), and no ingest
// directory is left behind.
func checkRootAfterCrash(t *testing.T, root string, want map[digest.Digest][]byte) {
	t.Helper()
	found := map[digest.Digest]bool{}
	base := filepath.Join(root, "blobs")
	err := filepath.WalkDir(base, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		alg, enc := filepath.Dir(rel), filepath.Base(rel)
		d := digest.NewDigestFromEncoded(digest.Algorithm(alg), enc)
		if err := d.Validate(); err != nil {
			t.Fatalf("file %s published in blobs/ is not named by a digest: %v", p, err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if got := d.Algorithm().FromBytes(b); got != d {
			t.Fatalf("blob %s holds %d bytes with digest %s: a partial or foreign file was published", d, len(b), got)
		}
		found[d] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for d := range want {
		if !found[d] {
			t.Fatalf("blob %s missing from %s", d, base)
		}
	}
	if want != nil && len(found) != len(want) {
		t.Fatalf("blobs/ holds %d blobs, want %d", len(found), len(want))
	}
	ingests, err := os.ReadDir(filepath.Join(root, "ingest"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ingests {
		if b, err := hex.DecodeString(e.Name()); err != nil || len(b) != sha256.Size {
			t.Fatalf("stray entry %s in ingest/", e.Name())
		}
		if _, err := os.Stat(filepath.Join(root, "ingest", e.Name(), "status")); errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("ingest directory %s left without a status: no client can name or abort it", e.Name())
		}
	}
	if len(ingests) != 0 {
		t.Fatalf("%d ingest directories left where none should be", len(ingests))
	}
}
