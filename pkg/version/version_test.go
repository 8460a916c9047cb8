package version

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// semver is semver.org's regular expression for a version (no "v").
var semver = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

func TestUnsetVersionIsTheReleaseInVERSION(t *testing.T) {
	b, err := os.ReadFile("../../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	release := strings.TrimSpace(string(b))
	if !semver.MatchString(release) {
		t.Fatalf("VERSION holds %q, not a semantic version", release)
	}
	if want := release + "+unknown"; Version != want {
		t.Errorf("Version without -ldflags is %q; want %q (bump it with VERSION)", Version, want)
	}
}

func TestScriptPrintsASemanticVersion(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	out, err := exec.Command("../../script/version").Output()
	if err != nil {
		t.Fatal(err)
	}
	v := strings.TrimSpace(string(out))
	if !semver.MatchString(v) {
		t.Errorf("script/version printed %q, not a semantic version", v)
	}
}
