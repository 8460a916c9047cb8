package image

import (
	"encoding/base64"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestAuthConfigGivesCredentialsForItsServerOnly(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	for _, tc := range []struct {
		name       string
		auth       *runtime.AuthConfig
		host       string
		user, pass string
	}{
		{"none", nil, "r.example", "", ""},
		{"user and password", &runtime.AuthConfig{Username: "alice", Password: "pw"}, "r.example", "alice", "pw"},
		{"base64 auth", &runtime.AuthConfig{Auth: b64}, "r.example", "alice", "s3cret"},
		{"identity token", &runtime.AuthConfig{IdentityToken: "tok"}, "r.example", "", "tok"},
		{"matching server with scheme", &runtime.AuthConfig{Username: "a", Password: "p", ServerAddress: "https://r.example:5000"}, "r.example:5000", "a", "p"},
		{"matching server without scheme", &runtime.AuthConfig{Username: "a", Password: "p", ServerAddress: "r.example:5000"}, "r.example:5000", "a", "p"},
		{"other server", &runtime.AuthConfig{Username: "a", Password: "p", ServerAddress: "https://other.example"}, "r.example", "", ""},
		{"docker hub's index address", &runtime.AuthConfig{Username: "a", Password: "p", ServerAddress: "https://index.docker.io/v1/"}, "registry-1.docker.io", "a", "p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, p, err := parseAuth(tc.auth, tc.host)
			if err != nil || u != tc.user || p != tc.pass {
				t.Fatalf("parseAuth = %q, %q, %v; want %q, %q", u, p, err, tc.user, tc.pass)
			}
		})
	}
	if _, _, err := parseAuth(&runtime.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("nocolon"))}, "h"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("auth without a colon: %v, want InvalidArgument", err)
	}
}

func TestPullsWithOtherCredentialsDoNotShare(t *testing.T) {
	a := pullKey("docker.io/library/busybox:latest", &runtime.AuthConfig{Username: "a", Password: "1"})
	b := pullKey("docker.io/library/busybox:latest", &runtime.AuthConfig{Username: "a", Password: "2"})
	if a == b {
		t.Fatal("pulls with different passwords share a key")
	}
	if pullKey("x", nil) != pullKey("x", &runtime.AuthConfig{}) {
		t.Fatal("no auth and empty auth should share a pull")
	}
}

func TestImageRecordNamesOfAPull(t *testing.T) {
	target := ocispec.Descriptor{Digest: digest.FromString("manifest")}
	for _, tc := range []struct{ ref, digestRef, tag string }{
		{"busybox", "docker.io/library/busybox@" + target.Digest.String(), "docker.io/library/busybox:latest"},
		{"r.example:5000/a/b:1", "r.example:5000/a/b@" + target.Digest.String(), "r.example:5000/a/b:1"},
		{"r.example/a@" + digest.FromString("x").String(), "r.example/a@" + digest.FromString("x").String(), ""},
	} {
		named, err := reference.ParseDockerRef(tc.ref)
		if err != nil {
			t.Fatal(err)
		}
		d, tag := repoDigestAndTag(named, target)
		if d != tc.digestRef || tag != tc.tag {
			t.Errorf("%s: digest ref %q tag %q; want %q %q", tc.ref, d, tag, tc.digestRef, tc.tag)
		}
	}
}

func TestImageUserIsUIDOrName(t *testing.T) {
	for _, tc := range []struct {
		user string
		uid  *int64
		name string
	}{
		{"", nil, ""}, {"0", ptr(0), ""}, {"1000:1000", ptr(1000), ""}, {"nobody", nil, "nobody"}, {"www:www", nil, "www"},
	} {
		uid, name := imageUser(tc.user)
		if (uid == nil) != (tc.uid == nil) || uid != nil && uid.Value != *tc.uid || name != tc.name {
			t.Errorf("imageUser(%q) = %v, %q", tc.user, uid, name)
		}
	}
}

func ptr(v int64) *int64 { return &v }
