package blobs

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func openTestStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "content"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// writeIngest opens a writer on ref and writes data to it, leaving it open.
func writeIngest(t testing.TB, s *Store, ref string, data []byte, opts ...content.WriterOpt) content.Writer {
	t.Helper()
	w, err := s.Writer(context.Background(), append([]content.WriterOpt{content.WithRef(ref)}, opts...)...)
	if err != nil {
		t.Fatalf("open writer %q: %v", ref, err)
	}
	if _, err := w.Write(data); err != nil {
		w.Close()
		t.Fatalf("write to %q: %v", ref, err)
	}
	return w
}

func commitBlob(t testing.TB, s *Store, data []byte, labels map[string]string) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	w := writeIngest(t, s, "commit-"+d.String(), data)
	var opts []content.Opt
	if labels != nil {
		opts = append(opts, content.WithLabels(labels))
	}
	if err := w.Commit(context.Background(), int64(len(data)), d, opts...); err != nil {
		t.Fatalf("commit %s: %v", d, err)
	}
	return d
}

// blobFiles lists every file under blobs/, relative to it.
func blobFiles(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	base := filepath.Join(root, "blobs")
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(base, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ingestDirs(t testing.TB, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "ingest"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestCommitWithWrongDigestFailsPreconditionAndPublishesNothing(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	data := []byte("the bytes actually written")
	wrong := digest.FromString("something else")

	w := writeIngest(t, s, "wrong-digest", data)
	err := w.Commit(ctx, int64(len(data)), wrong)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("commit with the wrong digest gave %v, want FailedPrecondition as containerd", err)
	}
	if files := blobFiles(t, s.Root()); len(files) != 0 {
		t.Fatalf("a failed commit left blobs behind: %v", files)
	}
	for _, d := range []digest.Digest{wrong, digest.FromBytes(data)} {
		if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) {
			t.Fatalf("Info(%s) after failed commit gave %v, want NotFound", d, err)
		}
	}
	// The data is kept for another try, and the writer no longer holds the ref.
	st, err := s.Status(ctx, "wrong-digest")
	if err != nil || st.Offset != int64(len(data)) {
		t.Fatalf("ingest after failed commit: %+v, %v; want it kept at offset %d", st, err, len(data))
	}
	w = writeIngest(t, s, "wrong-digest", nil)
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data)); err != nil {
		t.Fatalf("retrying the commit with the right digest: %v", err)
	}
}

func TestCommitWithWrongSizeFailsPreconditionAndPublishesNothing(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	data := []byte("twelve bytes")
	for _, size := range []int64{int64(len(data)) - 1, int64(len(data)) + 1} {
		w := writeIngest(t, s, "wrong-size", data)
		err := w.Commit(ctx, size, digest.FromBytes(data))
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("commit of %d bytes as %d gave %v, want FailedPrecondition", len(data), size, err)
		}
		if files := blobFiles(t, s.Root()); len(files) != 0 {
			t.Fatalf("a failed commit left blobs behind: %v", files)
		}
		if err := s.Abort(ctx, "wrong-size"); err != nil {
			t.Fatal(err)
		}
	}
	w := writeIngest(t, s, "negative-size", data)
	if err := w.Commit(ctx, -1, ""); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("commit with a negative size gave %v, want InvalidArgument", err)
	}
	if files := blobFiles(t, s.Root()); len(files) != 0 {
		t.Fatalf("a failed commit left blobs behind: %v", files)
	}
}

func TestCommitOfExistingContentIsAlreadyExistsAndDiscardsIngest(t *testing.T) {
	ctx := context.Background()
	data := []byte("committed twice")
	for _, tc := range []struct {
		name     string
		expected digest.Digest
	}{
		{"with expected digest", digest.FromBytes(data)},
		{"without expected digest", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			d := commitBlob(t, s, data, map[string]string{"keep": "me"})
			before := blobFiles(t, s.Root())

			w := writeIngest(t, s, "second", data)
			err := w.Commit(ctx, int64(len(data)), tc.expected)
			if !errdefs.IsAlreadyExists(err) {
				t.Fatalf("second commit of %s gave %v, want AlreadyExists", d, err)
			}
			if _, err := s.Status(ctx, "second"); !errdefs.IsNotFound(err) {
				t.Fatalf("ingest after AlreadyExists: %v, want it removed (NotFound)", err)
			}
			if dirs := ingestDirs(t, s.Root()); len(dirs) != 0 {
				t.Fatalf("ingest directories left after AlreadyExists: %v", dirs)
			}
			if after := blobFiles(t, s.Root()); !slices.Equal(before, after) {
				t.Fatalf("blobs changed from %v to %v", before, after)
			}
			info, err := s.Info(ctx, d)
			if err != nil || info.Labels["keep"] != "me" {
				t.Fatalf("existing blob after a second commit: %+v, %v; want it and its labels untouched", info, err)
			}
			// The ref is free again.
			w = writeIngest(t, s, "second", nil)
			w.Close()
		})
	}
}

func TestWriterForExistingDigestIsAlreadyExists(t *testing.T) {
	s := openTestStore(t)
	data := []byte("already here")
	d := commitBlob(t, s, data, nil)
	_, err := s.Writer(context.Background(), content.WithRef("again"),
		content.WithDescriptor(ocispec.Descriptor{Digest: d, Size: int64(len(data))}))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Writer for a committed digest gave %v, want AlreadyExists", err)
	}
	if dirs := ingestDirs(t, s.Root()); len(dirs) != 0 {
		t.Fatalf("Writer that failed with AlreadyExists created ingests: %v", dirs)
	}
}

func TestUpdateLabelsByFieldPath(t *testing.T) {
	ctx := context.Background()
	initial := map[string]string{"a": "1", "b": "2"}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		paths  []string
		want   map[string]string
	}{
		{"no paths replaces all", map[string]string{"c": "3"}, nil, map[string]string{"c": "3"}},
		{"labels replaces all", map[string]string{"c": "3"}, []string{"labels"}, map[string]string{"c": "3"}},
		{"labels with none clears", nil, []string{"labels"}, nil},
		{"one key is set", map[string]string{"a": "new", "c": "ignored"}, []string{"labels.a"}, map[string]string{"a": "new", "b": "2"}},
		{"one key is added", map[string]string{"c": "3"}, []string{"labels.c"}, map[string]string{"a": "1", "b": "2", "c": "3"}},
		{"absent key is removed", nil, []string{"labels.a"}, map[string]string{"b": "2"}},
		{"empty value removes", map[string]string{"b": ""}, []string{"labels.b"}, map[string]string{"a": "1"}},
		{"dotted key", map[string]string{"x.y/z": "v"}, []string{"labels.x.y/z"}, map[string]string{"a": "1", "b": "2", "x.y/z": "v"}},
		{"several keys", map[string]string{"a": "9", "c": "3"}, []string{"labels.a", "labels.c", "labels.b"}, map[string]string{"a": "9", "c": "3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			d := commitBlob(t, s, []byte("labelled"), initial)
			got, err := s.Update(ctx, content.Info{Digest: d, Labels: tc.labels}, tc.paths...)
			if err != nil {
				t.Fatalf("Update(%v): %v", tc.paths, err)
			}
			if !mapsEqual(got.Labels, tc.want) {
				t.Fatalf("Update(%v) returned labels %v, want %v", tc.paths, got.Labels, tc.want)
			}
			info, err := s.Info(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if !mapsEqual(info.Labels, tc.want) {
				t.Fatalf("after Update(%v) Info has labels %v, want %v", tc.paths, info.Labels, tc.want)
			}
			if info.Size != int64(len("labelled")) || !info.UpdatedAt.Equal(got.UpdatedAt) {
				t.Fatalf("Info %+v disagrees with Update's answer %+v", info, got)
			}
		})
	}
}

func TestUpdateRefusesOtherFieldsAndChangesNothing(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	initial := map[string]string{"a": "1"}
	d := commitBlob(t, s, []byte("immutable but for labels"), initial)
	for _, paths := range [][]string{
		{"size"}, {"digest"}, {"createdat"}, {"updatedat"}, {""}, {"labels."}, {"label.a"}, {"Labels.a"},
		{"labels.a", "size"},
	} {
		_, err := s.Update(ctx, content.Info{Digest: d, Size: 1, Labels: map[string]string{"a": "changed"}}, paths...)
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("Update(%q) gave %v, want InvalidArgument", paths, err)
		}
	}
	info, err := s.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if !mapsEqual(info.Labels, initial) {
		t.Fatalf("refused updates changed labels to %v", info.Labels)
	}
	if _, err := s.Update(ctx, content.Info{Digest: digest.FromString("absent"), Labels: initial}); !errdefs.IsNotFound(err) {
		t.Fatalf("Update of an absent blob gave %v, want NotFound", err)
	}
}

func TestLabelsOverContainerdLimitAreInvalidArgument(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	// containerd allows 4096 bytes of key and value together.
	big := map[string]string{"k": strings.Repeat("v", 4096)}
	justFits := map[string]string{"k": strings.Repeat("v", 4095)}
	data := []byte("with big labels")

	w := writeIngest(t, s, "big-labels", data)
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data), content.WithLabels(big)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("commit with a %d-byte label gave %v, want InvalidArgument", 4097, err)
	}
	if files := blobFiles(t, s.Root()); len(files) != 0 {
		t.Fatalf("commit refused for its labels left blobs: %v", files)
	}
	if _, err := s.Writer(ctx, content.WithRef("")); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Writer with an empty ref gave %v, want InvalidArgument", err)
	}

	d := commitBlob(t, s, data, justFits)
	if _, err := s.Update(ctx, content.Info{Digest: d, Labels: big}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Update with a 4097-byte label gave %v, want InvalidArgument", err)
	}
	if _, err := s.Update(ctx, content.Info{Digest: d, Labels: big}, "labels.k"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Update(labels.k) with a 4097-byte label gave %v, want InvalidArgument", err)
	}
	if _, err := s.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"": "v"}}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Update with an empty label key gave %v, want InvalidArgument", err)
	}
	info, err := s.Info(ctx, d)
	if err != nil || !mapsEqual(info.Labels, justFits) {
		t.Fatalf("refused label updates changed the blob: %v, %v", info.Labels, err)
	}
}

func TestWalkFilters(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	d1 := commitBlob(t, s, []byte("one"), map[string]string{"x": "y", "team": "a"})
	d2 := commitBlob(t, s, []byte("two"), map[string]string{"x": "z", "team": "a"})
	d3 := commitBlob(t, s, []byte("three"), nil)

	walk := func(filters ...string) ([]digest.Digest, error) {
		var got []digest.Digest
		err := s.Walk(ctx, func(info content.Info) error {
			got = append(got, info.Digest)
			return nil
		}, filters...)
		slices.Sort(got)
		return got, err
	}
	sorted := func(ds ...digest.Digest) []digest.Digest { slices.Sort(ds); return ds }
	for _, tc := range []struct {
		filters []string
		want    []digest.Digest
	}{
		{nil, sorted(d1, d2, d3)},
		{[]string{"labels.x==y"}, sorted(d1)},
		{[]string{"labels.x"}, sorted(d1, d2)},
		{[]string{"labels.x!=y"}, sorted(d2, d3)},
		{[]string{"labels.team==a,labels.x==z"}, sorted(d2)},
		{[]string{"labels.x==y", "labels.x==z"}, sorted(d1, d2)},
		{[]string{"digest==" + d3.String()}, sorted(d3)},
		{[]string{"digest==" + digest.FromString("absent").String()}, nil},
		{[]string{"size==5"}, sorted(d3)},
		{[]string{`labels.x~="^[yz]$"`}, sorted(d1, d2)},
	} {
		got, err := walk(tc.filters...)
		if err != nil {
			t.Errorf("Walk(%q): %v", tc.filters, err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Walk(%q) found %v, want %v", tc.filters, got, tc.want)
		}
	}
	for _, bad := range []string{"labels.x==", "==y", "labels.x=~y", "labels.\"x"} {
		// A bad regexp is not among them: containerd's filters log it and
		// match nothing, and this store keeps that behaviour.
		if _, err := walk(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Walk(%q) gave %v, want InvalidArgument", bad, err)
		}
		if _, err := s.ListStatuses(ctx, bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ListStatuses(%q) gave %v, want InvalidArgument", bad, err)
		}
	}
}

func TestWalkSkipsFilesThatAreNotBlobs(t *testing.T) {
	s := openTestStore(t)
	d := commitBlob(t, s, []byte("real"), nil)
	dir := filepath.Join(s.Root(), "blobs", "sha256")
	for _, name := range []string{"tmp-123", strings.Repeat("A", 64), ".hidden"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(s.Root(), "blobs", "md5"), 0o755); err != nil {
		t.Fatal(err)
	}
	var got []digest.Digest
	if err := s.Walk(context.Background(), func(info content.Info) error {
		got = append(got, info.Digest)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []digest.Digest{d}) {
		t.Fatalf("Walk found %v, want only %s", got, d)
	}
}

func TestDeleteUnknownIsNotFound(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	if err := s.Delete(ctx, digest.FromString("never committed")); !errdefs.IsNotFound(err) {
		t.Fatalf("Delete of an unknown digest gave %v, want NotFound", err)
	}
	d := commitBlob(t, s, []byte("deleted"), map[string]string{"a": "b"})
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("second Delete gave %v, want NotFound", err)
	}
	// A record of the deleted blob must not come back with a new commit.
	commitBlob(t, s, []byte("deleted"), nil)
	info, err := s.Info(ctx, d)
	if err != nil || len(info.Labels) != 0 {
		t.Fatalf("recommitted blob has %+v, %v; want no labels from before the delete", info, err)
	}
	if err := s.Abort(ctx, "no such ingest"); !errdefs.IsNotFound(err) {
		t.Fatalf("Abort of an unknown ref gave %v, want NotFound", err)
	}
	if _, err := s.Status(ctx, "no such ingest"); !errdefs.IsNotFound(err) {
		t.Fatalf("Status of an unknown ref gave %v, want NotFound", err)
	}
}

var badDigests = []string{
	"",
	"sha256",
	"sha256:",
	":" + strings.Repeat("a", 64),
	"sha256:abc",
	"sha256:" + strings.Repeat("A", 64),
	"sha256:" + strings.Repeat("a", 63) + "/",
	"sha256:../../../../etc/passwd",
	"sha256:" + strings.Repeat("a", 62) + "..",
	"sha256/../x:" + strings.Repeat("a", 64),
	"../sha256:" + strings.Repeat("a", 64),
	"md5:d41d8cd98f00b204e9800998ecf8427e",
	"SHA256:" + strings.Repeat("a", 64),
	"sha256:" + strings.Repeat("a", 65),
	"sha512:" + strings.Repeat("a", 64),
	"sha256:" + strings.Repeat("a", 64) + "\n",
}

func TestBadDigestsAreInvalidArgument(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	for _, str := range badDigests {
		d := digest.Digest(str)
		if _, err := ParseDigest(str); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ParseDigest(%q) gave %v, want InvalidArgument", str, err)
		}
		if _, err := s.Info(ctx, d); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Info(%q) gave %v, want InvalidArgument", str, err)
		}
		if _, err := s.Update(ctx, content.Info{Digest: d}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Update(%q) gave %v, want InvalidArgument", str, err)
		}
		if err := s.Delete(ctx, d); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Delete(%q) gave %v, want InvalidArgument", str, err)
		}
		if _, err := s.ReaderAt(ctx, ocispec.Descriptor{Digest: d}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ReaderAt(%q) gave %v, want InvalidArgument", str, err)
		}
		if str != "" {
			if _, err := s.Writer(ctx, content.WithRef("r"), content.WithDescriptor(ocispec.Descriptor{Digest: d})); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Writer(digest %q) gave %v, want InvalidArgument", str, err)
			}
			w := writeIngest(t, s, "bad-expected", []byte("x"))
			if err := w.Commit(ctx, 1, d); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Commit(expected %q) gave %v, want InvalidArgument", str, err)
			}
		}
	}
	if files := blobFiles(t, s.Root()); len(files) != 0 {
		t.Fatalf("bad digests left blobs: %v", files)
	}
}

func TestWriterRefusesBadRefsAndSizes(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	for _, ref := range []string{"", "a\x00b", "line\nbreak", "\x7f", "bad\xffutf8", strings.Repeat("r", MaxRefLen+1)} {
		if _, err := s.Writer(ctx, content.WithRef(ref)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Writer(ref %q) gave %v, want InvalidArgument", ref, err)
		}
		if _, err := s.Status(ctx, ref); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Status(ref %q) gave %v, want InvalidArgument", ref, err)
		}
		if err := s.Abort(ctx, ref); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Abort(ref %q) gave %v, want InvalidArgument", ref, err)
		}
	}
	if _, err := s.Writer(ctx, content.WithRef("neg"), content.WithDescriptor(ocispec.Descriptor{Size: -1})); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Writer with size -1 gave %v, want InvalidArgument", err)
	}
	if dirs := ingestDirs(t, s.Root()); len(dirs) != 0 {
		t.Fatalf("refused writers created ingests: %v", dirs)
	}
	// Refs that look like paths are fine: they never become one.
	for _, ref := range []string{"../../escape", "/abs/path", "a/./b", "ns/1/layer-sha256:abc"} {
		w := writeIngest(t, s, ref, []byte(ref))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		st, err := s.Status(ctx, ref)
		if err != nil || st.Ref != ref || st.Offset != int64(len(ref)) {
			t.Fatalf("Status(%q) = %+v, %v", ref, st, err)
		}
	}
	if got := len(ingestDirs(t, s.Root())); got != 4 {
		t.Fatalf("%d ingest directories for 4 refs", got)
	}
}

func TestSecondWriterOnRefIsUnavailable(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	w := writeIngest(t, s, "busy", []byte("first"))
	if _, err := s.Writer(ctx, content.WithRef("busy")); !errdefs.IsUnavailable(err) {
		t.Fatalf("second Writer on a held ref gave %v, want Unavailable", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := s.Abort(short, "busy"); !errdefs.IsUnavailable(err) {
		t.Fatalf("Abort of a held ref gave %v, want Unavailable", err)
	}
	if st, err := s.Status(ctx, "busy"); err != nil || st.Offset != int64(len("first")) {
		t.Fatalf("refused Abort changed the ingest: %+v, %v", st, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(ctx, "busy"); err != nil {
		t.Fatalf("Abort after Close: %v", err)
	}
}

// A remote client's Close reaches the server after the client has moved on;
// an Abort sent right after it must not fail for the writer still closing.
func TestAbortWaitsForAWriterOnItsWayOut(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	w := writeIngest(t, s, "closing", []byte("data"))
	go func() {
		time.Sleep(50 * time.Millisecond)
		w.Close()
	}()
	if err := s.Abort(ctx, "closing"); err != nil {
		t.Fatalf("Abort while the writer was closing: %v", err)
	}
	if _, err := s.Status(ctx, "closing"); !errdefs.IsNotFound(err) {
		t.Fatalf("ingest after Abort: %v, want NotFound", err)
	}
	// The same for a writer that ends in a commit.
	data := []byte("committed meanwhile")
	w = writeIngest(t, s, "committing", data)
	go func() {
		time.Sleep(50 * time.Millisecond)
		w.Commit(ctx, int64(len(data)), digest.FromBytes(data))
	}()
	if err := s.Abort(ctx, "committing"); !errdefs.IsNotFound(err) {
		t.Fatalf("Abort of an ingest committed while it waited: %v, want NotFound", err)
	}
	if _, err := s.Info(ctx, digest.FromBytes(data)); err != nil {
		t.Fatalf("the commit the Abort waited for: %v", err)
	}
}

func TestReaderReadsCommittedBytes(t *testing.T) {
	s := openTestStore(t)
	data := bytes.Repeat([]byte("0123456789"), 100_000) // crosses parallelHashMin
	d := commitBlob(t, s, data, nil)
	got, err := content.ReadBlob(context.Background(), s, ocispec.Descriptor{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("blob read back differs from what was committed")
	}
	fi, err := os.Stat(s.blobPath(d))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("committed blob is writable: %v", fi.Mode())
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Commit makes the data read-only just before publishing it; a crash right
// then must not leave an ingest that cannot be written again.
func TestIngestLeftReadOnlyByACrashedCommitResumes(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	data := []byte("read-only after a crash")
	w := writeIngest(t, s, "ro", data[:4])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.ingestDir("ro"), "data")
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	w = writeIngest(t, s, "ro", data[4:])
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o200 == 0 {
		t.Fatalf("resumed ingest data is still %v; without root it could not have been reopened", fi.Mode())
	}
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
}

func TestBlobCommittedWithoutLabelsHasItsCommitTimesAndNoRecord(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	data := []byte("no labels, no record")
	w := writeIngest(t, s, "plain", data)
	time.Sleep(10 * time.Millisecond) // the data's mtime is well before the commit
	before := time.Now()
	d := digest.FromBytes(data)
	if err := w.Commit(ctx, int64(len(data)), d); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if _, err := s.meta.get(d); err != errNoMetaRecord {
		t.Fatalf("record of a blob committed without labels: %v; want none (a write to meta.db per blob)", err)
	}
	info, err := s.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if info.CreatedAt.Before(before) || info.CreatedAt.After(after) || !info.UpdatedAt.Equal(info.CreatedAt) || info.Labels != nil {
		t.Fatalf("info %+v; want created and updated at the commit, between %s and %s, no labels", info, before, after)
	}
	if _, err := s.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"later": "yes"}}, "labels.later"); err != nil {
		t.Fatal(err)
	}
	info2, err := s.Info(ctx, d)
	if err != nil || info2.Labels["later"] != "yes" || !info2.CreatedAt.Equal(info.CreatedAt) {
		t.Fatalf("after a label update: %+v, %v; want the label and the same creation time", info2, err)
	}
}

func TestBlobCommittedWithoutLabelsDropsAStaleRecord(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	data := []byte("committed again after a crash")
	d := digest.FromBytes(data)
	// What a crash between removing the blob and its record leaves.
	if err := s.meta.put(d, metaRecord{createdAt: time.Now(), updatedAt: time.Now(), labels: map[string]string{"stale": "yes"}}); err != nil {
		t.Fatal(err)
	}
	commitBlob(t, s, data, nil)
	info, err := s.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels != nil {
		t.Fatalf("blob committed without labels has labels %v from a stale record", info.Labels)
	}
}
