package tracing

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// DirEnv names the directory where every Flotilla process writes its spans,
// one JSON object a line, to <dir>/<service>.jsonl. flotillad sets it for
// itself and its services when the config says [trace] file = true.
const DirEnv = "FLOTILLA_TRACE_DIR"

// FileExt ends the name of a span file; a full file is renamed with ".1"
// after it.
const FileExt = ".jsonl"

// MaxFileSize is the size past which a span file starts over, keeping the
// previous one as <name>.jsonl.1: two files of a service hold at most twice
// this.
const MaxFileSize = 32 << 20

// FileSpan is one line of a span file: what `flotilla trace` needs to draw
// a waterfall, and no more.
type FileSpan struct {
	TraceID  string            `json:"trace_id"`
	SpanID   string            `json:"span_id"`
	ParentID string            `json:"parent_id,omitempty"`
	Service  string            `json:"service"`
	Name     string            `json:"name"`
	Kind     string            `json:"kind"`
	Start    time.Time         `json:"start"`
	End      time.Time         `json:"end"`
	Error    string            `json:"error,omitempty"`
	Attrs    map[string]string `json:"attrs,omitempty"`
}

// FilePath is the span file of a service in dir.
func FilePath(dir, service string) string { return filepath.Join(dir, service+FileExt) }

// fileExporter appends spans to a file. Each process writes only its own
// file, so lines never interleave.
type fileExporter struct {
	path    string
	service string

	mu   sync.Mutex
	f    *os.File
	size int64
}

func newFileExporter(dir, service string) (*fileExporter, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create trace directory: %w", err)
	}
	e := &fileExporter{path: FilePath(dir, service), service: ServiceName(service)}
	if err := e.open(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *fileExporter) open() error {
	f, err := os.OpenFile(e.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open span file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	e.f, e.size = f, fi.Size()
	return nil
}

// rotate starts a new file, keeping the full one as <path>.1.
func (e *fileExporter) rotate() error {
	_ = e.f.Close()
	e.f = nil
	if err := os.Rename(e.path, e.path+".1"); err != nil && !os.IsNotExist(err) {
		return err
	}
	return e.open()
}

func (e *fileExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		if err := e.open(); err != nil {
			return err
		}
	}
	if e.size > MaxFileSize {
		if err := e.rotate(); err != nil {
			return err
		}
	}
	// One write per batch: a reader never sees half a batch's lines for
	// long, and a crash loses at most the batch being written.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, s := range spans {
		if err := enc.Encode(e.line(s)); err != nil {
			return err
		}
	}
	n, err := e.f.Write(buf.Bytes())
	e.size += int64(n)
	return err
}

func (e *fileExporter) line(s sdktrace.ReadOnlySpan) FileSpan {
	fs := FileSpan{
		TraceID: s.SpanContext().TraceID().String(),
		SpanID:  s.SpanContext().SpanID().String(),
		Service: e.service,
		Name:    s.Name(),
		Kind:    s.SpanKind().String(),
		Start:   s.StartTime(),
		End:     s.EndTime(),
	}
	if p := s.Parent(); p.IsValid() {
		fs.ParentID = p.SpanID().String()
	}
	if st := s.Status(); st.Code == codes.Error {
		fs.Error = st.Description
		if fs.Error == "" {
			fs.Error = "error"
		}
	}
	for _, kv := range s.Attributes() {
		if keep[kv.Key] {
			if fs.Attrs == nil {
				fs.Attrs = map[string]string{}
			}
			fs.Attrs[string(kv.Key)] = kv.Value.Emit()
		}
	}
	if svc := serviceOf(s); svc != "" {
		fs.Service = svc
	}
	return fs
}

// keep are the attributes worth a line: what a reader of the waterfall
// looks for next (the status code of a failed call).
var keep = map[attribute.Key]bool{
	"rpc.grpc.status_code": true,
	"rpc.system":           true,
}

func serviceOf(s sdktrace.ReadOnlySpan) string {
	if r := s.Resource(); r != nil {
		if v, ok := r.Set().Value("service.name"); ok {
			return v.AsString()
		}
	}
	return ""
}

func (e *fileExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return nil
	}
	err := e.f.Close()
	e.f = nil
	return err
}

// ReadFileSpans reads every span of every span file in dir (current and
// rotated ones). Lines that do not parse — the last one of a file being
// written, say — are skipped.
func ReadFileSpans(dir string) ([]FileSpan, error) {
	var files []string
	for _, pat := range []string{"*" + FileExt, "*" + FileExt + ".1"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no span files in %s: is [trace] file = true in flotillad's config?", dir)
	}
	var out []FileSpan
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var s FileSpan
			if json.Unmarshal(sc.Bytes(), &s) == nil && s.TraceID != "" {
				out = append(out, s)
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
	}
	return out, nil
}

var _ sdktrace.SpanExporter = (*fileExporter)(nil)
