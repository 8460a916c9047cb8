package router

import (
	"context"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/pkg/blobfd"
	"github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// A client's content Read is served here from the blob's file, which the
// content process hands over once metadata has said the namespace holds the
// blob (pkg/blobfd): the bytes go from the file to the client's socket in
// this process alone, as they do in containerd. Were they relayed from the
// content process instead, every byte would be encoded, sent and decoded
// once more. When the content process cannot be reached (a restart), the
// Read takes the relayed path, which waits for it.

// SetBlobFD records the content process's blob file socket.
func (r *Router) SetBlobFD(path string) { r.blobFD.Store(&path) }

// ForgetBlob drops what the router keeps of a namespace's blob (it was
// deleted there).
func (r *Router) ForgetBlob(namespace, digest string) {
	r.grants.forget(grantKey{namespace, digest})
}

// contentDelete is the call after which a namespace's blob is not read.
const contentDelete = "/containerd.services.content.v1.Content/Delete"

// deletedDigest is the digest a Delete request names, "" if it names none.
func deletedDigest(req *rpc.Frame) string {
	var d api.DeleteContentRequest
	if proto.Unmarshal(req.Bytes(), &d) != nil {
		return ""
	}
	return d.GetDigest()
}

// readFromFile serves the Read on ss from the blob's file. done is false
// when it sent nothing and the Read should be relayed instead.
func (r *Router) readFromFile(ss grpc.ServerStream) (done bool, _ error) {
	sock := r.blobFD.Load()
	if sock == nil || *sock == "" {
		return false, nil
	}
	frame := &rpc.Frame{}
	if err := ss.RecvMsg(frame); err != nil {
		return true, err
	}
	req := &api.ReadContentRequest{}
	err := proto.Unmarshal(frame.Bytes(), req)
	frame.Free()
	if err != nil {
		return true, status.Errorf(codes.InvalidArgument, "decode read request: %v", err)
	}
	ctx := ss.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	bctx := ctx
	key := grantKey{digest: req.GetDigest()}
	if ns := md.Get("containerd-namespace"); len(ns) > 0 {
		bctx = namespaces.WithNamespace(bctx, ns[0])
		key.namespace = ns[0]
	}
	if l := md.Get("containerd-lease"); len(l) > 0 {
		bctx = leases.WithLease(bctx, l[0])
	}
	gr := r.grants.take(key)
	if gr == nil {
		f, size, err := blobfd.Open(bctx, *sock, req.GetDigest())
		if status.Code(err) == codes.Unavailable {
			r.logger.Debug("blob file socket unreachable, relaying the read", "error", err)
			return true, r.relayRead(ss, req)
		}
		if err != nil {
			return true, rpc.Relayed(err)
		}
		gr = r.grants.add(key, f, size)
	}
	defer r.grants.release(gr)
	d, err := digest.Parse(req.GetDigest())
	if err != nil {
		return true, status.Errorf(codes.InvalidArgument, "digest %q: %v", req.GetDigest(), err)
	}
	send := func(resp *api.ReadContentResponse) error { return ss.SendMsg(resp) }
	return true, rpc.Errors(contentserver.SendRange(gr.f, gr.size, d, req.GetOffset(), req.GetSize(), send))
}

// relayRead relays a Read whose request was already taken from ss to the
// process that serves it, as route would have.
func (r *Router) relayRead(ss grpc.ServerStream, req *api.ReadContentRequest) error {
	method := "/containerd.services.content.v1.Content/Read"
	be, target, err := r.acquireMethod(ss.Context(), serviceOf(method), method)
	if err != nil {
		return err
	}
	defer be.done()
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	in, _ := metadata.FromIncomingContext(ctx)
	octx := metadata.NewOutgoingContext(ctx, forwardable(in))
	b, err := proto.Marshal(req)
	if err != nil {
		return status.Errorf(codes.Internal, "encode read request: %v", err)
	}
	return rpc.Relayed(r.forwardReadingRequest(octx, ss, be, serviceOf(method), method, target, b))
}
