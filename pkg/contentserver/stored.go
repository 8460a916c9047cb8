package contentserver

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// StoredWriter is a namespace's writer of bytes the content store holds
// already (another namespace wrote them): it reports them all written, so a
// client (content.Copy) sends nothing, and its commit only records them in
// the namespace, with the labels the client commits. A client that starts
// over (Truncate(0)) and sends the bytes anyway has them checked against the
// known digest instead. The namespaced stores of metadata and of the content
// process differ only in how they record (Record).
type StoredWriter struct {
	Ref     string
	Info    content.Info
	Started time.Time
	// Record makes the stored blob the namespace's, with labels, once the
	// commit has been checked.
	Record func(ctx context.Context, labels map[string]string) error
	// Release, when set, is called once the writer is done (closed or
	// committed): what kept the stored bytes from a collection meanwhile.
	Release func()

	rewriting bool
	written   int64
	digester  digest.Digester
}

var _ content.Writer = (*StoredWriter)(nil)

func (w *StoredWriter) Write(p []byte) (int, error) {
	if !w.rewriting {
		return 0, fmt.Errorf("content %s is complete; truncate to write it again: %w", w.Info.Digest, errdefs.ErrFailedPrecondition)
	}
	w.digester.Hash().Write(p)
	w.written += int64(len(p))
	return len(p), nil
}

func (w *StoredWriter) Close() error {
	w.release()
	return nil
}

func (w *StoredWriter) release() {
	if w.Release != nil {
		w.Release()
		w.Release = nil
	}
}

func (w *StoredWriter) Digest() digest.Digest {
	if w.rewriting {
		return w.digester.Digest()
	}
	return w.Info.Digest
}

func (w *StoredWriter) Truncate(size int64) error {
	if size != 0 {
		return fmt.Errorf("truncate of shared content %s to %d: %w", w.Info.Digest, size, errdefs.ErrInvalidArgument)
	}
	w.rewriting, w.written = true, 0
	w.digester = w.Info.Digest.Algorithm().Digester()
	return nil
}

func (w *StoredWriter) Status() (content.Status, error) {
	offset := w.Info.Size
	if w.rewriting {
		offset = w.written
	}
	return content.Status{
		Ref: w.Ref, Offset: offset, Total: w.Info.Size, Expected: w.Info.Digest,
		StartedAt: w.Started, UpdatedAt: w.Started,
	}, nil
}

func (w *StoredWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	defer w.release()
	var base content.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	if err := ValidateLabels(base.Labels); err != nil {
		return err
	}
	if size > 0 && size != w.Info.Size {
		return fmt.Errorf("commit size %d, content %s has %d bytes: %w", size, w.Info.Digest, w.Info.Size, errdefs.ErrFailedPrecondition)
	}
	if w.rewriting && (w.written != w.Info.Size || w.digester.Digest() != w.Info.Digest) {
		return fmt.Errorf("rewritten content has %d bytes of digest %s, expected %d of %s: %w",
			w.written, w.digester.Digest(), w.Info.Size, w.Info.Digest, errdefs.ErrFailedPrecondition)
	}
	if expected != "" && expected != w.Info.Digest {
		return fmt.Errorf("content has digest %s, expected %s: %w", w.Info.Digest, expected, errdefs.ErrFailedPrecondition)
	}
	return w.Record(ctx, base.Labels)
}

// ValidateLabels checks labels as containerd does: no empty key, no key and
// value over its size limit.
func ValidateLabels(l map[string]string) error {
	for k, v := range l {
		if k == "" {
			return fmt.Errorf("label with an empty key: %w", errdefs.ErrInvalidArgument)
		}
		if err := labels.Validate(k, v); err != nil {
			return err
		}
	}
	return nil
}
