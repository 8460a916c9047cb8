package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	reg := startProgressRegistry(t)
	ref := reg.push(t, img, "busybox", "test")

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

// progressRegistry is Debian's docker-registry serving on host.
type progressRegistry struct {
	host string // host:port
}

// startProgressRegistry runs docker-registry on 127.0.0.1 with storage in a
// temp dir, or skips the test when it is not installed.
func startProgressRegistry(t *testing.T) *progressRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Skip("docker-registry not found: install Debian's docker-registry to test pulls")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	_ = l.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), host)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("docker-registry output:\n%s", out.String())
		}
	})
	waitFor(t, 30*time.Second, "docker-registry answering on "+host, func() bool {
		resp, err := http.Get("http://" + host + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return &progressRegistry{host: host}
}

// push uploads img as repo:tag through the distribution API and returns
// the image's reference.
func (r *progressRegistry) push(t *testing.T, img *testimage.Image, repo, tag string) string {
	t.Helper()
	base := "http://" + r.host + "/v2/" + repo
	for _, d := range img.Blobs() {
		if d.Digest == img.Manifest.Digest {
			continue
		}
		blob, _ := img.Blob(d.Digest)
		resp, err := http.Post(base+"/blobs/uploads/", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start blob upload: %s", resp.Status)
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		u := (&url.URL{Scheme: "http", Host: r.host}).ResolveReference(loc)
		q := u.Query()
		q.Set("digest", d.Digest.String())
		u.RawQuery = q.Encode()
		req, _ := http.NewRequest(http.MethodPut, u.String(), bytes.NewReader(blob))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload blob %s: %s", d.Digest, resp.Status)
		}
	}
	mf, _ := img.Blob(img.Manifest.Digest)
	req, _ := http.NewRequest(http.MethodPut, base+"/manifests/"+tag, bytes.NewReader(mf))
	req.Header.Set("Content-Type", img.Manifest.MediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put manifest: %s", resp.Status)
	}
	return r.host + "/" + repo + ":" + tag
}
