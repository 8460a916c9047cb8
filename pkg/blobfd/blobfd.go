// Package blobfd hands a committed blob's open file from the content process
// to the process that moves its bytes (the gateway answering a client's Read,
// the snapshotter applying a layer), over a Unix socket beside the content
// service's (SCM_RIGHTS). The content process decides — metadata says whether
// the caller's namespace holds the blob — and the bytes are then read from
// the file by the one process that sends or uses them: no process relays
// them, as none does in containerd.
//
// One request a connection: the client sends a JSON Request, the server
// answers a JSON Response and, when it grants the blob, the file's
// descriptor with it.
package blobfd

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// SocketFor is where the content process serving socket hands out files.
func SocketFor(socket string) string {
	return strings.TrimSuffix(socket, ".sock") + ".fd.sock"
}

// Request asks for a blob as a namespace sees it.
type Request struct {
	Namespace string `json:"namespace"`
	Lease     string `json:"lease,omitempty"`
	Digest    string `json:"digest"`
}

// Response grants the blob (its size; the descriptor travels with it) or
// refuses it with a gRPC code and message.
type Response struct {
	Size    int64  `json:"size,omitempty"`
	Code    uint32 `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// maxRequest bounds what a server reads of a request.
const maxRequest = 64 << 10

// Opener opens a blob for the namespace and lease ctx carries.
type Opener func(ctx context.Context, digest string) (*os.File, error)

// Serve answers requests on l until ctx ends or l is closed.
func Serve(ctx context.Context, l net.Listener, open Opener) error {
	go func() { <-ctx.Done(); l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go serveConn(ctx, c.(*net.UnixConn), open)
	}
}

func serveConn(ctx context.Context, c *net.UnixConn, open Opener) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(rpc.DefaultCallTimeout))
	var req Request
	if err := json.NewDecoder(&limited{c, maxRequest}).Decode(&req); err != nil {
		reply(c, Response{Code: uint32(codes.InvalidArgument), Message: "blob request: " + err.Error()}, nil)
		return
	}
	if req.Namespace == "" {
		reply(c, Response{Code: uint32(codes.FailedPrecondition), Message: "namespace is required"}, nil)
		return
	}
	cctx := namespaces.WithNamespace(ctx, req.Namespace)
	if req.Lease != "" {
		cctx = leases.WithLease(cctx, req.Lease)
	}
	f, err := open(cctx, req.Digest)
	if err != nil {
		st := status.Convert(rpc.Errors(err))
		if st.Code() != codes.NotFound {
			logging.G(ctx).Info("blob file refused", "namespace", req.Namespace, "digest", req.Digest, "code", st.Code().String(), "error", st.Message())
		}
		reply(c, Response{Code: uint32(st.Code()), Message: st.Message()}, nil)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		reply(c, Response{Code: uint32(codes.Internal), Message: err.Error()}, nil)
		return
	}
	reply(c, Response{Size: fi.Size()}, f)
}

func reply(c *net.UnixConn, resp Response, f *os.File) {
	b, _ := json.Marshal(resp)
	var oob []byte
	if f != nil {
		oob = syscall.UnixRights(int(f.Fd()))
	}
	_, _, _ = c.WriteMsgUnix(b, oob, nil)
}

// Open asks the content process at socket (its fd socket) for digest as the
// namespace and lease of ctx see it. A refusal is the gRPC status the
// content process gave; a content process that cannot be reached is
// Unavailable.
func Open(ctx context.Context, socket, digest string) (*os.File, int64, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, 0, err
	}
	req := Request{Namespace: ns, Digest: digest}
	if l, ok := leases.FromContext(ctx); ok {
		req.Lease = l
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, 0, status.Errorf(codes.Unavailable, "content process at %s: %v", socket, err)
	}
	c := conn.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(rpc.DefaultCallTimeout))
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, 0, status.Errorf(codes.Unavailable, "content process at %s: %v", socket, err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, 0, status.Errorf(codes.Unavailable, "content process at %s: %v", socket, err)
	}
	var resp Response
	if err := json.Unmarshal(buf[:n], &resp); err != nil {
		return nil, 0, status.Errorf(codes.Internal, "content process at %s answered %q: %v", socket, buf[:n], err)
	}
	f, err := fileOf(oob[:oobn])
	if resp.Code != uint32(codes.OK) {
		if f != nil {
			f.Close()
		}
		return nil, 0, status.Error(codes.Code(resp.Code), resp.Message)
	}
	if err != nil || f == nil {
		return nil, 0, status.Errorf(codes.Internal, "content process at %s granted %s without its file: %v", socket, digest, err)
	}
	return f, resp.Size, nil
}

func fileOf(oob []byte) (*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		if got, err := syscall.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) == 0 {
		return nil, nil
	}
	for _, fd := range fds[1:] {
		syscall.Close(fd) // one file is granted; more is not ours to keep
	}
	syscall.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), "blob"), nil
}

// limited reads at most n bytes: a request is small.
type limited struct {
	c *net.UnixConn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request too large")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}
