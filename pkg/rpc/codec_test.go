package rpc

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
)

func TestFrameHeadSpansPiecesWithoutTheRest(t *testing.T) {
	f := &Frame{data: mem.BufferSlice{mem.SliceBuffer([]byte("ab")), mem.SliceBuffer([]byte("cdef")), mem.SliceBuffer([]byte("gh"))}}
	for n, want := range map[int]string{1: "a", 2: "ab", 5: "abcde", 8: "abcdefgh", 20: "abcdefgh"} {
		if got := f.Head(n); !bytes.Equal(got, []byte(want)) {
			t.Errorf("Head(%d) = %q, want %q", n, got, want)
		}
	}
	one := NewFrame([]byte("xyz"))
	if got := one.Head(2); string(got) != "xy" {
		t.Errorf("Head(2) of one piece = %q", got)
	}
}
