// Package streams is containerd's Streaming API
// (containerd.services.streaming.v1.Streaming) as the transfer service
// serves it: a client opens a stream under an id of its choosing, then
// names the id in a Transfer request, which takes the stream to carry what
// the transfer needs from the client or sends back to it: an archive's
// bytes, progress, registry credentials asked for as a registry wants them.
//
// A stream lives as long as the client's Stream call: it is dropped when
// the client ends the call or the transfer using it closes it.
package streams

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	"github.com/containerd/containerd/v2/core/streaming"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Manager holds the open streams by namespace and id. It is a
// streaming.StreamGetter: a transfer finds its streams by the namespace of
// its own call.
type Manager struct {
	streamingapi.UnimplementedStreamingServer

	mu      sync.Mutex
	streams map[key]*stream
}

var _ streaming.StreamGetter = (*Manager)(nil)

type key struct{ ns, id string }

// NewManager returns a manager holding no stream.
func NewManager() *Manager {
	return &Manager{streams: map[key]*stream{}}
}

// Register serves the Streaming API on srv.
func (m *Manager) Register(srv grpc.ServiceRegistrar) {
	streamingapi.RegisterStreamingServer(srv, m)
}

// Get returns the stream the namespace of ctx opened under id.
func (m *Manager) Get(ctx context.Context, id string) (streaming.Stream, error) {
	ns, _ := namespaces.Namespace(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.streams[key{ns, id}]
	if !ok {
		return nil, fmt.Errorf("stream %q: %w", id, errdefs.ErrNotFound)
	}
	return s, nil
}

// Len is the number of open streams.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.streams)
}

// Stream serves one client stream: its first message names it
// (StreamInit), the reply to it says it is registered, and from then on
// the stream belongs to the transfer that asks for it by name.
func (m *Manager) Stream(srv streamingapi.Streaming_StreamServer) error {
	ctx := srv.Context()
	a, err := srv.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("stream closed before it was named: %w", errdefs.ErrInvalidArgument)
		}
		return err
	}
	var init streamingapi.StreamInit
	if err := typeurl.UnmarshalTo(a, &init); err != nil {
		return fmt.Errorf("first message of a stream is a StreamInit, got %s: %w", a.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	if init.ID == "" {
		return fmt.Errorf("stream without an id: %w", errdefs.ErrInvalidArgument)
	}
	k := key{ns: namespaceOf(ctx), id: init.ID}
	s := &stream{srv: srv, closed: make(chan struct{})}
	s.close = func() { m.drop(k, s) }
	m.mu.Lock()
	if _, taken := m.streams[k]; taken {
		m.mu.Unlock()
		return fmt.Errorf("stream %q: %w", init.ID, errdefs.ErrAlreadyExists)
	}
	m.streams[k] = s
	m.mu.Unlock()
	defer s.Close()

	ack, err := typeurl.MarshalAny(&emptypb.Empty{})
	if err != nil {
		return err
	}
	if err := s.Send(ack); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.closed:
	}
	return nil
}

func (m *Manager) drop(k key, s *stream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.streams[k] == s {
		delete(m.streams, k)
	}
}

// namespaceOf is the namespace a call names in its metadata, "" for none.
func namespaceOf(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(namespaces.GRPCHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// stream is one client stream as a transfer uses it. Closing it ends the
// client's Stream call, which the client reads as the end of the stream.
type stream struct {
	srv    streamingapi.Streaming_StreamServer
	sendMu sync.Mutex
	once   sync.Once
	closed chan struct{}
	close  func()
}

func (s *stream) Send(a typeurl.Any) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	select {
	case <-s.closed:
		return io.ErrClosedPipe
	default:
	}
	err := s.srv.Send(typeurl.MarshalProto(a))
	if err != nil && !errors.Is(err, io.EOF) {
		err = errgrpc.ToNative(err)
	}
	return err
}

func (s *stream) Recv() (typeurl.Any, error) {
	a, err := s.srv.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		err = errgrpc.ToNative(err)
	}
	return a, err
}

func (s *stream) Close() error {
	s.once.Do(func() {
		s.close()
		// No send is under way when the call ends: gRPC forbids one
		// after its handler returned.
		s.sendMu.Lock()
		close(s.closed)
		s.sendMu.Unlock()
	})
	return nil
}
