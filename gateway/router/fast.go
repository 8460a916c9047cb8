package router

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// A service's unary methods are also served over ttrpc (see pkg/rpc), which
// costs the gateway's hop about half what gRPC does. The gateway uses it for
// unary methods whose message types it links in; anything else, and any
// call made while the ttrpc socket does not answer (a restarting service),
// takes the gRPC path, which waits for the service.

// SetFast records the ttrpc socket of a service set with Set; an empty path
// turns the fast path off for it.
func (r *Router) SetFast(name, path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	be, ok := r.backends[name]
	if !ok {
		return
	}
	if be.fast != nil && be.fast.Path() == path {
		return
	}
	if be.fast != nil {
		be.fast.Close()
		be.fast = nil
	}
	if path != "" {
		be.fast = rpc.NewTTRPCConn(path)
	}
}

type messageTypes struct {
	in, out protoreflect.MessageType
}

var typesOf sync.Map // method -> *messageTypes (nil: unknown)

func typesFor(method string) *messageTypes {
	if t, ok := typesOf.Load(method); ok {
		return t.(*messageTypes)
	}
	var mt *messageTypes
	name := strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
		if md, ok := d.(protoreflect.MethodDescriptor); ok {
			in, err1 := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			out, err2 := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
			if err1 == nil && err2 == nil {
				mt = &messageTypes{in: in, out: out}
			}
		}
	}
	typesOf.Store(method, mt)
	return mt
}

// forwardFast makes a unary call over ttrpc and returns its response. It
// reports false, having sent nothing, when the call should take the gRPC
// path instead.
func (r *Router) forwardFast(ctx context.Context, be *backend, svc, method string, req *rpc.Frame) (any, bool, error) {
	f := be.fast
	if f == nil {
		return nil, false, nil
	}
	types := typesFor(method)
	if types == nil {
		return nil, false, nil
	}
	name := method[strings.LastIndex(method, "/")+1:]
	// A request ttrpc cannot carry takes the gRPC path; so does a read
	// whose reply is too large for it (the service refuses to send it).
	if !rpc.TTRPCCarries(method, req.Len()) {
		return nil, false, nil
	}
	c, err := f.Client()
	if err != nil {
		return nil, false, nil
	}
	in := types.in.New().Interface()
	if err := proto.Unmarshal(req.Bytes(), in); err != nil {
		return nil, true, status.Errorf(codes.InvalidArgument, "decode %s request: %v", method, err)
	}
	md := metadata.MD{}
	if inMD, ok := metadata.FromIncomingContext(ctx); ok {
		md = forwardable(inMD)
	}
	rpc.InjectTrace(ctx, md)
	// The client's deadline, if any, travels with the call; the gateway
	// adds none (Tasks.Wait may rightly wait for hours).
	cctx := ttrpc.WithMetadata(ctx, ttrpc.MD(md))
	out := types.out.New().Interface()
	if err := c.Call(cctx, svc, name, in, out); err != nil {
		again, err := rpc.TTRPCFailed(method, fmt.Sprintf("service %s (%s)", be.name, svc), err)
		return nil, !again, err
	}
	return out, true, nil
}
