package streaming

import (
	"bytes"
	"errors"
	"io"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("client gone") }

func TestAttachPointSharesTheLogsOutputWithItsClients(t *testing.T) {
	s := New(nil, nil, Config{})
	ap := s.NewAttachPoint("c1", &runtime.ContainerConfig{Stdin: true})
	var log, logErr, out bytes.Buffer
	stdout, stderr := ap.Tee(&log, &logErr)
	ok := &attachClient{stdout: &out, failed: make(chan struct{})}
	bad := &attachClient{stdout: failingWriter{}, failed: make(chan struct{})}
	ap.add(ok)
	ap.add(bad)

	_, _ = stdout.Write([]byte("hello\n"))
	_, _ = stderr.Write([]byte("oops\n"))
	if log.String() != "hello\n" || logErr.String() != "oops\n" {
		t.Errorf("log got %q and %q, want every line whether or not a client listens", log.String(), logErr.String())
	}
	if out.String() != "hello\n" {
		t.Errorf("client that asked for stdout only got %q", out.String())
	}
	select {
	case <-bad.failed:
	default:
		t.Error("a client that cannot take the output is not dropped")
	}
	_, _ = stdout.Write([]byte("again\n"))
	if out.String() != "hello\nagain\n" || log.String() != "hello\nagain\n" {
		t.Errorf("after a client failed: client %q, log %q", out.String(), log.String())
	}

	// Closing the container's stdio ends the sessions, closes the stdin
	// pipe (so cio's copy returns) and unregisters the point.
	ap.Close()
	select {
	case <-ap.closed:
	default:
		t.Error("attach point not closed")
	}
	if _, err := io.ReadAll(ap.Stdin()); err != nil {
		t.Errorf("stdin pipe after close: %v, want EOF", err)
	}
	if s.attachPointOf("c1") != nil {
		t.Error("closed attach point still registered")
	}
}

func TestANewAttachPointReplacesTheOldOne(t *testing.T) {
	s := New(nil, nil, Config{})
	old := s.NewAttachPoint("c1", &runtime.ContainerConfig{})
	cur := s.NewAttachPoint("c1", &runtime.ContainerConfig{})
	select {
	case <-old.closed:
	default:
		t.Error("the replaced attach point is still open")
	}
	if s.attachPointOf("c1") != cur {
		t.Error("the new attach point is not the registered one")
	}
	if cur.Stdin() != nil {
		t.Error("a container without stdin has a stdin pipe: cio would make it a FIFO")
	}
	// A nil attach point (no container stdio read) passes the log's
	// writers through.
	var nilAP *AttachPoint
	var log bytes.Buffer
	if w, _ := nilAP.Tee(&log, io.Discard); w != &log {
		t.Error("a nil attach point wraps the log's writer")
	}
	nilAP.Close()
}
