package containerdroot

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// writeRoot writes a meta.db in containerd's layout, as containerd would:
// namespace team with one image and its two blobs, namespace empty with
// nothing.
func writeRoot(t *testing.T, root string, target ocispec.Descriptor, blobs map[digest.Digest][]byte) {
	t.Helper()
	path := filepath.Join(root, MetadataDB)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	varint := func(v int64) []byte {
		b := make([]byte, binary.MaxVarintLen64)
		return b[:binary.PutVarint(b, v)]
	}
	created, _ := time.Unix(1700000000, 0).UTC().MarshalBinary()
	err = db.Update(func(tx *bolt.Tx) error {
		v1, _ := tx.CreateBucketIfNotExists([]byte("v1"))
		if err := v1.Put([]byte("version"), varint(3)); err != nil {
			return err
		}
		if _, err := v1.CreateBucket([]byte("empty")); err != nil {
			return err
		}
		ns, _ := v1.CreateBucket([]byte("team"))
		nl, _ := ns.CreateBucket([]byte("labels"))
		_ = nl.Put([]byte("owner"), []byte("ops"))
		img, _ := ns.CreateBucket([]byte("images"))
		bb, _ := img.CreateBucket([]byte("docker.io/library/busybox:latest"))
		_ = bb.Put([]byte("createdat"), created)
		_ = bb.Put([]byte("updatedat"), created)
		tg, _ := bb.CreateBucket([]byte("target"))
		_ = tg.Put([]byte("digest"), []byte(target.Digest))
		_ = tg.Put([]byte("mediatype"), []byte(target.MediaType))
		_ = tg.Put([]byte("size"), varint(target.Size))
		il, _ := bb.CreateBucket([]byte("labels"))
		_ = il.Put([]byte("io.cri-containerd.image"), []byte("managed"))
		content, _ := ns.CreateBucket([]byte("content"))
		blob, _ := content.CreateBucket([]byte("blob"))
		for d, b := range blobs {
			r, _ := blob.CreateBucket([]byte(d))
			_ = r.Put([]byte("createdat"), created)
			_ = r.Put([]byte("size"), varint(int64(len(b))))
			l, _ := r.CreateBucket([]byte("labels"))
			_ = l.Put([]byte("containerd.io/gc.ref.content.l.0"), []byte("sha256:child"))
			if err := os.MkdirAll(filepath.Dir(BlobPath(root, d)), 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(BlobPath(root, d), b, 0o600); err != nil {
				return err
			}
		}
		_, err := content.CreateBucket([]byte("ingests"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestReadFindsEveryNamespaceImageAndBlob(t *testing.T) {
	root := t.TempDir()
	manifest, layer := []byte(`{"schemaVersion":2}`), []byte("layer bytes")
	target := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	writeRoot(t, root, target, map[digest.Digest][]byte{target.Digest: manifest, digest.FromBytes(layer): layer})

	nss, err := Read(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(nss) != 2 || nss[0].Name != "empty" || nss[1].Name != "team" {
		t.Fatalf("namespaces %+v, want empty and team", nss)
	}
	if len(nss[0].Images) != 0 || len(nss[0].Blobs) != 0 {
		t.Errorf("namespace empty has %d images, %d blobs", len(nss[0].Images), len(nss[0].Blobs))
	}
	team := nss[1]
	if team.Labels["owner"] != "ops" {
		t.Errorf("namespace labels %v", team.Labels)
	}
	if len(team.Images) != 1 {
		t.Fatalf("images %+v, want one", team.Images)
	}
	img := team.Images[0]
	if img.Name != "docker.io/library/busybox:latest" || img.Target.Digest != target.Digest || img.Target.MediaType != target.MediaType ||
		img.Target.Size != target.Size || img.Labels["io.cri-containerd.image"] != "managed" || !img.CreatedAt.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("image %+v, want busybox with the target, labels and time written", img)
	}
	if len(team.Blobs) != 2 {
		t.Fatalf("blobs %+v, want two", team.Blobs)
	}
	for _, b := range team.Blobs {
		data, err := os.ReadFile(BlobPath(root, b.Digest))
		if err != nil || digest.FromBytes(data) != b.Digest || int64(len(data)) != b.Size {
			t.Errorf("blob %s (size %d): its file reads %d bytes, %v", b.Digest, b.Size, len(data), err)
		}
		if b.Labels["containerd.io/gc.ref.content.l.0"] != "sha256:child" {
			t.Errorf("blob %s labels %v: the gc.ref label is lost", b.Digest, b.Labels)
		}
	}
}

func TestReadRefusesWhileContainerdHoldsTheLock(t *testing.T) {
	root := t.TempDir()
	writeRoot(t, root, ocispec.Descriptor{Digest: digest.FromString("x"), MediaType: ocispec.MediaTypeImageManifest, Size: 1}, nil)
	// containerd holds meta.db open for writing while it runs.
	db, err := bolt.Open(filepath.Join(root, MetadataDB), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Read(root); !errors.Is(err, ErrLocked) {
		t.Fatalf("Read of a locked meta.db: %v, want ErrLocked", err)
	}
}

func TestReadOfNoContainerdRootSaysWhere(t *testing.T) {
	_, err := Read(t.TempDir())
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read of an empty directory: %v", err)
	}
}
