package streaming

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	goruntime "runtime"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// PortForward connects the session to port on the pod's loopback, from
// inside the pod's network namespace (the host's for host-network pods),
// and copies both ways until either side is done.
func (r sessions) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	s := r.s
	ctx = s.withNamespace(ctx)
	id, netns, err := s.containers.Sandbox(ctx, podID)
	if err != nil {
		return err
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port %d out of range: %w", port, errdefs.ErrInvalidArgument)
	}
	conn, err := dialInNetNS(netns, port)
	if err != nil {
		return fmt.Errorf("port forward to pod %s port %d: %w", id, port, err)
	}
	defer conn.Close()

	toClient := make(chan error, 1)
	toPod := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		toClient <- err
	}()
	go func() {
		_, err := io.Copy(conn, stream)
		toPod <- err
	}()
	select {
	case err := <-toClient:
		// The pod closed the connection (or the client went away):
		// all it had to say was sent.
		return err
	case err := <-toPod:
		if err != nil {
			return err
		}
		// The client is done sending; the pod may still answer.
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		select {
		case err := <-toClient:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dialInNetNS dials 127.0.0.1:port (else [::1]:port) from inside the
// network namespace at path (from this one when path is empty). The
// socket is created on an OS thread switched into the namespace and keeps
// it once the thread switches back.
func dialInNetNS(path string, port int32) (net.Conn, error) {
	dial := func() (net.Conn, error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		p := strconv.Itoa(int(port))
		conn, err := d.Dial("tcp4", net.JoinHostPort("127.0.0.1", p))
		if err != nil {
			if conn6, err6 := d.Dial("tcp6", net.JoinHostPort("::1", p)); err6 == nil {
				return conn6, nil
			}
			return nil, err
		}
		return conn, nil
	}
	if path == "" {
		return dial()
	}
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is unlocked only once it is back in its own
		// namespace; otherwise it exits with this goroutine.
		goruntime.LockOSThread()
		conn, err := func() (net.Conn, error) {
			self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
			if err != nil {
				return nil, err
			}
			defer self.Close()
			target, err := os.Open(path)
			if err != nil {
				return nil, fmt.Errorf("pod network namespace: %w", err)
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("enter pod network namespace %s: %w", path, err)
			}
			conn, err := dial()
			if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
				goruntime.UnlockOSThread()
			}
			return conn, err
		}()
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}
