package server

import (
	"io"

	"github.com/flotilla-project/flotilla/services/cri/logs"
	"github.com/flotilla-project/flotilla/services/cri/streaming"
)

// containerLog is the log of one running container: its file (see package
// logs) and the two stream writers, and the attach point that shares the
// output with attached clients (nil when none).
type containerLog struct {
	file           *logs.File
	stdout, stderr *logs.Stream
	attach         *streaming.AttachPoint
}

func newContainerLog(path string) (*containerLog, error) {
	if path == "" {
		return &containerLog{}, nil
	}
	f, err := logs.Open(path)
	if err != nil {
		return nil, err
	}
	return &containerLog{file: f, stdout: f.Stream("stdout"), stderr: f.Stream("stderr")}, nil
}

func (c *containerLog) writers() (io.Writer, io.Writer) {
	if c.file == nil {
		return c.attach.Tee(io.Discard, io.Discard)
	}
	return c.attach.Tee(c.stdout, c.stderr)
}

// stdin is the container's stdin as attach feeds it (nil: none).
func (c *containerLog) stdin() io.Reader { return c.attach.Stdin() }

func (c *containerLog) Close() {
	if c == nil {
		return
	}
	c.attach.Close()
	if c.file == nil {
		return
	}
	c.stdout.Flush()
	c.stderr.Flush()
	_ = c.file.Close()
}
