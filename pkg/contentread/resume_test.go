package contentread

import (
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/protobuf/proto"
)

func relay(t *testing.T, r *Resume, offset int64, n int) {
	t.Helper()
	b, err := proto.Marshal(&api.ReadContentResponse{Offset: offset, Data: make([]byte, n)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Relayed(b, len(b)); err != nil {
		t.Fatal(err)
	}
}

func TestRestAsksForWhatWasNotRelayed(t *testing.T) {
	r := New(&api.ReadContentRequest{Digest: "sha256:x", Offset: 10, Size: 100})
	relay(t, r, 10, 30)
	relay(t, r, 40, 20)
	rest, more := r.Rest()
	if !more || rest.GetDigest() != "sha256:x" || rest.GetOffset() != 60 || rest.GetSize() != 50 {
		t.Fatalf("rest = %v, %v; want sha256:x from 60, 50 bytes", rest, more)
	}
	relay(t, r, 60, 50)
	if rest, more := r.Rest(); more {
		t.Fatalf("everything relayed, yet rest = %v", rest)
	}
}

func TestRestOfAReadToTheEndReadsToTheEnd(t *testing.T) {
	r := New(&api.ReadContentRequest{Digest: "sha256:x"})
	relay(t, r, 0, 4096)
	rest, more := r.Rest()
	if !more || rest.GetOffset() != 4096 || rest.GetSize() != 0 {
		t.Fatalf("rest = %v, %v; want from 4096 to the end", rest, more)
	}
}

func TestRelayedRefusesAGarbledResponse(t *testing.T) {
	r := New(&api.ReadContentRequest{Digest: "sha256:x"})
	if err := r.Relayed([]byte{0x12, 0xff}, 2); err == nil {
		t.Fatal("a truncated data field was accepted")
	}
}

func TestRelayedReadsOnlyTheHeadOfALargeChunk(t *testing.T) {
	r := New(&api.ReadContentRequest{Digest: "sha256:x", Offset: 5 << 20})
	b, err := proto.Marshal(&api.ReadContentResponse{Offset: 5 << 20, Data: make([]byte, 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Relayed(b[:HeadSize], len(b)); err != nil {
		t.Fatal(err)
	}
	if rest, _ := r.Rest(); rest.GetOffset() != 6<<20 {
		t.Fatalf("after a 1 MiB chunk at 5 MiB, rest starts at %d, want %d", rest.GetOffset(), 6<<20)
	}
}
