// Package logs writes a container's stdout and stderr into one file in the
// CRI log format the kubelet reads (and `kubectl logs` shows):
//
//	2024-01-01T00:00:00.000000000Z stdout F a whole line
//	2024-01-01T00:00:00.000000000Z stderr P the first part of a long line
//
// The writers live in the cri process, fed from the task's FIFOs: while
// the cri process restarts nothing is read, and the container blocks once
// the FIFO's buffer is full.
package logs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// MaxLine is the longest line written as one log entry; a longer one is
// split into partial ("P") entries, as containerd's CRI does.
const MaxLine = 16 * 1024

// File is one container's log file, shared by its stream writers.
type File struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

// Open opens (creating it and its directory if need be) the log file at
// path for appending.
func Open(path string) (*File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open container log: %w", err)
	}
	return &File{path: path, f: f}, nil
}

func (l *File) entry(stream string, tag byte, line []byte) {
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

// Close closes the file; flush the streams first.
func (l *File) Close() error { return l.f.Close() }

// Reopen closes the log file and opens its path again, so that a file
// renamed away (log rotation) stops growing and new lines land in a new
// file at the path.
func (l *File) Reopen() error {
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

// Stream returns the writer for one stream ("stdout" or "stderr").
func (l *File) Stream(name string) *Stream { return &Stream{log: l, name: name} }

// Stream splits what one stream writes into lines, each one entry (or
// several partial ones) in the file. It takes one writer at a time, as
// cio's copy of one FIFO is.
type Stream struct {
	log  *File
	name string
	buf  []byte
}

func (s *Stream) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		line := s.buf[:i]
		for len(line) > MaxLine {
			s.log.entry(s.name, 'P', line[:MaxLine])
			line = line[MaxLine:]
		}
		s.log.entry(s.name, 'F', line)
		s.buf = s.buf[i+1:]
	}
	for len(s.buf) > MaxLine {
		s.log.entry(s.name, 'P', s.buf[:MaxLine])
		s.buf = s.buf[MaxLine:]
	}
	if len(s.buf) == 0 {
		s.buf = nil
	}
	return len(p), nil
}

// Flush writes what is left of an unterminated last line.
func (s *Stream) Flush() {
	if len(s.buf) > 0 {
		s.log.entry(s.name, 'F', s.buf)
		s.buf = nil
	}
}
