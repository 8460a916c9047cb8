package rpc

import (
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec we fall back to
	"google.golang.org/grpc/mem"
)

// Frame is a message whose bytes are carried without decoding. The gateway
// forwards frames between client and backend so that routing never depends on
// knowing the message types of the services behind it.
type Frame struct {
	data mem.BufferSlice
}

// NewFrame is a frame of an encoded message.
func NewFrame(b []byte) *Frame {
	return &Frame{data: mem.BufferSlice{mem.SliceBuffer(b)}}
}

// Len is the encoded size of the frame.
func (f *Frame) Len() int { return f.data.Len() }

// FrameCodec passes Frames through untouched and encodes everything else as
// protobuf. It keeps the name "proto" so peers see an ordinary gRPC call.
type FrameCodec struct{}

var protoCodec = encoding.GetCodecV2("proto")

func (FrameCodec) Name() string { return "proto" }

func (FrameCodec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		// gRPC frees what Marshal returns once written: hand over our
		// reference, the frame is spent.
		d := f.data
		f.data = nil
		return d, nil
	}
	return protoCodec.Marshal(v)
}

func (FrameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		// gRPC frees data after Unmarshal returns: keep our own reference.
		data.Ref()
		f.data = data
		return nil
	}
	return protoCodec.Unmarshal(data, v)
}

// Bytes is the frame's encoded message (copied only if it arrived in
// pieces).
func (f *Frame) Bytes() []byte {
	if len(f.data) == 1 {
		return f.data[0].ReadOnlyData()
	}
	return f.data.Materialize()
}

// Head is the frame's first n bytes (all of it when shorter), for reading a
// message's leading fields without copying the rest, which Bytes does when
// the frame arrived in pieces.
func (f *Frame) Head(n int) []byte {
	if len(f.data) > 0 {
		if first := f.data[0].ReadOnlyData(); len(first) >= n || len(f.data) == 1 {
			return first[:min(n, len(first))]
		}
	}
	head := make([]byte, 0, n)
	for _, b := range f.data {
		d := b.ReadOnlyData()
		head = append(head, d[:min(len(d), n-len(head))]...)
		if len(head) == n {
			break
		}
	}
	return head
}

// Free releases a frame that was received but will not be sent on.
func (f *Frame) Free() {
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}
