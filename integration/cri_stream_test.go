package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIStreamExecAttachPortForward drives the streaming calls the way
// kubectl exec/attach/port-forward reach a node: the kubelet's CRI client
// asks for a URL, and a client speaks the Kubernetes channel protocol over
// WebSocket (v4.channel.k8s.io: one leading byte names the stream) to the
// streaming server at that URL.
func TestCRIStreamExecAttachPortForward(t *testing.T) {
	p := startCRIPods(t, podNetwork("flotilla-test"), "test")
	d, rt, busyboxRef := p.d, p.rt, p.busyboxRef
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.pullImages(ctx, t)

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "stream", Namespace: "default", Uid: "uid-stream-1"},
		LogDirectory: filepath.Join(p.work, "logs"),
	}
	podID := p.runPod(ctx, t, podCfg)
	// Stopped explicitly before runPod's removal (cleanups run last
	// first).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rt.StopPodSandbox(ctx, podID); err != nil {
			t.Logf("cleanup: StopPodSandbox: %v", err)
		}
	})
	run := func(name string, cfg *runtimeapi.ContainerConfig) string {
		t.Helper()
		cfg.Metadata = &runtimeapi.ContainerMetadata{Name: name}
		cfg.Image = &runtimeapi.ImageSpec{Image: busyboxRef}
		cfg.LogPath = name + ".log"
		return p.startContainer(ctx, t, podID, podCfg, cfg)
	}
	ticker := run("ticker", &runtimeapi.ContainerConfig{
		Command: []string{"sh", "-c", `i=0; while true; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 1; done`},
	})
	server := run("server", &runtimeapi.ContainerConfig{
		Command: []string{"sh", "-c", `while true; do nc -l -p 8080 -e echo hello; done`},
	})
	cat := run("cat", &runtimeapi.ContainerConfig{Command: []string{"cat"}, Stdin: true})
	ttyCat := run("ttycat", &runtimeapi.ContainerConfig{Command: []string{"sh", "-c", "test -t 1 && echo on-a-tty; cat"}, Stdin: true, Tty: true})

	t.Run("ExecEchoNoTTY", func(t *testing.T) {
		s := streamExec(ctx, t, rt, &runtimeapi.ExecRequest{ContainerId: ticker, Cmd: []string{"echo", "hi"}, Stdout: true, Stderr: true})
		res := s.readUntilClosed(t, 30*time.Second)
		if got := res.stdout(); got != "hi\n" {
			t.Errorf("exec echo hi: stdout %q, want %q (stderr %q)", got, "hi\n", res.stderr())
		}
		if code, err := res.exitCode(); err != nil || code != 0 {
			t.Errorf("exec echo hi: exit code %d, %v; want 0 (status %q)", code, err, res.channels[3].String())
		}
	})

	t.Run("ExecNonZeroExitAndStderr", func(t *testing.T) {
		s := streamExec(ctx, t, rt, &runtimeapi.ExecRequest{ContainerId: ticker, Cmd: []string{"sh", "-c", "echo oops >&2; exit 3"}, Stdout: true, Stderr: true})
		res := s.readUntilClosed(t, 30*time.Second)
		if got := res.stderr(); got != "oops\n" {
			t.Errorf("exec exit 3: stderr %q, want %q", got, "oops\n")
		}
		if code, err := res.exitCode(); err != nil || code != 3 {
			t.Errorf("exec exit 3: exit code %d, %v; want 3 (status %q)", code, err, res.channels[3].String())
		}
	})

	t.Run("ExecStdin", func(t *testing.T) {
		// head -n1 ends after one line: the v4 protocol has no way to
		// close stdin.
		s := streamExec(ctx, t, rt, &runtimeapi.ExecRequest{ContainerId: ticker, Cmd: []string{"head", "-n1"}, Stdin: true, Stdout: true, Stderr: true})
		s.write(t, 0, []byte("from-stdin\nnot this\n"))
		res := s.readUntilClosed(t, 30*time.Second)
		if got := res.stdout(); got != "from-stdin\n" {
			t.Errorf("exec head -n1 with stdin: stdout %q, want %q", got, "from-stdin\n")
		}
		if code, err := res.exitCode(); err != nil || code != 0 {
			t.Errorf("exec head -n1: exit code %d, %v; want 0", code, err)
		}
	})

	t.Run("ExecTTY", func(t *testing.T) {
		// Without stdin: the terminal must not be hung up early (the
		// WebSocket stdin channel of a call that did not ask for stdin
		// reads as EOF, and must not reach the process).
		s := streamExec(ctx, t, rt, &runtimeapi.ExecRequest{ContainerId: ticker, Cmd: []string{"sh", "-c", "test -t 1 && echo on-a-tty; sleep 0.3; echo still-here"}, Tty: true, Stdout: true})
		res := s.readUntilClosed(t, 30*time.Second)
		if got := res.stdout(); !strings.Contains(got, "on-a-tty") || !strings.Contains(got, "still-here") {
			t.Errorf("exec with tty: stdout %q, want on-a-tty and still-here; status %q", got, res.channels[3].String())
		}
		if code, err := res.exitCode(); err != nil || code != 0 {
			t.Errorf("exec with tty: exit code %d, %v; want 0", code, err)
		}
	})

	t.Run("ExecTTYResize", func(t *testing.T) {
		// Each line typed prints the terminal's size; a resize on
		// channel 4 reaches the exec's terminal.
		s := streamExec(ctx, t, rt, &runtimeapi.ExecRequest{ContainerId: ticker, Cmd: []string{"sh", "-c", `while read x; do busybox stty size; [ "$x" = q ] && exit 0; done`}, Tty: true, Stdin: true, Stdout: true})
		s.write(t, 4, []byte(`{"Width":100,"Height":40}`))
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(s.stdout(), "40 100") {
			if time.Now().After(deadline) {
				t.Fatalf("exec tty after a resize to 100x40: output %q, want stty size 40 100", s.stdout())
			}
			s.write(t, 0, []byte("size\n"))
			_ = s.next(time.Now().Add(200 * time.Millisecond))
		}
		s.write(t, 0, []byte("q\n"))
		if code, err := s.readUntilClosed(t, 20*time.Second).exitCode(); err != nil || code != 0 {
			t.Errorf("exec tty: exit code %d, %v; want 0", code, err)
		}
	})

	t.Run("AttachReadsOutput", func(t *testing.T) {
		resp, err := rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: ticker, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatalf("Attach: %v", err)
		}
		s := streamDial(t, resp.GetUrl())
		defer s.conn.Close()
		s.readUntil(t, 20*time.Second, "tick and tock through attach", func(ch map[byte]*bytes.Buffer) bool {
			return strings.Contains(ch[1].String(), "tick ") && strings.Contains(ch[2].String(), "tock ")
		})
	})

	t.Run("AttachStdin", func(t *testing.T) {
		resp, err := rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: cat, Stdin: true, Stdout: true})
		if err != nil {
			t.Fatalf("Attach: %v", err)
		}
		s := streamDial(t, resp.GetUrl())
		defer s.conn.Close()
		s.write(t, 0, []byte("ping through attach\n"))
		s.readUntil(t, 20*time.Second, "cat's echo of the attached stdin", func(ch map[byte]*bytes.Buffer) bool {
			return strings.Contains(ch[1].String(), "ping through attach\n")
		})
	})

	t.Run("AttachTTY", func(t *testing.T) {
		// A tty container's output is the terminal's, in the log too.
		logPath := filepath.Join(p.work, "logs", "ttycat.log")
		waitFor(t, 20*time.Second, "on-a-tty in "+logPath, func() bool {
			b, _ := os.ReadFile(logPath)
			return bytes.Contains(b, []byte("on-a-tty"))
		})
		resp, err := rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: ttyCat, Stdin: true, Stdout: true, Tty: true})
		if err != nil {
			t.Fatalf("Attach: %v", err)
		}
		s := streamDial(t, resp.GetUrl())
		defer s.conn.Close()
		s.write(t, 0, []byte("typed into the terminal\n"))
		s.readUntil(t, 20*time.Second, "the terminal's echo of the attached stdin", func(ch map[byte]*bytes.Buffer) bool {
			return strings.Contains(ch[1].String(), "typed into the terminal")
		})
	})

	t.Run("PortForward", func(t *testing.T) {
		// nc may not listen yet: a refused dial comes back on the
		// error channel, and the test asks again.
		var last string
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			resp, err := rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: []int32{8080}})
			if err != nil {
				t.Fatalf("PortForward: %v", err)
			}
			s := streamDial(t, resp.GetUrl())
			res := s.readUntilClosed(t, 20*time.Second)
			// Each channel starts with the port, little-endian.
			data, errs := res.channels[0].Bytes(), res.channels[1].Bytes()
			for _, b := range [][]byte{data, errs} {
				if len(b) < 2 || binary.LittleEndian.Uint16(b) != 8080 {
					t.Fatalf("port forward channels do not start with port 8080: data %q, error %q", data, errs)
				}
			}
			if string(data[2:]) == "hello\n" {
				return
			}
			last = fmt.Sprintf("data %q, error %q", data[2:], errs[2:])
			time.Sleep(500 * time.Millisecond)
		}
		t.Fatalf("port forward to the pod's port 8080 never read hello from %s: last %s", server, last)
	})

	t.Run("AttachAndExecAfterCRIRestart", func(t *testing.T) {
		// A new cri process reattaches to the containers' stdio, and
		// its streaming server (on a new port) serves attach and exec.
		old := criPid(d)
		if old == 0 {
			t.Fatal("introspection exports no pid for the cri service")
		}
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "a new cri process", func() bool {
			p := criPid(d)
			return p != 0 && p != old
		})
		var resp *runtimeapi.AttachResponse
		waitFor(t, 30*time.Second, "Attach answered by the new cri process", func() bool {
			var err error
			resp, err = rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: ticker, Stdout: true})
			return err == nil
		})
		s := streamDial(t, resp.GetUrl())
		defer s.conn.Close()
		s.readUntil(t, 20*time.Second, "tick through attach after the restart", func(ch map[byte]*bytes.Buffer) bool {
			return strings.Contains(ch[1].String(), "tick ")
		})
		res := streamExec(ctx, t, rt, &runtimeapi.ExecRequest{ContainerId: ticker, Cmd: []string{"echo", "again"}, Stdout: true}).readUntilClosed(t, 30*time.Second)
		if res.stdout() != "again\n" {
			t.Errorf("exec after the restart: stdout %q, want again (status %q)", res.stdout(), res.channels[3].String())
		}
	})

	t.Run("UnknownContainerIsNotFound", func(t *testing.T) {
		if _, err := rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "no-such-container", Cmd: []string{"true"}, Stdout: true}); err == nil || !strings.Contains(err.Error(), "NotFound") {
			t.Errorf("Exec in an unknown container: %v, want NotFound", err)
		}
	})
}

// streamSession is one WebSocket connection to the streaming server.
type streamSession struct {
	conn     *websocket.Conn
	channels map[byte]*bytes.Buffer
}

func streamExec(ctx context.Context, t *testing.T, rt interface {
	Exec(context.Context, *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error)
}, req *runtimeapi.ExecRequest) *streamSession {
	t.Helper()
	resp, err := rt.Exec(ctx, req)
	if err != nil {
		t.Fatalf("Exec %q: %v", req.Cmd, err)
	}
	return streamDial(t, resp.GetUrl())
}

func streamDial(t *testing.T, raw string) *streamSession {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("streaming URL %q: %v", raw, err)
	}
	if u.Scheme != "http" || !strings.HasPrefix(u.Host, "127.0.0.1:") || strings.HasSuffix(u.Host, ":0") {
		t.Fatalf("streaming URL %q: want http on 127.0.0.1 with a real port", raw)
	}
	u.Scheme = "ws"
	dialer := websocket.Dialer{Subprotocols: []string{"v4.channel.k8s.io"}, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := dialer.Dial(u.String(), nil)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("dial streaming URL %s: %v %s", u, err, status)
	}
	return &streamSession{conn: conn, channels: map[byte]*bytes.Buffer{0: {}, 1: {}, 2: {}, 3: {}}}
}

func (s *streamSession) write(t *testing.T, channel byte, p []byte) {
	t.Helper()
	if err := s.conn.WriteMessage(websocket.BinaryMessage, append([]byte{channel}, p...)); err != nil {
		t.Fatalf("write to stream %d: %v", channel, err)
	}
}

// next reads one frame into its channel's buffer.
func (s *streamSession) next(deadline time.Time) error {
	_ = s.conn.SetReadDeadline(deadline)
	_, frame, err := s.conn.ReadMessage()
	if err != nil {
		return err
	}
	if len(frame) == 0 {
		return nil
	}
	b, ok := s.channels[frame[0]]
	if !ok {
		b = &bytes.Buffer{}
		s.channels[frame[0]] = b
	}
	b.Write(frame[1:])
	return nil
}

// readUntilClosed reads every frame until the server closes the session.
func (s *streamSession) readUntilClosed(t *testing.T, timeout time.Duration) *streamSession {
	t.Helper()
	defer s.conn.Close()
	deadline := time.Now().Add(timeout)
	for {
		err := s.next(deadline)
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) || strings.Contains(err.Error(), "EOF") {
			return s
		}
		t.Fatalf("streaming session did not end within %s: %v (stdout %q, stderr %q, status %q)", timeout, err, s.stdout(), s.stderr(), s.channels[3].String())
	}
}

func (s *streamSession) readUntil(t *testing.T, timeout time.Duration, what string, cond func(map[byte]*bytes.Buffer) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond(s.channels) {
		if err := s.next(deadline); err != nil {
			t.Fatalf("waiting for %s: %v (stdout %q, stderr %q, status %q)", what, err, s.stdout(), s.stderr(), s.channels[3].String())
		}
	}
}

func (s *streamSession) stdout() string { return s.channels[1].String() }
func (s *streamSession) stderr() string { return s.channels[2].String() }

// exitCode decodes the v4 status on the error channel: Success, or a
// NonZeroExitCode failure carrying the code.
func (s *streamSession) exitCode() (int, error) {
	var st struct {
		Status  string `json:"status"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
		Details struct {
			Causes []struct {
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"causes"`
		} `json:"details"`
	}
	if err := json.Unmarshal(s.channels[3].Bytes(), &st); err != nil {
		return -1, fmt.Errorf("status %q: %w", s.channels[3].String(), err)
	}
	if st.Status == "Success" {
		return 0, nil
	}
	if st.Reason == "NonZeroExitCode" {
		for _, c := range st.Details.Causes {
			if c.Reason == "ExitCode" {
				var code int
				_, err := fmt.Sscan(c.Message, &code)
				return code, err
			}
		}
	}
	return -1, fmt.Errorf("status %s: %s %s", st.Status, st.Reason, st.Message)
}
