package contentserver

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
)

// The stored bytes stay held until the writer is done with them, whether
// it commits or is closed without committing, and the hold is let go once.
func TestStoredWriterReleasesItsHoldOnce(t *testing.T) {
	info := content.Info{Digest: digest.FromString("shared"), Size: int64(len("shared"))}
	for _, commit := range []bool{true, false} {
		released, recorded := 0, 0
		w := &StoredWriter{Ref: "r", Info: info, Release: func() { released++ },
			Record: func(context.Context, map[string]string) error {
				if released != 0 {
					t.Error("the hold was let go before the blob was recorded")
				}
				recorded++
				return nil
			}}
		if commit {
			if err := w.Commit(context.Background(), info.Size, info.Digest); err != nil {
				t.Fatal(err)
			}
			if recorded != 1 {
				t.Errorf("recorded %d times, want once", recorded)
			}
		}
		_ = w.Close()
		_ = w.Close()
		if released != 1 {
			t.Errorf("commit=%v: released %d times, want once", commit, released)
		}
	}
}
