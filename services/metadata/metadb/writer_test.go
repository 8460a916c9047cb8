package metadb

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/memstore"
)

// statusCounting counts the Status calls its writers pass to the content
// service.
type statusCounting struct {
	content.Store
	statuses atomic.Int64
}

func (s *statusCounting) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := s.Store.Writer(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &statusCountingWriter{Writer: w, n: &s.statuses}, nil
}

type statusCountingWriter struct {
	content.Writer
	n *atomic.Int64
}

func (w *statusCountingWriter) Status() (content.Status, error) {
	w.n.Add(1)
	return w.Writer.Status()
}

func TestWriterAsksTheContentServiceForItsStatusOnlyAfterAChange(t *testing.T) {
	be := &statusCounting{Store: memstore.New()}
	db, err := Open(t.TempDir(), be)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := nsCtx("ns")
	data := []byte("status asked twice, answered once")
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	w, err := db.Content().Writer(ctx, content.WithRef("r"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for range 2 {
		st, err := w.Status()
		if err != nil || st.Offset != 0 || st.Ref != "r" {
			t.Fatalf("status of a new ingest: %+v, %v", st, err)
		}
	}
	if n := be.statuses.Load(); n != 1 {
		t.Fatalf("two Status calls with no write between reached the content service %d times, want 1", n)
	}
	if _, err := w.Write(data[:5]); err != nil {
		t.Fatal(err)
	}
	st, err := w.Status()
	if err != nil || st.Offset != 5 {
		t.Fatalf("status after a write: %+v, %v; want offset 5 from the content service", st, err)
	}
	if err := w.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if st, err = w.Status(); err != nil || st.Offset != 0 {
		t.Fatalf("status after truncate: %+v, %v; want offset 0", st, err)
	}
	if n := be.statuses.Load(); n != 3 {
		t.Fatalf("content service asked for status %d times, want 3 (first, after write, after truncate)", n)
	}
	if err := content.Copy(ctx, w, bytes.NewReader(data), desc.Size, desc.Digest); err != nil {
		t.Fatal(err)
	}
}
