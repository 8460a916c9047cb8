package server

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxLogLine is the longest line written as one log entry; a longer one
// is split into partial ("P") entries, as containerd's CRI does.
const maxLogLine = 16 * 1024

// criLog writes a container's stdout and stderr into one file in the CRI
// log format the kubelet reads:
//
//	2024-01-01T00:00:00.000000000Z stdout F a whole line
//	2024-01-01T00:00:00.000000000Z stderr P the first part of a long line
//
// The writers live in the cri process, fed from the task's FIFOs: while
// the cri process restarts nothing is read, and the container blocks once
// the FIFO's buffer is full.
type criLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

func openCRILog(path string) (*criLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open container log: %w", err)
	}
	return &criLog{path: path, f: f}, nil
}

func (l *criLog) entry(stream string, tag byte, line []byte) {
	var b bytes.Buffer
	b.WriteString(time.Now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteByte(tag)
	b.WriteByte(' ')
	b.Write(line)
	b.WriteByte('\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.f.Write(b.Bytes())
}

func (l *criLog) Close() error { return l.f.Close() }

// stream returns the writer for one stream ("stdout" or "stderr").
func (l *criLog) stream(name string) *logStream { return &logStream{log: l, name: name} }

// logStream splits what one stream writes into lines.
type logStream struct {
	log  *criLog
	name string
	buf  []byte
}

func (s *logStream) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		line := s.buf[:i]
		for len(line) > maxLogLine {
			s.log.entry(s.name, 'P', line[:maxLogLine])
			line = line[maxLogLine:]
		}
		s.log.entry(s.name, 'F', line)
		s.buf = s.buf[i+1:]
	}
	for len(s.buf) > maxLogLine {
		s.log.entry(s.name, 'P', s.buf[:maxLogLine])
		s.buf = s.buf[maxLogLine:]
	}
	if len(s.buf) == 0 {
		s.buf = nil
	}
	return len(p), nil
}

// flush writes what is left of an unterminated last line.
func (s *logStream) flush() {
	if len(s.buf) > 0 {
		s.log.entry(s.name, 'F', s.buf)
		s.buf = nil
	}
}

// containerLog is the log of one running container: its file and the two
// stream writers, and the attach point that shares the output with
// attached clients (nil when none).
type containerLog struct {
	file           *criLog
	stdout, stderr *logStream
	attach         *attachPoint
}

func newContainerLog(path string) (*containerLog, error) {
	if path == "" {
		return &containerLog{}, nil
	}
	f, err := openCRILog(path)
	if err != nil {
		return nil, err
	}
	return &containerLog{file: f, stdout: f.stream("stdout"), stderr: f.stream("stderr")}, nil
}

func (c *containerLog) writers() (io.Writer, io.Writer) {
	if c.file == nil {
		return c.attach.tee(io.Discard, io.Discard)
	}
	return c.attach.tee(c.stdout, c.stderr)
}

// stdin is the container's stdin as attach feeds it (nil: none).
func (c *containerLog) stdin() io.Reader { return c.attach.stdin() }

func (c *containerLog) Close() {
	if c == nil {
		return
	}
	c.attach.close()
	if c.file == nil {
		return
	}
	c.stdout.flush()
	c.stderr.flush()
	_ = c.file.Close()
}

// reopen closes the log file and opens its path again, so that a file
// renamed away (log rotation) stops growing and new lines land in a new
// file at the path.
func (l *criLog) reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("reopen container log %s: %w", l.path, err)
	}
	_ = l.f.Close()
	l.f = f
	return nil
}
