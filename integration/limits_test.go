package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// The gateway and every service refuse what they cannot or must not take —
// a message over 16 MiB (gRPC) or 4 MiB (ttrpc), bytes that are no message,
// bytes that are no protocol at all, a method nobody serves — with a status a
// client can act on, and go on serving everyone else.

const (
	limitsNamespace = "limits"
	// oversized is over the 16 MiB every gRPC server and client in Flotilla
	// takes (rpc.MaxMsgSize).
	oversized = 17 << 20
	// ttrpcOversized is over ttrpc's fixed 4 MiB.
	ttrpcOversized = 5 << 20
)

// serviceProc is a service process as Introspection reports it.
type serviceProc struct {
	name     string // the socket's base name: content, snapshotter-overlayfs, ...
	socket   string
	ttrpc    string
	pid      string
	restarts string
}

// serviceProcs lists every service process of the daemon by its socket name.
func (d *daemon) serviceProcs(t *testing.T) map[string]serviceProc {
	t.Helper()
	c := d.client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx)
	if err != nil {
		t.Fatalf("introspection: %v", err)
	}
	procs := map[string]serviceProc{}
	for _, p := range resp.Plugins {
		sock := p.Exports["socket"]
		if sock == "" {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(sock), ".sock")
		procs[name] = serviceProc{name: name, socket: sock, ttrpc: p.Exports["ttrpc"], pid: p.Exports["pid"], restarts: p.Exports["restarts"]}
	}
	for _, want := range limitsServices {
		if _, ok := procs[want]; !ok {
			t.Fatalf("introspection lists no service with socket %s.sock: %v", want, procs)
		}
	}
	return procs
}

var limitsServices = []string{"content", "metadata", "tasks", "cri", "snapshotter-overlayfs", "snapshotter-native"}

// expectUnchanged fails when a service process changed pid or restarted
// since before: refusing bad input must never cost a process.
func expectUnchanged(t *testing.T, before, after map[string]serviceProc) {
	t.Helper()
	for name, b := range before {
		a := after[name]
		if a.pid != b.pid || a.restarts != "0" {
			t.Errorf("service %s went from pid %s to pid %s (restarts %s): bad input crashed it", name, b.pid, a.pid, a.restarts)
		}
	}
}

// probe is one unary method of a service and how to make a request of it.
type probe struct {
	method string
	// huge builds a valid request of at least n bytes.
	huge func(n int) proto.Message
}

func fill(n int) string { return strings.Repeat("x", n) }

var (
	probeNamespacesCreate = probe{"/containerd.services.namespaces.v1.Namespaces/Create", func(n int) proto.Message {
		return &namespacesapi.CreateNamespaceRequest{Namespace: &namespacesapi.Namespace{Name: "big", Labels: map[string]string{"big": fill(n)}}}
	}}
	probeContentInfo = probe{"/containerd.services.content.v1.Content/Info", func(n int) proto.Message {
		return &contentapi.InfoRequest{Digest: "sha256:" + fill(n)}
	}}
	probeSnapshotsPrepare = probe{"/containerd.services.snapshots.v1.Snapshots/Prepare", func(n int) proto.Message {
		return &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "overlayfs", Key: fill(n)}
	}}
	probeTasksCreate = probe{"/containerd.services.tasks.v1.Tasks/Create", func(n int) proto.Message {
		return &tasksapi.CreateTaskRequest{ContainerID: fill(n)}
	}}
	probeCRIVersion = probe{"/runtime.v1.RuntimeService/Version", func(n int) proto.Message {
		return &runtime.VersionRequest{Version: fill(n)}
	}}
)

// probesOf are the methods tried on each socket; the gateway routes all of
// them.
var probesOf = map[string][]probe{
	"gateway":               {probeNamespacesCreate, probeContentInfo, probeSnapshotsPrepare, probeTasksCreate, probeCRIVersion},
	"content":               {probeContentInfo},
	"metadata":              {probeNamespacesCreate, probeContentInfo, probeSnapshotsPrepare},
	"tasks":                 {probeTasksCreate},
	"cri":                   {probeCRIVersion},
	"snapshotter-overlayfs": {probeSnapshotsPrepare},
	"snapshotter-native":    {probeSnapshotsPrepare},
}

// grpcSockets are the gRPC sockets to try, by name: the gateway's and each
// service's own.
func grpcSockets(d *daemon, procs map[string]serviceProc) map[string]string {
	socks := map[string]string{"gateway": d.address}
	for _, name := range limitsServices {
		socks[name] = procs[name].socket
	}
	return socks
}

// dialRaw is a gRPC client with no limits of its own, so that what is
// refused is refused by the server.
func dialRaw(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20), grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func limitsContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", limitsNamespace)
}

// invokeRaw sends b as the request message of method, undecoded.
func invokeRaw(ctx context.Context, conn *grpc.ClientConn, method string, b []byte) error {
	resp := &rpc.Frame{}
	defer resp.Free()
	return conn.Invoke(ctx, method, rpc.NewFrame(b), resp, grpc.ForceCodecV2(rpc.FrameCodec{}))
}

// expectServing checks that the server on conn still answers.
func expectServing(t *testing.T, where string, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("%s does not serve after bad input: health %v, %v", where, resp, err)
	}
}

// expectGatewayServing makes a real routed call through the gateway.
func expectGatewayServing(t *testing.T, d *daemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.client().NamespaceService().List(ctx); err != nil {
		t.Errorf("the gateway does not route calls after bad input: Namespaces.List: %v", err)
	}
}

func TestLimitsOversizedMessagesAreRefusedAndDaemonKeepsServing(t *testing.T) {
	d := newDaemon(t).start()
	procs := d.serviceProcs(t)
	socks := grpcSockets(d, procs)

	t.Run("unary over gRPC", func(t *testing.T) {
		for name, sock := range socks {
			conn := dialRaw(t, sock)
			for _, p := range probesOf[name] {
				err := conn.Invoke(limitsContext(t), p.method, p.huge(oversized), &rpc.Frame{}, grpc.ForceCodecV2(rpc.FrameCodec{}))
				if status.Code(err) != codes.ResourceExhausted {
					t.Errorf("%s: a %d MiB %s: %v, want ResourceExhausted", name, oversized>>20, p.method, err)
				} else {
					t.Logf("%s %s %d MiB: %v", name, p.method, oversized>>20, err)
				}
			}
			expectServing(t, name, conn)
		}
	})

	t.Run("Content.Write stream", func(t *testing.T) {
		for _, name := range []string{"gateway", "content", "metadata"} {
			conn := dialRaw(t, socks[name])
			ctx, cancel := context.WithCancel(limitsContext(t))
			wc, err := contentapi.NewContentClient(conn).Write(ctx)
			if err != nil {
				t.Fatalf("%s: open Content.Write: %v", name, err)
			}
			data := make([]byte, oversized)
			err = wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Ref: "limits-big", Total: int64(len(data)), Data: data})
			if err == nil || errors.Is(err, io.EOF) {
				_, err = wc.Recv()
			}
			cancel()
			if status.Code(err) != codes.ResourceExhausted {
				t.Errorf("%s: a %d MiB Content.Write message: %v, want ResourceExhausted", name, oversized>>20, err)
			} else {
				t.Logf("%s Content.Write %d MiB: %v", name, oversized>>20, err)
			}
			expectServing(t, name, conn)
		}
	})

	t.Run("unary over ttrpc", func(t *testing.T) {
		ttrpcSocks := map[string]string{"gateway": d.address + ".ttrpc"}
		for _, name := range limitsServices {
			ttrpcSocks[name] = procs[name].ttrpc
		}
		for name, sock := range ttrpcSocks {
			// ttrpc's own client refuses to send it.
			c := dialTTRPC(t, sock)
			err := c.Call(ttrpcContext(t), "containerd.services.namespaces.v1.Namespaces", "Create",
				probeNamespacesCreate.huge(ttrpcOversized), &namespacesapi.CreateNamespaceResponse{})
			if status.Code(err) != codes.ResourceExhausted {
				t.Errorf("%s: ttrpc client sending %d MiB: %v, want ResourceExhausted", name, ttrpcOversized>>20, err)
			}
			expectTTRPCServing(t, name, c)

			// A client that sends it anyway: the server refuses it and
			// keeps the connection.
			raw := dialUnix(t, sock)
			st := rawTTRPCCall(t, raw, 1, &ttrpc.Request{Service: "containerd.services.namespaces.v1.Namespaces", Method: "Create",
				Payload: mustMarshal(t, probeNamespacesCreate.huge(ttrpcOversized))})
			if st.Code() != codes.ResourceExhausted {
				t.Errorf("%s: ttrpc server sent a %d MiB request: %v, want ResourceExhausted", name, ttrpcOversized>>20, st.Err())
			} else {
				t.Logf("%s ttrpc %d MiB: %v", name, ttrpcOversized>>20, st.Err())
			}
			if st := rawTTRPCCall(t, raw, 3, &ttrpc.Request{Service: "no.such.Service", Method: "Nope"}); st.Code() != codes.Unimplemented {
				t.Errorf("%s: ttrpc connection after an oversized request: %v, want Unimplemented for an unknown service", name, st.Err())
			}
		}
	})

	expectGatewayServing(t, d)
	expectUnchanged(t, procs, d.serviceProcs(t))
}

func TestLimitsMalformedMessagesAreRefusedWithoutCrash(t *testing.T) {
	d := newDaemon(t).start()
	procs := d.serviceProcs(t)
	socks := grpcSockets(d, procs)

	junks := map[string][]byte{
		// Field 1, length-delimited, claiming far more bytes than follow.
		"truncated field": {0x0a, 0xff, 0xff, 0xff, 0x0f, 'j', 'u', 'n', 'k'},
		// Wire type 7 does not exist.
		"bad wire type": {0x0f, 0x01, 0x02, 0x03},
		// Field number 0 is reserved.
		"field zero": {0x02, 0x01, 'x'},
	}

	t.Run("garbage gRPC messages", func(t *testing.T) {
		for name, sock := range socks {
			conn := dialRaw(t, sock)
			for _, p := range probesOf[name] {
				for what, junk := range junks {
					err := invokeRaw(limitsContext(t), conn, p.method, junk)
					st := status.Convert(err)
					if (st.Code() != codes.InvalidArgument && st.Code() != codes.Internal) || st.Message() == "" {
						t.Errorf("%s: %s as a %s request: %v, want InvalidArgument or Internal with a message", name, what, p.method, err)
					} else {
						t.Logf("%s %s %s: %v", name, p.method, what, err)
					}
				}
			}
			expectServing(t, name, conn)
		}
	})

	t.Run("garbage ttrpc payloads", func(t *testing.T) {
		for _, name := range limitsServices {
			raw := dialUnix(t, procs[name].ttrpc)
			id := uint32(1)
			for _, p := range probesOf[name] {
				svc, method := splitMethod(p.method)
				for what, junk := range junks {
					st := rawTTRPCCall(t, raw, id, &ttrpc.Request{Service: svc, Method: method, Payload: junk,
						Metadata: []*ttrpc.KeyValue{{Key: "containerd-namespace", Value: limitsNamespace}}})
					id += 2
					if (st.Code() != codes.InvalidArgument && st.Code() != codes.Internal) || st.Message() == "" {
						t.Errorf("%s (ttrpc): %s as a %s request: %v, want InvalidArgument or Internal with a message", name, what, p.method, st.Err())
					} else {
						t.Logf("%s ttrpc %s %s: %v", name, p.method, what, st.Err())
					}
				}
			}
		}
	})

	// Bytes that are no protocol at all end the connection; the server
	// goes on serving everyone else.
	notAProtocol := []byte("GET / HTTP/1.1\r\nHost: flotilla\r\n\r\nthis is not gRPC and not ttrpc\r\n")
	preface := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	h2Junk := map[string][]byte{
		"HTTP/1.1": notAProtocol,
		// The first frame must be SETTINGS; this is a DATA frame on stream 0.
		"preface, DATA on stream 0": append(append([]byte{}, preface...), 0, 0, 4, 0, 0, 0, 0, 0, 0, 'j', 'u', 'n', 'k'),
		// An empty SETTINGS, then a frame over the maximum frame size.
		"preface, SETTINGS, huge frame": append(append([]byte{}, preface...),
			0, 0, 0, 4, 0, 0, 0, 0, 0,
			0xff, 0xff, 0xff, 0xee, 0x00, 0x7f, 0xff, 0xff, 0xff),
		"preface, SETTINGS, random": append(append(append([]byte{}, preface...),
			0, 0, 0, 4, 0, 0, 0, 0, 0), bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64)...),
	}
	t.Run("junk on gRPC sockets", func(t *testing.T) {
		for name, sock := range socks {
			for what, junk := range h2Junk {
				c := dialUnix(t, sock)
				if _, err := c.Write(junk); err != nil {
					t.Errorf("%s: write %s: %v", name, what, err)
					continue
				}
				if err := expectClosed(c, 5*time.Second); err != nil {
					t.Errorf("%s: after %s: %v", name, what, err)
				}
			}
			expectServing(t, name, dialRaw(t, sock))
		}
	})

	t.Run("junk on ttrpc sockets", func(t *testing.T) {
		ttrpcSocks := map[string]string{"gateway": d.address + ".ttrpc"}
		for _, name := range limitsServices {
			ttrpcSocks[name] = procs[name].ttrpc
		}
		for name, sock := range ttrpcSocks {
			for what, junk := range map[string][]byte{
				"HTTP/1.1":       notAProtocol,
				"HTTP/2 preface": preface,
				// A header of a message type ttrpc does not know.
				"unknown type": {0, 0, 0, 4, 0, 0, 0, 1, 0x7f, 0, 'j', 'u', 'n', 'k'},
				// A request on an even (server-side) stream id.
				"even stream": {0, 0, 0, 4, 0, 0, 0, 2, 1, 0, 'j', 'u', 'n', 'k'},
				// A request whose envelope is no protobuf.
				"junk envelope": {0, 0, 0, 4, 0, 0, 0, 1, 1, 0, 0xff, 0xff, 0xff, 0xff},
			} {
				c := dialUnix(t, sock)
				if _, err := c.Write(junk); err != nil {
					t.Errorf("%s: write %s: %v", name, what, err)
					continue
				}
				// ttrpc answers what it can frame with an error status
				// and waits for the rest of a frame it cannot: either
				// way the connection ends with the client's.
				_ = c.(*net.UnixConn).CloseWrite()
				if err := expectClosed(c, 5*time.Second); err != nil {
					t.Errorf("%s (ttrpc): after %s: %v", name, what, err)
				}
			}
			expectTTRPCServing(t, name, dialTTRPC(t, sock))
		}
	})

	expectGatewayServing(t, d)
	expectUnchanged(t, procs, d.serviceProcs(t))
}

func TestLimitsUnknownMethodsAreUnimplemented(t *testing.T) {
	d := newDaemon(t).start()
	procs := d.serviceProcs(t)
	for name, sock := range grpcSockets(d, procs) {
		conn := dialRaw(t, sock)
		methods := []string{"/no.such.v1.Service/Method", "/runtime.v1.RuntimeService/NoSuchMethod"}
		for _, p := range probesOf[name] {
			svc, _ := splitMethod(p.method)
			methods = append(methods, "/"+svc+"/NoSuchMethod")
		}
		for _, m := range methods {
			err := invokeRaw(limitsContext(t), conn, m, nil)
			if status.Code(err) != codes.Unimplemented {
				t.Errorf("%s: %s: %v, want Unimplemented", name, m, err)
			} else {
				t.Logf("%s %s: %v", name, m, err)
			}
		}
	}
	for _, name := range limitsServices {
		c := dialTTRPC(t, procs[name].ttrpc)
		svc, _ := splitMethod(probesOf[name][0].method)
		for _, m := range [][2]string{{"no.such.v1.Service", "Method"}, {svc, "NoSuchMethod"}} {
			err := c.Call(ttrpcContext(t), m[0], m[1], &namespacesapi.ListNamespacesRequest{}, &namespacesapi.ListNamespacesResponse{})
			if status.Code(err) != codes.Unimplemented {
				t.Errorf("%s (ttrpc): %s/%s: %v, want Unimplemented", name, m[0], m[1], err)
			}
		}
	}
	expectUnchanged(t, procs, d.serviceProcs(t))
}

func splitMethod(full string) (svc, method string) {
	full = strings.TrimPrefix(full, "/")
	i := strings.LastIndex(full, "/")
	return full[:i], full[i+1:]
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dialUnix(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectClosed reads until the server closes the connection.
func expectClosed(c net.Conn, timeout time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c)
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isConnReset(err) {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the server kept the connection open for %s", timeout)
	}
	return err
}

func isConnReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}

func dialTTRPC(t *testing.T, sock string) *ttrpc.Client {
	t.Helper()
	c := ttrpc.NewClient(dialUnix(t, sock))
	t.Cleanup(func() { c.Close() })
	return c
}

func ttrpcContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ttrpc.WithMetadata(ctx, ttrpc.MD{"containerd-namespace": {limitsNamespace}})
}

// expectTTRPCServing makes a small call every ttrpc server of the daemon
// answers: an unknown service is Unimplemented, from the server itself.
func expectTTRPCServing(t *testing.T, where string, c *ttrpc.Client) {
	t.Helper()
	err := c.Call(ttrpcContext(t), "no.such.v1.Service", "Method", &namespacesapi.ListNamespacesRequest{}, &namespacesapi.ListNamespacesResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("%s (ttrpc) does not answer after bad input: %v", where, err)
	}
}

// rawTTRPCCall writes one ttrpc request frame on stream id, whatever its
// size, and reads the response to it.
func rawTTRPCCall(t *testing.T, c net.Conn, id uint32, req *ttrpc.Request) *status.Status {
	t.Helper()
	p := mustMarshal(t, req)
	hdr := make([]byte, 10)
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(p)))
	binary.BigEndian.PutUint32(hdr[4:8], id)
	hdr[8] = 1 // request
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(append(hdr, p...)); err != nil {
		t.Fatalf("write ttrpc request: %v", err)
	}
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			t.Fatalf("read ttrpc response to stream %d: %v", id, err)
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[0:4]))
		if _, err := io.ReadFull(c, body); err != nil {
			t.Fatalf("read ttrpc response body: %v", err)
		}
		if got := binary.BigEndian.Uint32(hdr[4:8]); got != id || hdr[8] != 2 {
			continue
		}
		var resp ttrpc.Response
		if err := proto.Unmarshal(body, &resp); err != nil {
			t.Fatalf("ttrpc response to stream %d: %v", id, err)
		}
		return status.FromProto(resp.Status)
	}
}

// containerRequest is a Containers.Create request of exactly size bytes.
func containerRequest(id string, size int) *containersapi.CreateContainerRequest {
	req := &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID:      id,
		Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
		Spec:    &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec"},
	}}
	req.Container.Spec.Value = make([]byte, size-proto.Size(req)-8)
	for proto.Size(req) < size {
		req.Container.Spec.Value = append(req.Container.Spec.Value, 'x')
	}
	for proto.Size(req) > size {
		req.Container.Spec.Value = req.Container.Spec.Value[:len(req.Container.Spec.Value)-1]
	}
	return req
}

// Between ttrpc's 4 MiB and gRPC's 16 MiB, the gateway's ttrpc fast path
// must step aside: a call gRPC carries succeeds, and a change is never
// reported refused after it was made.
func TestLimitsGatewayCarriesWhatTTRPCCannot(t *testing.T) {
	d := newDaemon(t).start()
	cc := containersapi.NewContainersClient(dialRaw(t, d.address))
	for _, tc := range []struct {
		name string
		size int
		md   int // bytes of extra metadata
	}{
		// Its reply, with the timestamps the service adds, is over what
		// ttrpc carries.
		{"reply-over-ttrpc", rpc.MaxTTRPCRequest, 0},
		// The request fits; with its metadata the ttrpc message does not.
		{"metadata-over-ttrpc", rpc.MaxTTRPCChange - 1000, 100 << 10},
		{"over-ttrpc", 5 << 20, 0},
		{"near-grpc-limit", 15 << 20, 0},
	} {
		ctx := limitsContext(t)
		if tc.md > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, "x-limits-padding", fill(tc.md))
		}
		req := containerRequest(tc.name, tc.size)
		resp, err := cc.Create(ctx, req)
		if err != nil {
			t.Errorf("Containers.Create of %d bytes (%d bytes of metadata) through the gateway: %v", tc.size, tc.md, err)
		} else if got := len(resp.Container.GetSpec().GetValue()); got != len(req.Container.Spec.Value) {
			t.Errorf("Containers.Create of %d bytes returned a spec of %d bytes, want %d", tc.size, got, len(req.Container.Spec.Value))
		}
		got, err := cc.Get(limitsContext(t), &containersapi.GetContainerRequest{ID: tc.name})
		if err != nil {
			t.Errorf("container %s after its Create: %v", tc.name, err)
		} else if len(got.Container.GetSpec().GetValue()) != len(req.Container.Spec.Value) {
			t.Errorf("container %s has a spec of %d bytes, want %d", tc.name, len(got.Container.GetSpec().GetValue()), len(req.Container.Spec.Value))
		}
	}
}
