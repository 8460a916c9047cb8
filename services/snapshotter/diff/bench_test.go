package diff

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	kgzip "github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// benchLayer is a gzip layer of 64 files of 1 MiB of incompressible data,
// the shape of bench/'s import test.
func benchLayer(b *testing.B) []byte {
	var entries []entry
	for i := range 64 {
		body := make([]byte, 1<<20)
		rand.Read(body)
		entries = append(entries, file(fmt.Sprintf("data/f%02d", i), string(body), 0o644))
	}
	return gzipBytes(b, buildTar(b, entries...))
}

// BenchmarkApplyGzip measures Apply; BenchmarkApplyGzipSequential is the
// same work done the way containerd does it without igzip/unpigz
// installed (klauspost gzip inline, then archive.Apply), for comparison:
//
//	go test -run '^$' -bench ApplyGzip -benchtime 5x ./services/snapshotter/diff/
func BenchmarkApplyGzip(b *testing.B) {
	blob := benchLayer(b)
	svc, cs := newTestService(b)
	desc := cs.add(ocispec.MediaTypeImageLayerGzip, blob)
	b.SetBytes(64 << 20)
	for b.Loop() {
		root, _ := os.MkdirTemp(b.TempDir(), "root")
		if _, err := svc.Apply(context.Background(), desc, bindMount(root)); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(root)
	}
}

func BenchmarkApplyGzipSequential(b *testing.B) {
	blob := benchLayer(b)
	b.SetBytes(64 << 20)
	for b.Loop() {
		root, _ := os.MkdirTemp(b.TempDir(), "root")
		zr, err := kgzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			b.Fatal(err)
		}
		d := digest.Canonical.Digester()
		if _, err := archive.Apply(context.Background(), root, io.TeeReader(zr, d.Hash())); err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, zr)
		os.RemoveAll(root)
	}
}
