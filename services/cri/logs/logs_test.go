package logs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestLogLinesAreWrittenInCRIFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pod", "c.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := f.Stream("stdout"), f.Stream("stderr")
	// Lines arrive in pieces; a long line is split into partial entries.
	_, _ = stdout.Write([]byte("hel"))
	_, _ = stdout.Write([]byte("lo\nwor"))
	_, _ = stderr.Write([]byte("oops\n"))
	_, _ = stdout.Write([]byte("ld\n" + strings.Repeat("x", MaxLine+5) + "\ntail"))
	stdout.Flush()
	stderr.Flush()
	_ = f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"stdout F hello", "stderr F oops", "stdout F world", "stdout P " + strings.Repeat("x", MaxLine), "stdout F xxxxx", "stdout F tail"}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("log has %d lines, want %d:\n%s", len(lines), len(want), b)
	}
	ts := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z `)
	for i, l := range lines {
		if !ts.MatchString(l) {
			t.Fatalf("line %d has no RFC3339Nano timestamp: %q", i, l)
		}
		if got := ts.ReplaceAllString(l, ""); got != want[i] {
			t.Errorf("line %d: %q, want %q", i, got, want[i])
		}
	}
}

func TestReopenedLogWritesToANewFileAtThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	stdout := f.Stream("stdout")
	_, _ = stdout.Write([]byte("before\n"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	_, _ = stdout.Write([]byte("after\n"))
	stdout.Flush()
	_ = f.Close()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "before") || strings.Contains(string(old), "after") || !strings.Contains(string(cur), "stdout F after") {
		t.Fatalf("rotated file %q, new file %q", old, cur)
	}
}
