package imagevolume

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestImageSubPathStaysInsideTheImage(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(root, "hostetc")); err != nil {
		t.Fatal(err)
	}
	if p, err := imageSubPath(root, "etc"); err != nil || p != filepath.Join(root, "etc") {
		t.Errorf("sub-path etc: %q, %v", p, err)
	}
	for _, sub := range []string{"../etc", "etc/../../x", "/etc", "missing", "hostetc"} {
		if _, err := imageSubPath(root, sub); !errdefs.IsInvalidArgument(err) {
			t.Errorf("sub-path %q: %v, want InvalidArgument", sub, err)
		}
	}
}
