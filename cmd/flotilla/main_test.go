package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/pkg/version"
	adminpb "github.com/flotilla-project/flotilla/proto/admin/v1"
)

// fakeAdmin serves the admin API on a socket with fixed services and logs.
type fakeAdmin struct {
	adminpb.UnimplementedAdminServer
	services []*adminpb.ServiceStatus
	mu       sync.Mutex
	logs     []string
}

func (f *fakeAdmin) log(lines ...string) {
	f.mu.Lock()
	f.logs = append(f.logs, lines...)
	f.mu.Unlock()
}

func (f *fakeAdmin) Services(context.Context, *adminpb.ServicesRequest) (*adminpb.ServicesResponse, error) {
	return &adminpb.ServicesResponse{Services: f.services}, nil
}

func (f *fakeAdmin) Logs(_ context.Context, req *adminpb.LogsRequest) (*adminpb.LogsResponse, error) {
	f.mu.Lock()
	lines := append([]string(nil), f.logs...)
	f.mu.Unlock()
	if n := int(req.GetLines()); n > 0 && n < len(lines) {
		lines = lines[len(lines)-n:]
	}
	return &adminpb.LogsResponse{Lines: lines}, nil
}

func serveAdmin(t *testing.T, f *fakeAdmin) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	adminpb.RegisterAdminServer(s, f)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return sock
}

var twoServices = []*adminpb.ServiceStatus{
	{Name: "metadata", State: "running", Pid: 42, Restarts: 1, RssBytes: 21076377, MemoryLimitBytes: 256 << 20,
		CpuLimit: 1.5, Socket: "/run/flotilla/metadata.sock", StartedAt: timestamppb.New(time.Unix(1000, 0)),
		Uptime: durationpb.New(90 * time.Second)},
	{Name: "cri", State: "failed", Restarts: 3, LastExit: "oom-killed", Error: "start: no such file"},
}

// runCode runs a command line as main does and returns its output and exit
// code.
func runCode(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd, err := execute(context.Background(), args, &out, &errOut)
	code = report(cmd, err, &errOut)
	return out.String(), errOut.String(), code
}

func TestServicesTableKeepsOneWordColumns(t *testing.T) {
	sock := serveAdmin(t, &fakeAdmin{services: twoServices})
	out, errOut, code := runCode(t, "--address", sock, "services")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	header := strings.Fields(lines[0])
	want := []string{"NAME", "STATE", "PID", "RESTARTS", "OOM-KILLS", "LAST-EXIT", "UPTIME", "MEMORY", "MEM-LIMIT", "CPU-LIMIT", "SOCKET", "ERROR"}
	if strings.Join(header, " ") != strings.Join(want, " ") {
		t.Fatalf("header %q, want %q", header, want)
	}
	row := strings.Fields(lines[1])
	if got := strings.Join(row, " "); got != "metadata running 42 1 0 - 1m30s 20.1MiB 256.0MiB 1.5 /run/flotilla/metadata.sock" {
		t.Errorf("metadata's row is %q", got)
	}
	row = strings.Fields(lines[2])
	if len(row) < len(header)-1 || strings.Join(row[:11], " ") != "cri failed - 3 0 oom-killed - - - - -" ||
		strings.Join(row[11:], " ") != "start: no such file" {
		t.Errorf("cri's row is %q: want a dash for each empty column and the error last", lines[2])
	}
}

func TestServicesAsJSONYAMLAndNames(t *testing.T) {
	sock := serveAdmin(t, &fakeAdmin{services: twoServices})
	out, _, code := runCode(t, "--address", sock, "services", "-o", "json")
	var got []map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
		t.Fatalf("-o json: exit %d, %v:\n%s", code, err, out)
	}
	if len(got) != 2 || got[0]["name"] != "metadata" || got[0]["pid"] != float64(42) || got[0]["memoryBytes"] != float64(21076377) ||
		got[1]["pid"] != float64(0) || got[1]["startedAt"] != nil {
		t.Errorf("-o json:\n%s", out)
	}
	out, _, _ = runCode(t, "--address", sock, "services", "-o", "yaml")
	for _, want := range []string{"- name: metadata\n  state: running\n  pid: 42\n", "  memoryLimitBytes: 268435456\n", "- name: cri\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("-o yaml lacks %q:\n%s", want, out)
		}
	}
	if out, _, _ = runCode(t, "--address", sock, "ps", "-q"); out != "metadata\ncri\n" {
		t.Errorf("-q printed %q, want the names", out)
	}
	if _, errOut, code := runCode(t, "--address", sock, "services", "-o", "xml"); code != exitUsage || !strings.Contains(errOut, "table, json or yaml") {
		t.Errorf("-o xml: exit %d, %q; want a usage error", code, errOut)
	}
}

func TestExitCodesAndHelp(t *testing.T) {
	sock := serveAdmin(t, &fakeAdmin{})
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--help"}, 0, ""},
		{[]string{"services", "--help"}, 0, ""},
		{[]string{"help", "logs"}, 0, ""},
		{[]string{}, exitUsage, "a command is needed"},
		{[]string{"no-such-command"}, exitUsage, `unknown command "no-such-command"`},
		{[]string{"services", "--no-such-flag"}, exitUsage, "unknown flag"},
		{[]string{"services", "extra"}, exitUsage, "takes no arguments"},
		{[]string{"restart"}, exitUsage, "Run 'flotilla restart --help'"},
		{[]string{"logs", "-n", "x", "metadata"}, exitUsage, "invalid argument"},
		{[]string{"--address", sock, "restart", "metadata"}, exitFailed, "Unimplemented"},
		{[]string{"--address", filepath.Join(t.TempDir(), "none.sock"), "services"}, exitFailed, "no flotillad socket at"},
	} {
		_, errOut, code := runCode(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.says) {
			t.Errorf("flotilla %s: exit %d, stderr %q; want exit %d saying %q", strings.Join(c.args, " "), code, errOut, c.code, c.says)
		}
	}
}

func TestVersionIsSemantic(t *testing.T) {
	out, _, code := runCode(t, "--version")
	if code != 0 || !regexp.MustCompile(`^flotilla version \d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?\n$`).MatchString(out) {
		t.Errorf("--version: exit %d, %q", code, out)
	}
	defer func(v string) { version.Version = v }(version.Version)
	version.Version = "v0.3.1"
	if out, _, _ := runCode(t, "--version"); out != "flotilla version 0.3.1\n" {
		t.Errorf("with the version package's Version v0.3.1: %q", out)
	}
}

func TestAddressFromFlagThenEnvironment(t *testing.T) {
	for _, c := range []struct {
		flag, flotilla, containerd, want string
	}{
		{"/a.sock", "/b.sock", "/c.sock", "/a.sock"},
		{"", "/b.sock", "/c.sock", "/b.sock"},
		{"", "", "/c.sock", "/c.sock"},
		{"", "", "", defaultAddress},
	} {
		t.Setenv("FLOTILLA_ADDRESS", c.flotilla)
		t.Setenv("CONTAINERD_ADDRESS", c.containerd)
		g := &globals{address: c.flag}
		if got := g.socket(); got != c.want {
			t.Errorf("--address %q, FLOTILLA_ADDRESS %q, CONTAINERD_ADDRESS %q: %s, want %s", c.flag, c.flotilla, c.containerd, got, c.want)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_flotilla", "zsh": "#compdef flotilla", "fish": "complete -c flotilla"} {
		out, errOut, code := runCode(t, "completion", shell)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("completion %s: exit %d, %s; lacks %q", shell, code, errOut, want)
		}
	}
}

func TestNewLinesFindsWhereTheLastWindowEnded(t *testing.T) {
	seen := []string{"a", "b", "c"}
	for _, c := range []struct {
		window []string
		want   string
	}{
		{[]string{"a", "b", "c"}, ""},
		{[]string{"a", "b", "c", "d", "e"}, "d e"},
		{[]string{"b", "c", "d"}, "d"}, // the window starts part-way into what was seen
		{[]string{"c", "d"}, "d"},
		{[]string{"x", "y"}, "x y"}, // no overlap: more came than a window holds
		{[]string{}, ""},
	} {
		if got := strings.Join(newLines(seen, c.window), " "); got != c.want {
			t.Errorf("newLines(%q, %q) = %q, want %q", seen, c.window, got, c.want)
		}
	}
	if got := newLines(nil, []string{"a"}); len(got) != 1 {
		t.Errorf("with nothing seen, every line is new: %q", got)
	}
}

// lockedBuffer is a bytes.Buffer a command writes while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLogsFollowPrintsLinesAsTheyCome(t *testing.T) {
	f := &fakeAdmin{logs: []string{"one", "two"}}
	sock := serveAdmin(t, f)
	// Interrupted (as by Ctrl-C) once the new lines are out, or after a
	// while on a machine too loaded to poll in time.
	ctx, cancel := context.WithTimeout(context.Background(), 30*logsPollInterval)
	defer cancel()
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		_, err := execute(ctx, []string{"--address", sock, "logs", "-f", "-n", "1", "metadata"}, out, io.Discard)
		done <- err
	}()
	for !strings.Contains(out.String(), "two") && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	f.log("three", "four")
	for !strings.Contains(out.String(), "four") && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "two\nthree\nfour\n" {
		t.Errorf("logs -f -n 1 printed %q, want the last line and then the new ones", got)
	}
}

func TestTopFrameHasOneWordColumns(t *testing.T) {
	one, p99 := 12.5, 0.0042
	rows := []topRow{
		{Name: "gateway", State: "running", Pid: 10, CPUPercent: &one, MemoryBytes: 30 << 20},
		{Name: "metadata", State: "running", Pid: 11, Restarts: 2, CPUPercent: &one, MemoryBytes: 21 << 20, CallsPerSec: &one, P99Seconds: &p99, Errors: new(float64)},
		{Name: "cri", State: "failed"},
	}
	var buf bytes.Buffer
	if err := printTop(&buf, outputFlags{format: "table"}, "/run/flotilla/flotilla.sock", time.Second, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if !strings.HasPrefix(lines[0], "flotilla top") {
		t.Errorf("no title line: %q", lines[0])
	}
	want := map[string]string{
		"gateway":  "gateway running 10 0 12.5 30.0MiB - - -",
		"metadata": "metadata running 11 2 12.5 21.0MiB 12.5 4.20ms 0",
		"cri":      "cri failed - 0 - - - - -",
	}
	for _, l := range lines[3:] {
		f := strings.Fields(l)
		if got := strings.Join(f, " "); got != want[f[0]] {
			t.Errorf("row %q, want %q", got, want[f[0]])
		}
	}
	if c, ok := procCPUSeconds(1); !ok || c < 0 {
		t.Errorf("CPU seconds of pid 1: %v, %v", c, ok)
	}
}
