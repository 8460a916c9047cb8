package server

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestLogLinesAreWrittenInCRIFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pod", "c.log")
	lg, err := newContainerLog(path)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := lg.writers()
	// Lines arrive in pieces; a long line is split into partial entries.
	_, _ = stdout.Write([]byte("hel"))
	_, _ = stdout.Write([]byte("lo\nwor"))
	_, _ = stderr.Write([]byte("oops\n"))
	_, _ = stdout.Write([]byte("ld\n" + strings.Repeat("x", maxLogLine+5) + "\ntail"))
	lg.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"stdout F hello", "stderr F oops", "stdout F world", "stdout P " + strings.Repeat("x", maxLogLine), "stdout F xxxxx", "stdout F tail"}
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

func TestContainerArgsMergeImageAndRequest(t *testing.T) {
	ep, cmd := []string{"/ep"}, []string{"c1"}
	for _, tc := range []struct {
		name          string
		command, args []string
		want          string
	}{
		{"image only", nil, nil, "/ep c1"},
		{"args replace the image command", nil, []string{"a"}, "/ep a"},
		{"command replaces entrypoint and command", []string{"sh"}, nil, "sh"},
		{"command and args", []string{"sh"}, []string{"-c", "x"}, "sh -c x"},
	} {
		got := strings.Join(containerArgs(&runtime.ContainerConfig{Command: tc.command, Args: tc.args}, ep, cmd), " ")
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
