package supervisor

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// A service's stderr is a file, <service state>/stderr.log, not a pipe to
// flotillad: a pipe would break when flotillad exits, and the service would
// lose everything it writes after that, up to a crash report. The service
// points its stderr there itself (see service.LogFileEnv), and the supervisor
// follows the file into its own output and the service's log ring, as it
// did with the pipe.
//
// After a reattach, the new flotillad puts what the file already holds into
// the ring (so `flotilla logs` shows the lines written while no flotillad
// ran) and copies only later lines to its output.
const logFile = "stderr.log"

const (
	// followInterval is how often the file is read for new lines.
	followInterval = 100 * time.Millisecond
	// maxLogSize bounds the file: once the supervisor has read this much,
	// it truncates the file (the service appends, so it writes on from the
	// start). Lines written in the moment between the last read and the
	// truncation are lost to the file but not to the ring.
	maxLogSize = 8 << 20
)

func (p *proc) logPath() string {
	return filepath.Join(p.spec.Env.State, logFile)
}

// logFollower copies the lines appended to a file to a tailWriter.
type logFollower struct {
	w *tailWriter

	mu  sync.Mutex // serialises drain
	f   *os.File
	off int64
	buf []byte

	once sync.Once
	stop chan struct{}
	done chan struct{}
}

// followLog follows path. fresh empties the file first (a new process);
// otherwise what it holds goes to ring only and only later lines to out.
func followLog(path string, fresh bool, out io.Writer, ring *logRing) (*logFollower, error) {
	flags := os.O_RDWR | os.O_CREATE
	if fresh {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, err
	}
	l := &logFollower{
		w:    &tailWriter{w: out, ring: ring},
		f:    f,
		buf:  make([]byte, 64<<10),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if !fresh {
		old, err := io.ReadAll(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		// Whole lines only; a partial last one is followed as new.
		if i := bytes.LastIndexByte(old, '\n'); i >= 0 {
			seed := &tailWriter{w: io.Discard, ring: ring}
			_, _ = seed.Write(old[:i+1])
			l.off = int64(i + 1)
		}
	}
	go l.run()
	return l, nil
}

func (l *logFollower) run() {
	defer close(l.done)
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.drain()
		}
	}
}

// drain copies everything written since the last call.
func (l *logFollower) drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if fi, err := l.f.Stat(); err == nil && fi.Size() < l.off {
		// Someone else emptied it (logrotate's copytruncate, say).
		l.off = 0
	}
	for {
		n, err := l.f.ReadAt(l.buf, l.off)
		if n > 0 {
			_, _ = l.w.Write(l.buf[:n])
			l.off += int64(n)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			break
		}
	}
	if l.off > maxLogSize {
		if err := l.f.Truncate(0); err == nil {
			l.off = 0
		}
	}
}

// close stops following after copying what is left. It is safe to call
// more than once.
func (l *logFollower) close() {
	if l == nil {
		return
	}
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		l.drain()
		l.mu.Lock()
		_ = l.f.Close()
		l.f = nil
		l.mu.Unlock()
	})
}
