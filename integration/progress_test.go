package integration

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// flotillaOut runs the flotilla tool with its output in a pipe (not a
// terminal), failing the test on error.
func (d *daemon) flotillaOut(args ...string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "flotilla"), append([]string{"--address", d.address}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		d.t.Fatalf("flotilla %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// progressLines finds the lines the tool printed for a blob: its short
// digest, as the progress display writes it.
func progressLines(out string, d digest.Digest) []string {
	short := "sha256:" + d.Encoded()[:12]
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, short) {
			lines = append(lines, l)
		}
	}
	return lines
}

// requireLayerStates fails unless out shows each layer reaching each state.
func requireLayerStates(t *testing.T, out string, img *testimage.Image, states ...string) {
	t.Helper()
	for _, l := range img.Layers {
		lines := progressLines(out, l.Digest)
		for _, st := range states {
			found := false
			for _, line := range lines {
				if strings.HasPrefix(line, "layer ") && strings.HasSuffix(strings.TrimSpace(line), " "+st) {
					found = true
				}
			}
			if !found {
				t.Errorf("no %q line for layer %s; its lines: %q\nwhole output:\n%s", st, l.Digest, lines, out)
			}
		}
	}
}

func TestProgressOfImportShowsEveryLayerDoneAndUnpacked(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	img, archive := imageArchive(t, testimage.WithRandomLayer(8<<20, 1))

	out := d.flotillaOut("import", archive)
	t.Logf("flotilla import:\n%s", out)
	if strings.Contains(out, "\x1b[") {
		t.Errorf("output to a pipe holds terminal escapes:\n%q", out)
	}
	requireLayerStates(t, out, img, "done", "unpacked")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	want := fmt.Sprintf("imported %s: ", img.Name)
	if !strings.HasPrefix(last, want) || !strings.Contains(last, fmt.Sprintf("%d/%d layers unpacked into overlayfs", len(img.Layers), len(img.Layers))) {
		t.Errorf("last line %q is not the summary (%q..., %d/%d layers unpacked)", last, want, len(img.Layers), len(img.Layers))
	}

	check := d.mustCtr("images", "check")
	var row string
	for _, l := range strings.Split(check, "\n") {
		if strings.HasPrefix(l, img.Name+" ") {
			row = l
		}
	}
	// Columns: REF TYPE DIGEST STATUS SIZE UNPACKED, the last true or false.
	if f := strings.Fields(row); row == "" || !strings.Contains(row, " complete ") || f[len(f)-1] != "true" {
		t.Errorf("ctr images check does not report %s complete and unpacked:\n%s", img.Name, check)
	}
}

func TestProgressOfPullShowsEveryLayer(t *testing.T) {
	d := newDaemon(t).start()
	if _, err := testimage.BusyboxPath(); err != nil {
		t.Skip(err)
	}
	img, err := testimage.Busybox(testimage.WithRandomLayer(8<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	reg := startPodRegistry(t)
	ref := reg.push(t, img, nil, "busybox", "test")

	out := d.flotillaOut("pull", "--plain-http", ref)
	t.Logf("flotilla pull:\n%s", out)
	requireLayerStates(t, out, img, "done", "unpacked")
	for _, l := range img.Layers {
		if len(progressLines(out, l.Digest)) < 2 {
			t.Errorf("layer %s has fewer than 2 progress lines (a start and an end)", l.Digest)
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "pulled "+ref+": ") {
		t.Errorf("last line %q is not the pull's summary", last)
	}
}
