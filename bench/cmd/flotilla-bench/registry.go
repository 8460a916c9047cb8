package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// registry is Debian's docker-registry serving plain HTTP on 127.0.0.1,
// started by the bench for the cri workloads: both daemons pull the same
// images from it, so neither pull goes further than loopback.
type registry struct {
	host string // 127.0.0.1:port
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startRegistry(ctx context.Context, dir string) (*registry, error) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return nil, fmt.Errorf("the cri workloads need a local registry: install Debian's docker-registry: %w", err)
	}
	// A free port, released for the registry to take: a small race with
	// other listeners on the machine, acceptable for a bench.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	host := l.Addr().String()
	_ = l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), host)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	r := &registry{host: host, log: filepath.Join(dir, "registry.log"), done: make(chan struct{})}
	logf, err := os.Create(r.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start docker-registry: %w", err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		select {
		case <-r.done:
			b, _ := os.ReadFile(r.log)
			return nil, fmt.Errorf("docker-registry exited during startup:\n%s", b)
		case <-ctx.Done():
			r.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("docker-registry not answering on %s after 30s", host)
		}
	}
}

func (r *registry) stop() {
	if r == nil || r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

// push uploads img's layers and its config (changed by edit, when given)
// with a new single-platform manifest as repo:tag, and returns the
// reference the daemons pull.
func (r *registry) push(img *testimage.Image, edit func(*ocispec.ImageConfig), repo, tag string) (string, error) {
	cfgBlob, ok := img.Blob(img.Config.Digest)
	if !ok {
		return "", fmt.Errorf("image %s has no config blob", img.Name)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		return "", fmt.Errorf("image config: %w", err)
	}
	if edit != nil {
		edit(&cfg.Config)
	}
	cfgBlob, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBlob), Size: int64(len(cfgBlob))}
	mf, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    img.Layers,
	})
	if err != nil {
		return "", err
	}
	base := "http://" + r.host + "/v2/" + repo
	blobs := map[digest.Digest][]byte{cfgDesc.Digest: cfgBlob}
	for _, l := range img.Layers {
		b, ok := img.Blob(l.Digest)
		if !ok {
			return "", fmt.Errorf("image %s has no layer %s", img.Name, l.Digest)
		}
		blobs[l.Digest] = b
	}
	for d, blob := range blobs {
		if err := r.uploadBlob(base, d, blob); err != nil {
			return "", err
		}
	}
	req, err := http.NewRequest(http.MethodPut, base+"/manifests/"+tag, bytes.NewReader(mf))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("put manifest %s:%s: %w", repo, tag, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("put manifest %s:%s: %s", repo, tag, resp.Status)
	}
	return r.host + "/" + repo + ":" + tag, nil
}

// uploadBlob is the registry API's monolithic upload: POST for an upload
// location, then PUT of the whole blob with its digest.
func (r *registry) uploadBlob(base string, d digest.Digest, blob []byte) error {
	resp, err := http.Post(base+"/blobs/uploads/", "", nil)
	if err != nil {
		return fmt.Errorf("start upload of %s: %w", d, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload of %s: %s", d, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	u := (&url.URL{Scheme: "http", Host: r.host}).ResolveReference(loc)
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodPut, u.String(), bytes.NewReader(blob))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("upload %s: %w", d, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("upload %s: %s", d, resp.Status)
	}
	return nil
}
