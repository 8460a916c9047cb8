package blobs

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzParseDigest checks that a digest a client sends either is refused as
// InvalidArgument or names a file directly inside blobs/<alg>/, and that the
// store's digest-taking calls agree with ParseDigest.
func FuzzParseDigest(f *testing.F) {
	for _, s := range badDigests {
		f.Add(s)
	}
	f.Add(digest.FromString("x").String())
	f.Add(digest.SHA384.FromString("x").String())
	f.Add(digest.SHA512.FromString("x").String())
	f.Add("sha256:" + strings.Repeat("0", 64))
	f.Add("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564")
	f.Add("sha256:" + strings.Repeat("a", 61) + "/..")
	f.Add("sha256:..%2f" + strings.Repeat("a", 59))

	ctx := context.Background()
	s, err := Open(filepath.Join(f.TempDir(), "content"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })

	f.Fuzz(func(t *testing.T, in string) {
		d, err := ParseDigest(in)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ParseDigest(%q) failed with %v, not InvalidArgument", in, err)
			}
			if _, err := s.Info(ctx, digest.Digest(in)); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ParseDigest refuses %q but Info gave %v", in, err)
			}
			if err := s.Delete(ctx, digest.Digest(in)); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ParseDigest refuses %q but Delete gave %v", in, err)
			}
			return
		}
		if d.String() != in {
			t.Fatalf("ParseDigest(%q) = %q, want the input unchanged", in, d)
		}
		if strings.Contains(in, "/") || strings.Contains(in, `\`) || strings.Contains(in, "..") || strings.ContainsRune(in, 0) {
			t.Fatalf("ParseDigest accepted %q, which could name a path", in)
		}
		switch d.Algorithm() {
		case digest.SHA256, digest.SHA384, digest.SHA512:
		default:
			t.Fatalf("ParseDigest accepted %q with algorithm %q", in, d.Algorithm())
		}
		if _, err := hex.DecodeString(d.Encoded()); err != nil || len(d.Encoded()) != d.Algorithm().Size()*2 {
			t.Fatalf("ParseDigest accepted %q whose encoding is not %d hex digits", in, d.Algorithm().Size()*2)
		}
		p := s.blobPath(d)
		dir := filepath.Join(s.Root(), "blobs", d.Algorithm().String())
		if filepath.Dir(p) != dir || filepath.Base(p) != d.Encoded() || filepath.Clean(p) != p {
			t.Fatalf("digest %q maps to %q, not to a file directly in %q", in, p, dir)
		}
		if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) {
			t.Fatalf("Info(%q) on an empty store gave %v, want NotFound", in, err)
		}
		if _, err := s.ReaderAt(ctx, ocispec.Descriptor{Digest: d}); !errdefs.IsNotFound(err) {
			t.Fatalf("ReaderAt(%q) on an empty store gave %v, want NotFound", in, err)
		}
	})
}

// FuzzValidateRef checks that refs are refused as InvalidArgument or accepted
// as printable UTF-8 of bounded length, and that an accepted ref, whatever it
// looks like, gets an ingest directory directly inside ingest/ that Abort
// removes again.
func FuzzValidateRef(f *testing.F) {
	for _, s := range []string{
		"", "ref", "../../../etc/passwd", "/abs", "a/../../b", "..", ".", "a\x00b", "tab\there",
		"\x7f", "\xff\xfe", "layer-sha256:" + strings.Repeat("a", 64), "ns/1/lease/l/ref",
		strings.Repeat("r", MaxRefLen), strings.Repeat("r", MaxRefLen+1), "ünïcödé ref", "\u2028",
	} {
		f.Add(s)
	}

	ctx := context.Background()
	// On tmpfs when there is one: every accepted ref costs a few fsyncs.
	dir, err := os.MkdirTemp("/dev/shm", "flotilla-fuzz")
	if err != nil {
		dir = f.TempDir()
	} else {
		f.Cleanup(func() { os.RemoveAll(dir) })
	}
	s, err := Open(filepath.Join(dir, "content"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	ingestRoot := filepath.Join(s.Root(), "ingest")

	f.Fuzz(func(t *testing.T, ref string) {
		err := ValidateRef(ref)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ValidateRef(%q) failed with %v, not InvalidArgument", ref, err)
			}
			if _, err := s.Writer(ctx, content.WithRef(ref)); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ValidateRef refuses %q but Writer gave %v", ref, err)
			}
			if _, err := s.Status(ctx, ref); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ValidateRef refuses %q but Status gave %v", ref, err)
			}
			return
		}
		if ref == "" || len(ref) > MaxRefLen || !utf8.ValidString(ref) {
			t.Fatalf("ValidateRef accepted %q", ref)
		}
		for _, r := range ref {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("ValidateRef accepted %q with control character %U", ref, r)
			}
		}
		dir := s.ingestDir(ref)
		if filepath.Dir(dir) != ingestRoot {
			t.Fatalf("ref %q maps to %q, not to a directory directly in %q", ref, dir, ingestRoot)
		}
		if b, err := hex.DecodeString(filepath.Base(dir)); err != nil || len(b) != 32 {
			t.Fatalf("ref %q maps to ingest directory %q, not a sha256 hex name", ref, filepath.Base(dir))
		}

		w, err := s.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatalf("Writer(%q): %v", ref, err)
		}
		if _, err := w.Write([]byte(ref)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		st, err := s.Status(ctx, ref)
		if err != nil || st.Ref != ref || st.Offset != int64(len(ref)) {
			t.Fatalf("Status(%q) after a write = %+v, %v", ref, st, err)
		}
		if err := s.Abort(ctx, ref); err != nil {
			t.Fatalf("Abort(%q): %v", ref, err)
		}
		if dirs := ingestDirs(t, s.Root()); len(dirs) != 0 {
			t.Fatalf("Abort(%q) left ingest directories %v", ref, dirs)
		}
	})
}
