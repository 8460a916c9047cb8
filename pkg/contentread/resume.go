// Package contentread resumes a content Read stream after the process
// serving it went away mid-blob. The gateway and the metadata service relay
// Read as undecoded frames, the graph's client (pkg/rpc) receives it
// decoded; when the process behind them is killed or restarted, they open
// the stream again from the first byte the caller has not been given, so a
// restart costs the caller latency, not an error.
package contentread

import (
	"fmt"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Method is the one Read of containerd's API that can be resumed.
const Method = "/containerd.services.content.v1.Content/Read"

// Resume follows the chunks of one Read as they are relayed and builds the
// request for what is left.
type Resume struct {
	req  *api.ReadContentRequest
	next int64 // offset of the first byte not yet relayed
	end  int64 // offset after the last byte asked for; 0 reads to the blob's end
}

// New follows a Read asked for with req.
func New(req *api.ReadContentRequest) *Resume {
	r := &Resume{req: proto.CloneOf(req), next: req.GetOffset()}
	if req.GetSize() > 0 {
		r.end = req.GetOffset() + req.GetSize()
	}
	return r
}

// Parse follows a Read asked for with an encoded request.
func Parse(frame []byte) (*Resume, error) {
	req := &api.ReadContentRequest{}
	if err := proto.Unmarshal(frame, req); err != nil {
		return nil, fmt.Errorf("read request: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return New(req), nil
}

// HeadSize is how much of a ReadContentResponse Relayed needs: its offset
// and the length of its data come first.
const HeadSize = 32

// Relayed records a ReadContentResponse of size bytes that reached the
// client, from its first bytes (HeadSize of them, or all): the offset and the
// length of the data are read, so the chunk is neither decoded nor copied.
func (r *Resume) Relayed(head []byte, size int) error {
	var (
		offset int64
		n      int
	)
	truncated := len(head) < size
	b := head
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return fmt.Errorf("read response: %w", protowire.ParseError(l))
		}
		b = b[l:]
		if num == 2 && typ == protowire.BytesType {
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return fmt.Errorf("read response data: %w", protowire.ParseError(l))
			}
			if uint64(len(b)-l) < v && !truncated {
				return fmt.Errorf("read response data: %w", protowire.ParseError(-1))
			}
			// The data follows; a field after it (none is sent) is not
			// read.
			n = int(v)
			break
		}
		if num == 1 && typ == protowire.VarintType {
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return fmt.Errorf("read response offset: %w", protowire.ParseError(l))
			}
			offset, b = int64(v), b[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return fmt.Errorf("read response: %w", protowire.ParseError(l))
		}
		b = b[l:]
	}
	r.Got(offset, n)
	return nil
}

// Got records a decoded ReadContentResponse of n bytes at offset that
// reached the caller.
func (r *Resume) Got(offset int64, n int) {
	if next := offset + int64(n); next > r.next {
		r.next = next
	}
}

// Rest is the request for the bytes not yet relayed, and false when every
// byte asked for was.
func (r *Resume) Rest() (*api.ReadContentRequest, bool) {
	if r.end > 0 && r.next >= r.end {
		return nil, false
	}
	req := proto.CloneOf(r.req)
	req.Offset = r.next
	if r.end > 0 {
		req.Size = r.end - r.next
	}
	return req, true
}
