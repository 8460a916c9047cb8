package diff

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	digest "github.com/opencontainers/go-digest"
)

// Layer apply is a three-stage pipeline so that no stage waits on another:
// a readAhead goroutine fetches the blob (one content-store RPC per chunk)
// and hashes it; the decompressor's own goroutines (pgzip reads and inflates
// ahead in blocks, zstd decodes blocks concurrently) run ahead of the tar
// reader; archive.Apply writes files and the diff ID is hashed as it reads.
const (
	chunkSize  = 1 << 20 // one ReadAt, so one Read RPC to the content store
	chunkAhead = 4       // chunks fetched ahead of the decompressor
)

// readAhead reads r in its own goroutine, chunkAhead chunks ahead of its
// reader, and hashes every byte it reads.
type readAhead struct {
	chunks chan chunk
	free   chan []byte
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	cur []byte // unread part of buf
	buf []byte // the chunk being read, returned to free once consumed
	err error  // sticky: the source's error, or io.EOF

	digester digest.Digester
	// failed records that the source itself failed (not merely ended); set
	// by whichever goroutine reads (a decompressor's own), read by another.
	failed atomic.Bool
}

type chunk struct {
	b   []byte
	err error
}

// sourceError marks a failure to read the blob from the content store, so
// that it is not mistaken for a malformed layer.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "read layer blob: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func newReadAhead(r io.Reader, alg digest.Algorithm, progress func(int64)) *readAhead {
	ra := &readAhead{
		chunks:   make(chan chunk, chunkAhead),
		free:     make(chan []byte, chunkAhead+1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		digester: alg.Digester(),
	}
	for range chunkAhead + 1 {
		ra.free <- make([]byte, chunkSize)
	}
	go ra.run(r, progress)
	return ra
}

func (ra *readAhead) run(r io.Reader, progress func(int64)) {
	defer close(ra.done)
	var total int64
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.stop:
			return
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			ra.digester.Hash().Write(buf[:n])
			total += int64(n)
			if progress != nil {
				progress(total)
			}
		}
		switch {
		case err == io.ErrUnexpectedEOF:
			err = io.EOF
		case err != nil && err != io.EOF:
			err = &sourceError{err: err}
		}
		select {
		case ra.chunks <- chunk{b: buf[:n], err: err}:
		case <-ra.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.err != nil {
			return 0, ra.err
		}
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)] // never blocks: free holds every buffer
			ra.buf = nil
		}
		c := <-ra.chunks
		ra.buf, ra.cur, ra.err = c.b, c.b, c.err
		if _, ok := c.err.(*sourceError); ok {
			ra.failed.Store(true)
		}
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Digest is the digest of the whole blob; valid once Read returned io.EOF.
func (ra *readAhead) Digest() digest.Digest {
	return ra.digester.Digest()
}

// Close stops the reading goroutine and waits for it.
func (ra *readAhead) Close() error {
	ra.once.Do(func() { close(ra.stop) })
	<-ra.done
	return nil
}

var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// formatError marks a blob that does not decompress: the layer's fault.
type formatError struct{ err error }

func (e *formatError) Error() string { return "decompress layer: " + e.err.Error() }
func (e *formatError) Unwrap() error { return e.err }

// openLayer returns the uncompressed tar stream of blob, choosing the
// decompressor by the blob's magic bytes.
func openLayer(blob *readAhead) (io.ReadCloser, error) {
	// The bufio.Reader doubles as the decompressors' byte reader: both
	// klauspost inflaters use it directly instead of wrapping their own.
	br := bufio.NewReaderSize(blob, 64<<10)
	magic, err := br.Peek(len(zstdMagic))
	if err != nil && err != io.EOF {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := pgzip.NewReaderN(br, chunkSize, chunkAhead)
		if err != nil {
			return nil, markFormat(blob, fmt.Errorf("gzip: %w", err))
		}
		return &decompressed{r: zr, blob: blob, close: zr.Close}, nil
	case bytes.HasPrefix(magic, zstdMagic):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, markFormat(blob, fmt.Errorf("zstd: %w", err))
		}
		return &decompressed{r: zr, blob: blob, close: func() error { zr.Close(); return nil }}, nil
	default:
		return io.NopCloser(br), nil
	}
}

// decompressed marks the decompressor's errors as the layer's fault unless
// the blob itself could not be read.
type decompressed struct {
	r     io.Reader
	blob  *readAhead
	close func() error
	once  sync.Once
	err   error
}

func (d *decompressed) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		err = markFormat(d.blob, err)
	}
	return n, err
}

// Close stops the decompressor's goroutines; Apply closes early, before
// draining the blob, and again on its way out.
func (d *decompressed) Close() error {
	d.once.Do(func() { d.err = d.close() })
	return d.err
}

func markFormat(blob *readAhead, err error) error {
	var se *sourceError
	if blob.failed.Load() || errors.As(err, &se) {
		return err
	}
	return &formatError{err: err}
}
