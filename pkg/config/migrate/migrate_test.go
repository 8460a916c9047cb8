package migrate

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/flotilla-project/flotilla/pkg/config"
)

// migrated converts a fixture and reads the result back as Flotilla does.
func migrated(t *testing.T, fixture string) (*Result, *config.Config, map[string]any) {
	t.Helper()
	b, err := os.ReadFile("testdata/" + fixture)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Containerd(b, fixture)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(r.Config)
	if err != nil {
		t.Fatalf("the converted configuration does not load: %v\n%s", err, r.Config)
	}
	cri, err := config.OptionsMap(c.Services["cri"].Options)
	if err != nil {
		t.Fatal(err)
	}
	return r, c, cri
}

func at(m map[string]any, path string) string {
	var v any = m
	for _, p := range strings.Split(path, ".") {
		v = v.(map[string]any)[p]
	}
	return fmt.Sprint(v)
}

func hasNote(notes []string, parts ...string) bool {
	for _, n := range notes {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(n, p)
		}
		if all {
			return true
		}
	}
	return false
}

func TestVersion2CarriesCRIRegistriesCNIAndProxySnapshotters(t *testing.T) {
	r, c, cri := migrated(t, "containerd-v2.toml")
	for path, want := range map[string]string{
		"sandbox_image":              "registry.example:5000/pause:3.9",
		"snapshotter":                "stargz",
		"max_concurrent_downloads":   "5",
		"restrict_oom_score_adj":     "true",
		"stream_server_port":         "10010",
		"cni.bin_dirs":               "[/usr/lib/cni]",
		"cni.conf_dir":               "/etc/cni/net.d",
		"registry.config_path":       "/etc/containerd/certs.d",
		"insecure_registries":        "[registry.example:5000]",
		"runtimes.kata.runtime_type": "io.containerd.kata.v2",
	} {
		if got := at(cri, path); got != want {
			t.Errorf("cri %s = %s; want %s", path, got, want)
		}
	}
	if c.Snapshotters["stargz"].Address != "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock" || c.Snapshotters["nydus"].Address == "" {
		t.Errorf("snapshotters %+v; want stargz and nydus as remote ones", c.Snapshotters)
	}
	if c.GRPC.GID != 994 || c.Debug.Level != "warn" || c.Metrics.Address != "127.0.0.1:1338" {
		t.Errorf("grpc gid %d, debug level %q, metrics %q", c.GRPC.GID, c.Debug.Level, c.Metrics.Address)
	}
	if c.Root != "/var/lib/flotilla" {
		t.Errorf("root %q; containerd's root is not Flotilla's", c.Root)
	}
	for _, n := range [][]string{
		{"SystemdCgroup = true", "cgroupfs"},
		{"oom_score = -999", "not carried over"},
		{"pause_threshold = 0.05", "gc_schedule"},
	} {
		if !hasNote(r.Notes, n...) {
			t.Errorf("no note saying %q; notes:\n%s", n, strings.Join(r.Notes, "\n"))
		}
	}
	if hasNote(r.Notes, "sandbox_image") || hasNote(r.Notes, "enable_selinux") || hasNote(r.Notes, "root =") {
		t.Errorf("a note on what was carried over or is containerd's default:\n%s", strings.Join(r.Notes, "\n"))
	}
	if !strings.Contains(string(r.Config), `# from plugins."io.containerd.grpc.v1.cri".sandbox_image`) {
		t.Errorf("the result does not say where sandbox_image came from:\n%s", r.Config)
	}
}

func TestVersion3CarriesTheSplitCRIPlugins(t *testing.T) {
	r, c, cri := migrated(t, "containerd-v3.toml")
	for path, want := range map[string]string{
		"sandbox_image":          "registry.example:5000/pause:3.10",
		"snapshotter":            "overlayfs",
		"restrict_oom_score_adj": "true",
		"cni.bin_dirs":           "[/usr/lib/cni]",
		"cni.conf_dir":           "/etc/cni/net.d",
		"registry.config_path":   "/etc/containerd/certs.d",
	} {
		if got := at(cri, path); got != want {
			t.Errorf("cri %s = %s; want %s", path, got, want)
		}
	}
	if c.Snapshotters["stargz"].Address == "" {
		t.Errorf("snapshotters %+v; want stargz as a remote one", c.Snapshotters)
	}
	overlay, _ := config.OptionsMap(c.Snapshotters["overlayfs"].Options)
	if fmt.Sprint(overlay["mount_options"]) != "[volatile]" {
		t.Errorf("overlayfs options %v; want containerd's mount_options", overlay)
	}
	if !hasNote(r.Notes, "enable_selinux = true", "not carried over") || len(r.Notes) != 1 {
		t.Errorf("notes:\n%s\nwant the one on enable_selinux", strings.Join(r.Notes, "\n"))
	}
}

// A file that says nothing but containerd's defaults has nothing to say
// about what Flotilla lacks.
func TestContainerdsOwnDefaultsLeaveNoNotes(t *testing.T) {
	for _, f := range []string{"containerd-1.6-v2.toml", "containerd-2.4-v4.toml"} {
		b, err := defaultFiles.ReadFile("defaults/" + f)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Containerd(b, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Notes) > 0 {
			t.Errorf("%s: notes on containerd's defaults:\n%s", f, strings.Join(r.Notes, "\n"))
		}
		if _, err := config.Parse(r.Config); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestVersionsContainerdDoesNotReadAreRefused(t *testing.T) {
	for doc, want := range map[string]string{
		"root = '/x'\n":             "version 1",
		"version = 9\n":             "version 9",
		"version = 2\n[plugins\n":   "containerd configuration",
		"version = 1\nroot = 'x'\n": "containerd config migrate",
	} {
		if _, err := Containerd([]byte(doc), "f"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v; want %q", doc, err, want)
		}
	}
}

// Runtime handlers and CDI spec directories carry over: a second runc
// with its own binary, its pod annotations, the default's name.
func TestRuntimeHandlersAndCDICarryOver(t *testing.T) {
	doc := `version = 3
[plugins.'io.containerd.cri.v1.runtime']
  cdi_spec_dirs = ['/etc/cdi', '/opt/cdi']
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'alt'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.alt]
      runtime_type = 'io.containerd.runc.v2'
      pod_annotations = ['example.com/*']
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.alt.options]
        BinaryName = '/usr/local/bin/runc'
        Root = '/run/alt'
`
	r, err := Containerd([]byte(doc), "inline")
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(r.Config)
	if err != nil {
		t.Fatalf("the converted configuration does not load: %v\n%s", err, r.Config)
	}
	cri, err := config.OptionsMap(c.Services["cri"].Options)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"default_runtime_name":            "alt",
		"cdi_spec_dirs":                   "[/etc/cdi /opt/cdi]",
		"runtimes.alt.runtime_type":       "io.containerd.runc.v2",
		"runtimes.alt.pod_annotations":    "[example.com/*]",
		"runtimes.alt.options.BinaryName": "/usr/local/bin/runc",
		"runtimes.alt.options.Root":       "/run/alt",
	} {
		if got := at(cri, path); got != want {
			t.Errorf("cri %s = %s; want %s\n%s", path, got, want, r.Config)
		}
	}
	if len(r.Notes) != 0 {
		t.Errorf("notes on what was carried over:\n%s", strings.Join(r.Notes, "\n"))
	}
}
