package memstore_test

import (
	"context"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/memstore"
)

// TestContainerdContentSuite holds the store to containerd's own behaviour
// suite, so tests that use it as a content service learn nothing false.
func TestContainerdContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "memstore", func(ctx context.Context, _ string) (context.Context, content.Store, func() error, error) {
		return ctx, memstore.New(), func() error { return nil }, nil
	})
}

func TestFailedCommitKeepsTheIngest(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	w, err := s.Writer(ctx, content.WithRef("r"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("half")); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, 100, ""); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("commit with the wrong size: %v, want FailedPrecondition", err)
	}
	if !s.HasIngest("r") {
		t.Fatal("the failed commit ended the ingest; the client cannot fix it")
	}
	if err := w.Commit(ctx, 4, digest.FromString("half")); err != nil {
		t.Fatalf("commit after the failed one: %v", err)
	}
	if b, ok := s.Bytes(digest.FromString("half")); !ok || string(b) != "half" {
		t.Fatalf("stored %q (%v), want %q", b, ok, "half")
	}
}

func TestAbortedIngestRefusesWritesAndIsRecorded(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	w, err := s.Writer(ctx, content.WithRef("r"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("late")); !errdefs.IsNotFound(err) {
		t.Errorf("write after abort: %v, want NotFound", err)
	}
	if err := w.Commit(ctx, 0, ""); !errdefs.IsNotFound(err) {
		t.Errorf("commit after abort: %v, want NotFound", err)
	}
	if !s.WasAborted("r") || s.HasIngest("r") || !slices.Equal(s.Aborted(), []string{"r"}) {
		t.Errorf("after abort: recorded %v, ingest open %v; want [r] and no ingest", s.Aborted(), s.HasIngest("r"))
	}
}

func TestDeletedBlobsAreRecorded(t *testing.T) {
	s := memstore.New()
	d := s.Put([]byte("blob"))
	if err := s.Delete(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if s.Has(d) || !slices.Equal(s.Deleted(), []digest.Digest{d}) {
		t.Errorf("after delete: stored %v, recorded %v; want gone and [%s]", s.Has(d), s.Deleted(), d)
	}
}

func TestBeforeWriterRunsBeforeTheChecks(t *testing.T) {
	s := memstore.New()
	b := []byte("committed by someone else meanwhile")
	s.BeforeWriter(func(string) { s.Put(b) })
	desc := ocispec.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}
	_, err := s.Writer(context.Background(), content.WithRef("r"), content.WithDescriptor(desc))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("writer after the hook stored the blob: %v, want AlreadyExists", err)
	}
}
