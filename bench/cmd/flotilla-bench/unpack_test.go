package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

func writeRandom(t *testing.T, seed, size int64, corrupt int64) string {
	t.Helper()
	b := make([]byte, size)
	if _, err := io.ReadFull(testimage.RandomReader(seed), b); err != nil {
		t.Fatal(err)
	}
	if corrupt >= 0 {
		b[corrupt] ^= 0xff
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSameBytesAcceptsTheLayerFile(t *testing.T) {
	p := writeRandom(t, 7, 3<<20+5, -1)
	if err := sameBytes(p, testimage.RandomReader(7), 3<<20+5); err != nil {
		t.Fatalf("identical file rejected: %v", err)
	}
}

func TestSameBytesRejectsChangedShortAndLongFiles(t *testing.T) {
	size := int64(2<<20 + 1)
	for name, tc := range map[string]struct {
		path string
		size int64
		want string
	}{
		"one byte flipped": {writeRandom(t, 7, size, size-1), size, "differs"},
		"too short":        {writeRandom(t, 7, size-1, -1), size, "has"},
		"too long":         {writeRandom(t, 7, size+1, -1), size, "longer"},
	} {
		err := sameBytes(tc.path, testimage.RandomReader(7), tc.size)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.want)
		}
	}
}
