package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func ptr(v float64) *float64 { return &v }

// sampleReport is a complete run of a few rows: one met, one not, one
// failed, a memory row with its RSS beside it, one without a target.
func sampleReport() *report {
	return &report{
		Date: time.Date(2026, 12, 7, 14, 5, 0, 0, time.UTC), Commit: "abc1234", Complete: true,
		Host: "linux/amd64, 2 CPUs, kernel 6.1", Load: "0.50 at the start, 0.70 at the end", Go: "go1.26.8", Iterations: 5, Calls: 200, Runs: 10,
		Daemons: []daemonInfo{{Name: "containerd", Version: "2.4.2"}, {Name: "flotilla", Version: "abc1234"}},
		Rows: []row{
			{Name: "ingest", Title: "ingest of a 100 MiB blob", Unit: "ms", Ratio: ptr(0.95), Target: &target{1.0, 9},
				Stats: map[string]stats{"containerd": {N: 5, Median: 400}, "flotilla": {N: 5, Median: 380}}},
			{Name: "memory-idle", Title: "memory idle: PSS", Unit: "MiB", Ratio: ptr(1.804), Target: &target{1.5, 9},
				Stats: map[string]stats{"containerd": {N: 5, Median: 50.25}, "flotilla": {N: 5, Median: 90.66}}},
			{Name: "memory-idle-rss", Title: "memory idle: RSS", Unit: "MiB", Ratio: ptr(3.4),
				Stats: map[string]stats{"containerd": {N: 5, Median: 56}, "flotilla": {N: 5, Median: 190.4}}},
			{Name: "unpack", Title: "import + unpack, random layers", Unit: "ms", Target: &target{0.8, 3},
				Stats:  map[string]stats{"containerd": {N: 5, Median: 608}},
				Errors: map[string]string{"flotilla": "unpack: boom"}},
			{Name: "namespaces", Title: "routed unary call", Unit: "µs", Ratio: ptr(1.3), Target: &target{1.3, 9},
				Stats: map[string]stats{"containerd": {N: 1000, Median: 200}, "flotilla": {N: 1000, Median: 260}}},
		},
	}
}

func TestReadmeTableIsGeneratedFromTheReport(t *testing.T) {
	got := readmeBlock(sampleReport(), "bench/results/2026-12-07-1405-abc1234.md")
	want := readmeBegin + "\n" +
		"Figures of [`2026-12-07-1405-abc1234.md`](bench/results/2026-12-07-1405-abc1234.md): commit abc1234, Flotilla abc1234, 2026-12-07, linux/amd64, 2 CPUs, kernel 6.1, load average 0.50 at the start, 0.70 at the end, 5 iterations per workload.\n\n" +
		"| workload | containerd | Flotilla | Flotilla/containerd | target | met |\n|---|---:|---:|---:|---|---|\n" +
		"| ingest of a 100 MiB blob | 400 ms | 380 ms | 0.95 | ≤ 1.00 | yes |\n" +
		"| memory idle: PSS | 50.2 MiB | 90.7 MiB | 1.80 | ≤ 1.50 | **no** |\n" +
		"| memory idle: RSS | 56.0 MiB | 190 MiB | 3.40 | — |  |\n" +
		"| import + unpack, random layers | 608 ms | error | n/a | ≤ 0.80 (issue 3) | n/a |\n" +
		"| routed unary call | 200 µs | 260 µs | 1.30 | ≤ 1.30 | yes |\n"
	if !strings.HasPrefix(got, want) {
		t.Fatalf("table:\n%s\nwant it to start:\n%s", got, want)
	}
	for _, line := range []string{"Met (2): ingest, namespaces.", "Not met (2): memory-idle, unpack.", readmeEnd + "\n"} {
		if !strings.Contains(got, line) {
			t.Errorf("block lacks %q:\n%s", line, got)
		}
	}
	if !strings.HasSuffix(got, readmeEnd+"\n") {
		t.Errorf("block does not end with the end marker:\n%s", got)
	}
}

func TestReplaceBlockKeepsTheRestOfTheReadme(t *testing.T) {
	readme := "# Flotilla\n\n## Performance\n\nintro\n\n" + readmeBegin + "\nold table\n" + readmeEnd + "\n\nafter\n"
	got, err := replaceBlock(readme, readmeBegin+"\nnew table\n"+readmeEnd+"\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := "# Flotilla\n\n## Performance\n\nintro\n\n" + readmeBegin + "\nnew table\n" + readmeEnd + "\n\nafter\n"; got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	// An older begin marker (other wording) is still found by its prefix.
	again, err := replaceBlock(strings.Replace(readme, readmeBegin, "<!-- bench:begin (old words) -->", 1), "X\n")
	if err != nil || again != "# Flotilla\n\n## Performance\n\nintro\n\nX\n\nafter\n" {
		t.Fatalf("replaceBlock with an old marker = %q, %v", again, err)
	}
	if _, err := replaceBlock("# no markers\n", "X\n"); err == nil {
		t.Fatal("a README without markers was accepted")
	}
}

func TestNewestCompleteReportIsChosen(t *testing.T) {
	dir := t.TempDir()
	old := sampleReport()
	old.Date = old.Date.Add(-24 * time.Hour)
	newer := sampleReport()
	partial := sampleReport()
	partial.Date, partial.Complete = newer.Date.Add(time.Hour), false
	for _, rep := range []*report{old, newer, partial} {
		if _, err := writeResults(dir, rep); err != nil {
			t.Fatal(err)
		}
	}
	got, path, err := newestReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Date.Equal(newer.Date) || filepath.Base(path) != "2026-12-07-1405-abc1234.json" {
		t.Fatalf("newest complete report: %s at %v", path, got.Date)
	}
	if _, err := os.Stat(filepath.Join(dir, "2026-12-07-1505-abc1234-partial.md")); err != nil {
		t.Errorf("the partial run's report is not named as one: %v", err)
	}
	// What was written reads back the same: the README is made from it.
	if readmeBlock(got, "x.md") != readmeBlock(newer, "x.md") {
		t.Error("the report does not survive its JSON file")
	}
	if _, _, err := newestReport(t.TempDir()); err == nil {
		t.Error("an empty results directory gave a report")
	}
}

func TestUpdateReadmeRewritesOnlyTheBlock(t *testing.T) {
	dir := t.TempDir()
	if _, err := writeResults(filepath.Join(dir, "bench", "results"), sampleReport()); err != nil {
		t.Fatal(err)
	}
	readme := filepath.Join(dir, "README.md")
	if err := os.WriteFile(readme, []byte("intro\n"+readmeBegin+"\n"+readmeEnd+"\noutro\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := updateReadme(readme, filepath.Join(dir, "bench", "results")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(readme)
	want := "intro\n" + readmeBlock(sampleReport(), "bench/results/2026-12-07-1405-abc1234.md") + "outro\n"
	if string(b) != want {
		t.Fatalf("README:\n%s\nwant:\n%s", b, want)
	}
}

// The README's table is the newest committed complete report's: a report
// added without `-readme`, or a table edited by hand, fails here.
func TestReadmeMatchesTheNewestReport(t *testing.T) {
	dir := filepath.Join(repoRoot(), "bench", "results")
	rep, path, err := newestReport(dir)
	if err != nil {
		t.Skipf("no complete report yet: %v", err)
	}
	readme, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(repoRoot(), strings.TrimSuffix(path, ".json")+".md")
	if want := readmeBlock(rep, filepath.ToSlash(rel)); !strings.Contains(string(readme), want) {
		t.Fatalf("README.md's performance table is not the one of %s: run `go run ./bench/cmd/flotilla-bench -readme`", rel)
	}
}

func TestBinaryNoteWhenBinariesAreOfOtherCode(t *testing.T) {
	for _, tc := range []struct {
		commit, version string
		note            bool
	}{
		{"abc1234", "abc1234", false},
		{"abc1234", "v0.3-2-gabc1234", false},
		{"abc1234-dirty", "abc1234-dirty", false},
		{"abc1234", "abc1234-dirty", true},
		{"abc1234", "def5678", true},
		{"unknown", "def5678", false},
	} {
		if got := binaryNote(tc.commit, tc.version) != ""; got != tc.note {
			t.Errorf("binaryNote(%s, %s) noted = %v, want %v", tc.commit, tc.version, got, tc.note)
		}
	}
}
