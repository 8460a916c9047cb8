package blobs

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"
)

// A blob being recorded in a namespace is not metadata's to collect: the
// collector sees it unrecorded for that moment.
func TestDeleteOfAHeldBlobFailsPreconditionAndKeepsIt(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	d := commitBlob(t, s, []byte("held"), nil)

	release := s.Hold(d)
	if err := s.Delete(ctx, d); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete of a held blob: %v, want FailedPrecondition", err)
	}
	if _, err := s.Info(ctx, d); err != nil {
		t.Fatalf("held blob gone after a refused delete: %v", err)
	}
	again := s.Hold(d)
	release()
	release() // a second release of one hold changes nothing
	if err := s.Delete(ctx, d); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete while a second hold remains: %v, want FailedPrecondition", err)
	}
	again()
	if err := s.Delete(ctx, d); err != nil {
		t.Fatalf("delete once every hold is released: %v", err)
	}
}
