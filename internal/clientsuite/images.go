package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-project/flotilla/internal/testimage"
	"github.com/flotilla-project/flotilla/internal/testregistry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// epoch is every timestamp in the layers built here, so that two runs push
// the same digests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// layer is a layer blob with the digest of its uncompressed tar.
type layer struct {
	desc   ocispec.Descriptor
	diffID digest.Digest
	blob   []byte
}

// pushImages pushes stand-ins for the suite's images, under the
// repositories and tags the suite names them by. Each stand-in has what the suite's tests use of the
// original: busybox and pause are multi-platform indexes (the platform tests
// fetch all or some of their manifests; only linux/amd64's runs), with every
// busybox applet on PATH (the tests run sh, top, sleep, cat, stty, nc,
// ping...); volume-copy-up has several layers and a volume; volume-ownership
// has the "backup" user, a setuid /usr/bin/passwd and a bash.
func pushImages(reg *testregistry.Registry) error {
	applets, err := appletLayer()
	if err != nil {
		return err
	}
	base, err := testimage.Busybox(testimage.WithGzipLayer(applets, gzip.DefaultCompression))
	if err != nil {
		return err
	}
	var baseCfg ocispec.Image
	cfgBlob, _ := base.Blob(base.Config.Digest)
	if err := json.Unmarshal(cfgBlob, &baseCfg); err != nil {
		return fmt.Errorf("base image config: %w", err)
	}
	var baseLayers []layer
	for i, d := range base.Layers {
		b, _ := base.Blob(d.Digest)
		baseLayers = append(baseLayers, layer{desc: d, diffID: base.DiffIDs[i], blob: b})
	}
	// Another architecture's manifest: never run, only fetched, so a layer
	// of its own that says what it is will do.
	foreign := func(arch, variant string) (ocispec.Image, []layer, error) {
		l, err := gzipLayer(map[string]string{"etc/arch": arch + variant + "\n"})
		cfg := baseCfg
		cfg.Architecture, cfg.Variant = arch, variant
		return cfg, []layer{l}, err
	}
	arm64Cfg, arm64Layers, err := foreign("arm64", "v8")
	if err != nil {
		return err
	}
	s390xCfg, s390xLayers, err := foreign("s390x", "")
	if err != nil {
		return err
	}
	multi := func(amd64Cfg ocispec.Image, amd64Layers []layer) []platformImage {
		return []platformImage{{amd64Cfg, amd64Layers}, {arm64Cfg, arm64Layers}, {s390xCfg, s390xLayers}}
	}

	copyUp, err := gzipLayer(map[string]string{"test_dir/test_file": "test_content\n"})
	if err != nil {
		return err
	}
	copyUpCfg := baseCfg
	copyUpCfg.Config.Volumes = map[string]struct{}{"/test_dir": {}}
	owner, err := ownershipLayer()
	if err != nil {
		return err
	}
	ownerCfg := copyUpCfg
	pauseCfg := baseCfg
	pauseCfg.Config.Entrypoint, pauseCfg.Config.Cmd = []string{"/bin/sleep", "inf"}, nil
	// The one image the suite must fail to unpack on Linux.
	windowsCfg, windowsLayers, err := foreign("amd64", "")
	if err != nil {
		return err
	}
	windowsCfg.OS = "windows"

	withBase := func(extra ...layer) []layer { return append(append([]layer{}, baseLayers...), extra...) }
	for _, img := range []struct {
		repo, tag string
		imgs      []platformImage
	}{
		{"containerd/busybox", "1.36", multi(baseCfg, baseLayers)},
		{"containerd/alpine", "3.14.0", multi(baseCfg, baseLayers)},
		{"e2e-test-images/busybox", "1.29-2", multi(baseCfg, baseLayers)},
		{"pause", "3.10.2", multi(pauseCfg, baseLayers)},
		{"pause", "3.6", multi(pauseCfg, baseLayers)},
		{"containerd/volume-copy-up", "2.2", []platformImage{{copyUpCfg, withBase(copyUp)}}},
		{"containerd/volume-ownership", "2.1", []platformImage{{ownerCfg, withBase(owner)}}},
		{"containerd/windows/nanoserver", "1809", []platformImage{{windowsCfg, windowsLayers}}},
	} {
		if _, err := pushIndex(reg, img.repo, img.tag, img.imgs); err != nil {
			return err
		}
	}
	return nil
}

type platformImage struct {
	cfg    ocispec.Image
	layers []layer
}

// pushIndex pushes one manifest per platform image and an index of them as
// repo:tag, and returns the index's digest.
func pushIndex(reg *testregistry.Registry, repo, tag string, imgs []platformImage) (digest.Digest, error) {
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, img := range imgs {
		cfg := img.cfg
		cfg.RootFS = ocispec.RootFS{Type: "layers"}
		// A top layer naming the image gives each image snapshots of its
		// own, as the public images have: the suite checks whether an
		// image is unpacked by looking for its snapshots.
		named, err := gzipLayer(map[string]string{"etc/image-name": repo + ":" + tag + "\n"})
		if err != nil {
			return "", err
		}
		img.layers = append(append([]layer{}, img.layers...), named)
		mf := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
		for _, l := range img.layers {
			l, err := recompress(l, repo+":"+tag)
			if err != nil {
				return "", err
			}
			if err := reg.PushBlob(repo, l.blob); err != nil {
				return "", err
			}
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
			mf.Layers = append(mf.Layers, l.desc)
		}
		cfgBlob, err := json.Marshal(cfg)
		if err != nil {
			return "", err
		}
		if err := reg.PushBlob(repo, cfgBlob); err != nil {
			return "", err
		}
		mf.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBlob), Size: int64(len(cfgBlob))}
		mfBlob, err := json.Marshal(mf)
		if err != nil {
			return "", err
		}
		mfDigest := digest.FromBytes(mfBlob)
		if err := reg.PutManifest(repo, mfDigest.String(), ocispec.MediaTypeImageManifest, mfBlob); err != nil {
			return "", err
		}
		platform := cfg.Platform
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageManifest, Digest: mfDigest, Size: int64(len(mfBlob)), Platform: &platform,
		})
	}
	idxBlob, err := json.Marshal(idx)
	if err != nil {
		return "", err
	}
	if err := reg.PutManifest(repo, tag, ocispec.MediaTypeImageIndex, idxBlob); err != nil {
		return "", err
	}
	return digest.FromBytes(idxBlob), nil
}

const (
	busyboxPasswd = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nbin:x:2:2:bin:/bin:/bin/false\nsys:x:3:3:sys:/dev:/bin/false\nsync:x:4:100:sync:/bin:/bin/sync\nmail:x:8:8:mail:/var/spool/mail:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\noperator:x:37:37:Operator:/var:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
	busyboxGroup  = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nwheel:x:10:root\nmail:x:8:\nwww-data:x:33:\noperator:x:37:\nusers:x:100:\nnogroup:x:65534:\n"
)

// appletLayer links every applet of the host's busybox into /bin, beyond
// the handful testimage links.
func appletLayer() ([]byte, error) {
	out, err := exec.Command("busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	have := map[string]bool{}
	for _, a := range testimage.Applets {
		have[a] = true
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "etc/", "run/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	// busybox's own users: the suite runs as www-data (uid 33) by name.
	for _, f := range []struct{ name, body string }{{"etc/passwd", busyboxPasswd}, {"etc/group", busyboxGroup}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			return nil, err
		}
	}
	for _, a := range strings.Fields(string(out)) {
		if have[a] || a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ownershipLayer is what the user-namespace tests look for in
// volume-ownership: the user "backup" (uid 34) they run as, a setuid
// /usr/bin/passwd and a bash (busybox's sh stands in).
func ownershipLayer() (layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		mode int64
		body string
	}{
		{"etc/passwd", 0o644, busyboxPasswd + "backup:x:34:34:backup:/var/backups:/bin/sh\n"},
		{"etc/group", 0o644, busyboxGroup + "backup:x:34:\n"},
		{"bin/bash", 0o755, "#!/bin/sh\nexec /bin/sh \"$@\"\n"},
		{"usr/bin/passwd", 0o4755, "#!/bin/sh\nexit 0\n"},
		{"test_dir/test_file", 0o644, "test_content\n"},
	}
	for _, d := range []string{"etc/", "bin/", "usr/", "usr/bin/", "test_dir/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return layer{}, err
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.body)), ModTime: epoch}); err != nil {
			return layer{}, err
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			return layer{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	return gzipTar(buf.Bytes())
}

// gzipLayer is a layer of regular files (name → content) in directories
// it creates.
func gzipLayer(files map[string]string) (layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		parts := strings.Split(n, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
				return layer{}, err
			}
		}
		body := files[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(body)), ModTime: epoch}); err != nil {
			return layer{}, err
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			return layer{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	return gzipTar(buf.Bytes())
}

// recompress gives l a blob of its own to the image named name: the same
// tar (so the same snapshots), gzipped with name in the gzip header. The
// public images share no layer blobs, and the suite's garbage-collection
// tests count on that: content of one image must go when it goes.
func recompress(l layer, name string) (layer, error) {
	zr, err := gzip.NewReader(bytes.NewReader(l.blob))
	if err != nil {
		return layer{}, err
	}
	t, err := io.ReadAll(zr)
	if err != nil {
		return layer{}, err
	}
	return gzipTarNamed(t, name)
}

func gzipTar(t []byte) (layer, error) { return gzipTarNamed(t, "") }

func gzipTarNamed(t []byte, comment string) (layer, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return layer{}, err
	}
	zw.Comment = comment
	if _, err := zw.Write(t); err != nil {
		return layer{}, err
	}
	if err := zw.Close(); err != nil {
		return layer{}, err
	}
	blob := buf.Bytes()
	return layer{
		desc:   ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))},
		diffID: digest.FromBytes(t),
		blob:   blob,
	}, nil
}
