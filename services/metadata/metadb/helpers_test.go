package metadb

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/memstore"
)

// newTestDB opens a meta.db in a temp dir over an in-memory content
// service, which the test gets too, to check what the store asked of it.
func newTestDB(t *testing.T) (*DB, *memstore.Store) {
	t.Helper()
	be := memstore.New()
	db, err := Open(t.TempDir(), be)
	if err != nil {
		t.Fatalf("open meta.db: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db, be
}

func nsCtx(ns string) context.Context {
	return namespaces.WithNamespace(context.Background(), ns)
}

func leaseCtx(ctx context.Context, id string) context.Context {
	return leases.WithLease(ctx, id)
}

// writeBlob writes b through the namespaced store with its expected digest
// and returns the digest. An AlreadyExists answer counts as success, as it
// does for containerd's clients.
func writeBlob(t *testing.T, ctx context.Context, cs content.Store, b []byte, labels map[string]string) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := tryWriteBlob(ctx, cs, "ref-"+d.Encoded()[:12], b, d, labels); err != nil && !errdefs.IsAlreadyExists(err) {
		t.Fatalf("write %s: %v", d, err)
	}
	return d
}

func tryWriteBlob(ctx context.Context, cs content.Store, ref string, b []byte, expected digest.Digest, labels map[string]string) error {
	desc := ocispec.Descriptor{Digest: expected, Size: int64(len(b))}
	w, err := cs.Writer(ctx, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		return err
	}
	defer w.Close()
	var opts []content.Opt
	if labels != nil {
		opts = append(opts, content.WithLabels(labels))
	}
	// As containerd's clients write: what the writer's status reports as
	// written already is not sent again.
	return content.Copy(ctx, w, bytes.NewReader(b), int64(len(b)), expected, opts...)
}

func readAll(t *testing.T, ctx context.Context, cs content.Store, d digest.Digest) ([]byte, error) {
	t.Helper()
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	return io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
}

// wantErr checks err against an errdefs predicate and names the class in
// the failure message.
func wantErr(t *testing.T, what string, err error, is func(error) bool, class string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %s", what, class)
	}
	if !is(err) {
		t.Fatalf("%s: error %v (%T), want %s", what, err, errors.Unwrap(err), class)
	}
}
