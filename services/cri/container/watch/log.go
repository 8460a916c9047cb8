package watch

import (
	"io"

	"github.com/flotilla-project/flotilla/services/cri/logs"
	"github.com/flotilla-project/flotilla/services/cri/streaming"
)

// Log is the log of one running container: its file (see package logs)
// and the two stream writers, and the attach point that shares the
// output with attached clients (nil when none).
type Log struct {
	file           *logs.File
	stdout, stderr *logs.Stream
	// Attach is set by the container's start, before Writers.
	Attach *streaming.AttachPoint
}

// OpenLog opens the log file at path; with no path, the output goes to
// attached clients alone.
func OpenLog(path string) (*Log, error) {
	if path == "" {
		return &Log{}, nil
	}
	f, err := logs.Open(path)
	if err != nil {
		return nil, err
	}
	return &Log{file: f, stdout: f.Stream("stdout"), stderr: f.Stream("stderr")}, nil
}

// Writers are the container's stdout and stderr.
func (c *Log) Writers() (io.Writer, io.Writer) {
	if c.file == nil {
		return c.Attach.Tee(io.Discard, io.Discard)
	}
	return c.Attach.Tee(c.stdout, c.stderr)
}

// Stdin is the container's stdin as attach feeds it (nil: none).
func (c *Log) Stdin() io.Reader { return c.Attach.Stdin() }

// File is the log file (nil: none), for ReopenContainerLog.
func (c *Log) File() *logs.File { return c.file }

// Close flushes and closes the log and ends its attach point.
func (c *Log) Close() {
	if c == nil {
		return
	}
	c.Attach.Close()
	if c.file == nil {
		return
	}
	c.stdout.Flush()
	c.stderr.Flush()
	_ = c.file.Close()
}
