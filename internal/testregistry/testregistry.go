// Package testregistry runs Debian's docker-registry on a free port (on
// loopback unless asked otherwise) for tests and benchmarks, and pushes
// testimage images to it over plain HTTP with the registry API's
// monolithic blob upload, so that pulls in a test never leave the machine.
package testregistry

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// startTimeout bounds how long a registry may take to answer on /v2/.
const startTimeout = 30 * time.Second

// Options says where a registry keeps its files and how it is configured.
type Options struct {
	// Dir holds the registry's config.yml and registry.log; required.
	Dir string
	// Storage is the root of the registry's blob and manifest storage,
	// Dir/data when empty. Registries given the same Storage serve the
	// same images, so one can take pushes while another authenticates.
	Storage string
	// Config is YAML appended to the generated configuration, such as an
	// auth section.
	Config string
	// IP is the address to listen on, 127.0.0.1 when empty: a test that
	// needs a registry a daemon does not treat as local names another.
	IP string
	// Port is the port to listen on, a free one when 0.
	Port int
	// TLSCert and TLSKey, PEM files, make the registry serve HTTPS (as a
	// registry that is not on loopback must for containerd's resolver);
	// the helpers here then push over HTTPS without checking the
	// certificate.
	TLSCert, TLSKey string
}

// Registry is a running docker-registry.
type Registry struct {
	// Host is the registry's ip:port.
	Host string

	scheme string
	client *http.Client

	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// Binary finds Debian's docker-registry on $PATH.
func Binary() (string, error) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return "", fmt.Errorf("testregistry: install Debian's docker-registry: %w", err)
	}
	return bin, nil
}

// Start runs a registry and returns once it answers on /v2/ (200, or 401
// for one that authenticates), or with an error when it exits, ctx ends
// or it does not answer in 30 seconds. Close stops it.
func Start(ctx context.Context, o Options) (*Registry, error) {
	if o.Dir == "" {
		return nil, errors.New("testregistry: Options.Dir is required")
	}
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if o.Storage == "" {
		o.Storage = filepath.Join(o.Dir, "data")
	}
	if o.IP == "" {
		o.IP = "127.0.0.1"
	}
	// A free port, released for the registry to take: a small race with
	// other listeners on the machine, acceptable for tests.
	l, err := net.Listen("tcp", net.JoinHostPort(o.IP, strconv.Itoa(o.Port)))
	if err != nil {
		return nil, fmt.Errorf("testregistry: find a free port: %w", err)
	}
	host := l.Addr().String()
	_ = l.Close()
	scheme, client, tlsCfg := "http", http.DefaultClient, ""
	if o.TLSCert != "" {
		scheme = "https"
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		tlsCfg = fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", o.TLSCert, o.TLSKey)
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s%s",
		o.Storage, host, tlsCfg, o.Config)
	cfgPath := filepath.Join(o.Dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("testregistry: %w", err)
	}
	r := &Registry{Host: host, scheme: scheme, client: client, log: filepath.Join(o.Dir, "registry.log"), done: make(chan struct{})}
	logf, err := os.Create(r.log)
	if err != nil {
		return nil, fmt.Errorf("testregistry: %w", err)
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("testregistry: start docker-registry: %w", err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(startTimeout)
	for {
		if r.answers() {
			return r, nil
		}
		select {
		case <-r.done:
			return nil, fmt.Errorf("testregistry: docker-registry exited during startup:\n%s", r.Log())
		case <-ctx.Done():
			r.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.Close()
			return nil, fmt.Errorf("testregistry: docker-registry not answering on %s after %s:\n%s", host, startTimeout, r.Log())
		}
	}
}

// answers tells whether the registry serves its API root yet; one that
// authenticates answers 401 until it is given credentials.
func (r *Registry) answers() bool {
	resp, err := r.client.Get(r.scheme + "://" + r.Host + "/v2/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
}

// Log is what the registry has written to its log so far.
func (r *Registry) Log() string {
	b, _ := os.ReadFile(r.log)
	return string(b)
}

// Close stops the registry and waits for it to exit; its files stay.
func (r *Registry) Close() {
	if r == nil || r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Push uploads img's layers and its config (changed by edit, when given)
// with a new single-platform manifest as repo:tag, and returns the
// reference to pull it by.
func (r *Registry) Push(img *testimage.Image, edit func(*ocispec.ImageConfig), repo, tag string) (string, error) {
	cfgBlob, ok := img.Blob(img.Config.Digest)
	if !ok {
		return "", fmt.Errorf("testregistry: image %s has no config blob", img.Name)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		return "", fmt.Errorf("testregistry: image %s config: %w", img.Name, err)
	}
	if edit != nil {
		edit(&cfg.Config)
	}
	blobs := map[digest.Digest][]byte{}
	for _, l := range img.Layers {
		b, ok := img.Blob(l.Digest)
		if !ok {
			return "", fmt.Errorf("testregistry: image %s has no layer %s", img.Name, l.Digest)
		}
		blobs[l.Digest] = b
	}
	refs, err := r.PushImage(cfg, img.Layers, blobs, repo, tag)
	if err != nil {
		return "", err
	}
	return refs[0], nil
}

// PushAsIs uploads img's blobs and its own manifest, unchanged, as
// repo:tag, so that the image keeps its manifest digest, and returns the
// reference to pull it by.
func (r *Registry) PushAsIs(img *testimage.Image, repo, tag string) (string, error) {
	base := r.scheme + "://" + r.Host + "/v2/" + repo
	for _, d := range img.Blobs() {
		if d.Digest == img.Manifest.Digest {
			continue
		}
		b, _ := img.Blob(d.Digest)
		if err := r.uploadBlob(base, d.Digest, b); err != nil {
			return "", err
		}
	}
	mf, ok := img.Blob(img.Manifest.Digest)
	if !ok {
		return "", fmt.Errorf("testregistry: image %s has no manifest blob", img.Name)
	}
	if err := r.putManifest(base, tag, mf); err != nil {
		return "", fmt.Errorf("testregistry: put manifest %s:%s: %w", repo, tag, err)
	}
	return r.Host + "/" + repo + ":" + tag, nil
}

// PushImage uploads layers (their content in layerBlobs) and cfg with one
// single-platform manifest, tagged repo:tag for every tag, and returns the
// references in the order of tags.
func (r *Registry) PushImage(cfg ocispec.Image, layers []ocispec.Descriptor, layerBlobs map[digest.Digest][]byte, repo string, tags ...string) ([]string, error) {
	cfgBlob, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("testregistry: image config: %w", err)
	}
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBlob), Size: int64(len(cfgBlob))}
	mf, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    layers,
	})
	if err != nil {
		return nil, fmt.Errorf("testregistry: manifest: %w", err)
	}
	base := r.scheme + "://" + r.Host + "/v2/" + repo
	blobs := map[digest.Digest][]byte{cfgDesc.Digest: cfgBlob}
	for _, l := range layers {
		b, ok := layerBlobs[l.Digest]
		if !ok {
			return nil, fmt.Errorf("testregistry: no content for layer %s", l.Digest)
		}
		blobs[l.Digest] = b
	}
	for d, blob := range blobs {
		if err := r.uploadBlob(base, d, blob); err != nil {
			return nil, err
		}
	}
	var refs []string
	for _, tag := range tags {
		if err := r.putManifest(base, tag, mf); err != nil {
			return nil, fmt.Errorf("testregistry: put manifest %s:%s: %w", repo, tag, err)
		}
		refs = append(refs, r.Host+"/"+repo+":"+tag)
	}
	return refs, nil
}

// uploadBlob is the registry API's monolithic upload: POST for an upload
// location, then PUT of the whole blob with its digest.
func (r *Registry) uploadBlob(base string, d digest.Digest, blob []byte) error {
	resp, err := r.client.Post(base+"/blobs/uploads/", "", nil)
	if err != nil {
		return fmt.Errorf("testregistry: start upload of %s: %w", d, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("testregistry: start upload of %s: %s", d, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("testregistry: upload location of %s: %w", d, err)
	}
	u := (&url.URL{Scheme: "http", Host: r.Host}).ResolveReference(loc)
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodPut, u.String(), bytes.NewReader(blob))
	if err != nil {
		return fmt.Errorf("testregistry: upload %s: %w", d, err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = r.client.Do(req)
	if err != nil {
		return fmt.Errorf("testregistry: upload %s: %w", d, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("testregistry: upload %s: %s", d, resp.Status)
	}
	return nil
}

// PushBlob uploads blob to repo under its digest.
func (r *Registry) PushBlob(repo string, blob []byte) error {
	return r.uploadBlob(r.scheme+"://"+r.Host+"/v2/"+repo, digest.FromBytes(blob), blob)
}

// PutManifest stores body, a manifest or an index of mediaType, as repo:tag
// (or under its digest when tag is one); the blobs it names must be pushed
// first.
func (r *Registry) PutManifest(repo, tag, mediaType string, body []byte) error {
	if err := r.putManifestAs(r.scheme+"://"+r.Host+"/v2/"+repo, tag, mediaType, body); err != nil {
		return fmt.Errorf("testregistry: put manifest %s:%s: %w", repo, tag, err)
	}
	return nil
}

func (r *Registry) putManifest(base, tag string, mf []byte) error {
	return r.putManifestAs(base, tag, ocispec.MediaTypeImageManifest, mf)
}

func (r *Registry) putManifestAs(base, tag, mediaType string, mf []byte) error {
	req, err := http.NewRequest(http.MethodPut, base+"/manifests/"+tag, bytes.NewReader(mf))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return errors.New(resp.Status)
	}
	return nil
}
