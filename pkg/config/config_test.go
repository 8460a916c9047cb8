package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseBytesReadsBinaryAndDecimalUnits(t *testing.T) {
	for in, want := range map[string]int64{
		"": 0, "1048576": 1 << 20, "256MiB": 256 << 20, "64M": 64 << 20, "1.5GiB": 3 << 29, "2KB": 2000, "12 mib": 12 << 20,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1", "0", "12XB", "MiB", "1e3"} {
		if _, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) accepted a bad size", bad)
		}
	}
}

func TestLoadRejectsBadServiceLimits(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte("[services.content]\ncpu_limit = \"half\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "services.content") {
		t.Fatalf("Load accepted cpu_limit = \"half\" (error %v)", err)
	}
	if err := os.WriteFile(p, []byte("[services.metadata]\nmemory_limit = \"64MiB\"\ncpu_limit = \"0.5\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	mem, cpus, err := c.Services["metadata"].Limits()
	if err != nil || mem != 64<<20 || cpus != 0.5 {
		t.Fatalf("metadata limits %d, %v, %v; want 64MiB, 0.5", mem, cpus, err)
	}
}

func TestLoadAcceptsAddressesOfServicesRunElsewhere(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.toml")
	toml := `
[services.content]
address = "/run/x/content.sock"
[services.metadata]
address = "/run/x/metadata.sock"
[services.snapshotter-overlayfs]
address = "/run/x/snapshotter-overlayfs.sock"
`
	if err := os.WriteFile(p, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"content": "/run/x/content.sock", "metadata": "/run/x/metadata.sock",
		"snapshotter-overlayfs": "/run/x/snapshotter-overlayfs.sock", "tasks": "",
	} {
		if got := c.External(name); got != want {
			t.Errorf("External(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestLoadRejectsAddressesThatCannotApply(t *testing.T) {
	for what, toml := range map[string]string{
		"an unknown service":            "[services.gateway]\naddress = '/x.sock'\n",
		"a snapshotter not configured":  "[services.snapshotter-zfs]\naddress = '/x.sock'\n",
		"a remote snapshotter twice":    "[snapshotters.r]\naddress = '/a.sock'\n[services.snapshotter-r]\naddress = '/b.sock'\n",
		"a disabled service":            "[services.tasks]\naddress = '/x.sock'\ndisabled = true\n",
		"limits flotillad cannot apply": "[services.content]\naddress = '/x.sock'\nmemory_limit = '64MiB'\n",
	} {
		p := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(p, []byte(toml), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "address") {
			t.Errorf("Load accepted an address for %s (error %v)", what, err)
		}
	}
}

func writeConfig(t *testing.T, doc string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultListsEveryOptionWithAComment(t *testing.T) {
	b, err := DefaultFile()
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, want := range []string{
		"sandbox_image = 'registry.k8s.io/pause:3.10'", "[services.cri.options.cni]", "bin_dirs = ", "conf_dir = '/etc/cni/net.d'",
		"[services.cri.options.registry]", "max_concurrent_downloads = 3", "gc_schedule = '10m'", "gc_delete_delay = ",
		"socket_dir = ''", "runc_root = ''", "mount_options = []", "memory_limit = ''", "cpu_limit = ''", "driver = 'native'",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config default lacks %q", want)
		}
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.Contains(l, " = ") && !strings.HasPrefix(l, "#") && (i == 0 || !strings.HasPrefix(lines[i-1], "#")) {
			t.Errorf("config default: %q has no comment above it", l)
		}
	}
}

func TestDefaultFileIsDeployConfig(t *testing.T) {
	want, err := DefaultFile()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../deploy/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("deploy/config.toml differs from `flotillad config default`; regenerate it with bin/flotillad config default >deploy/config.toml")
	}
}

func TestDefaultReadsBackAsItself(t *testing.T) {
	b, err := DefaultFile()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Default().Marshal()
	if string(again) != string(want) {
		t.Errorf("the default configuration, read back, prints differently:\n%s", again)
	}
}

func TestLoadRefusesUnknownNamesWithTheirLine(t *testing.T) {
	for what, tc := range map[string]struct{ doc, want string }{
		"a misspelled cri option": {
			"version = 1\n[services.cri.options]\nsandbox_imagee = \"x\"\n",
			`:3: unknown option "sandbox_imagee" in [services.cri.options] (did you mean "sandbox_image"?)`},
		"a misspelled option in a table of options": {
			"[services.cri.options.cni]\nconf_dir = '/x'\nbin_dir = ['/a']\n",
			`:3: unknown option "bin_dir" in [services.cri.options.cni] (did you mean "bin_dirs"?)`},
		"an option under its old flat name, misspelled": {
			"[services.cri.options]\ncni_bin_dir = ['/a']\n",
			`:2: unknown option "cni_bin_dir" in [services.cri.options] (did you mean "cni.bin_dirs"?)`},
		"an option as a dotted key": {
			"version = 1\n\nservices.cri.options.sandbox_imagee = 'x'\n",
			`:3: unknown option "sandbox_imagee"`},
		"an option in an inline table": {
			"[services.cri]\noptions = { snapshotter = 'native', sandbox_imagee = 'x' }\n",
			`:2: unknown option "sandbox_imagee"`},
		"a misspelled metadata option": {
			"[services.metadata.options]\ngc_shedule = '1m'\n",
			`:2: unknown option "gc_shedule" in [services.metadata.options] (did you mean "gc_schedule"?)`},
		"a misspelled snapshotter option": {
			"[snapshotters.overlayfs.options]\nmount_option = ['volatile']\n",
			`:2: unknown option "mount_option" in [snapshotters.overlayfs.options] (did you mean "mount_options"?)`},
		"a misspelled service setting": {
			"[services.metadata]\nmax_proc = 2\n",
			`:2: unknown key "max_proc" in [services.metadata] (did you mean "max_procs"?)`},
		"a misspelled top-level key": {
			"version = 1\nstat = '/run/x'\n",
			`:2: unknown key "stat" in the top level (did you mean "state"?)`},
		"an unknown service": {
			"[services.criu]\ndisabled = true\n",
			`:1: unknown service "criu" in [services] (did you mean "cri"?)`},
		"options for a service that has none": {
			"[services.content.options]\nx = 1\n",
			`:1: [services.content.options]: service content has no options`},
		"a snapshotter's options under its service": {
			"[services.snapshotter-overlayfs.options]\nmount_options = []\n",
			`[snapshotters.overlayfs.options]`},
		"an option of the wrong type": {
			"[services.cri.options]\n\nmax_concurrent_downloads = 'three'\n",
			`:3: services.cri.options.max_concurrent_downloads:`},
		"a bad duration": {
			"[services.metadata.options]\ngc_schedule = 'soon'\n",
			`gc_schedule "soon"`},
		"an unknown driver": {
			"[snapshotters.zfs]\ndriver = 'zfs'\n",
			`:1: [snapshotters.zfs] driver "zfs"`},
	} {
		p := writeConfig(t, tc.doc)
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "config "+p) {
			t.Errorf("%s: error %v; want one starting with config %s and saying %s", what, err, p, tc.want)
		}
	}
}

func TestLoadReportsEveryUnknownName(t *testing.T) {
	p := writeConfig(t, "stat = 'x'\n[services.cri.options]\nsandbox_imagee = 'x'\n[services.tasks.options]\nshim_debugg = true\n")
	_, err := Load(p)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{p + `:1: unknown key "stat"`, p + `:3: unknown option "sandbox_imagee"`, p + `:5: unknown option "shim_debugg"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestLoadTakesOldOptionNamesWithAWarning(t *testing.T) {
	p := writeConfig(t, "[services.cri.options]\nsnapshotter = 'native'\ncni_conf_dir = '/x/net.d'\ncni_bin_dirs = ['/x/bin']\nconfig_path = '/x/certs.d'\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := OptionsMap(c.Services["cri"].Options)
	if err != nil {
		t.Fatal(err)
	}
	cni, _ := opts["cni"].(map[string]any)
	reg, _ := opts["registry"].(map[string]any)
	if cni["conf_dir"] != "/x/net.d" || fmt.Sprint(cni["bin_dirs"]) != "[/x/bin]" || reg["config_path"] != "/x/certs.d" || opts["snapshotter"] != "native" {
		t.Errorf("cri options %v; want the old names' values under the new ones", opts)
	}
	if opts["sandbox_image"] != "registry.k8s.io/pause:3.10" {
		t.Errorf("sandbox_image %v; want the default kept", opts["sandbox_image"])
	}
	want := []string{
		"config " + p + ":4: option cni_bin_dirs in [services.cri.options] is deprecated: it is now cni.bin_dirs",
		"config " + p + ":3: option cni_conf_dir in [services.cri.options] is deprecated: it is now cni.conf_dir",
		"config " + p + ":5: option config_path in [services.cri.options] is deprecated: it is now registry.config_path",
	}
	if strings.Join(c.Warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(c.Warnings, "\n"), strings.Join(want, "\n"))
	}

	p = writeConfig(t, "[services.cri.options]\ncni_conf_dir = '/a'\n[services.cri.options.cni]\nconf_dir = '/b'\n")
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "give one of the two") {
		t.Errorf("both names of an option accepted (error %v)", err)
	}
}

func TestLoadChecksTheFormatVersion(t *testing.T) {
	for doc, want := range map[string]string{
		"version = 2\n":   "version 2: this flotillad reads version 1; containerd's configuration has this version: `flotillad config migrate <file>` converts it",
		"version = 7\n":   ":1: version 7: this flotillad reads version 1",
		"version = '1'\n": ":1: version 1: want the integer 1",
		"version = 2\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 'overlayfs'\n": "looks like containerd's configuration",
	} {
		if _, err := Load(writeConfig(t, doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v; want %q", doc, err, want)
		}
	}
	if _, err := Load(writeConfig(t, "root = '/x'\n")); err != nil {
		t.Errorf("a file without version: %v; want it taken as version 1", err)
	}
}

func TestAMissingFileIsTheDefaultsOnlyAtTheDefaultPath(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "config.toml")
	c, err := load(def, def)
	if err != nil || c.Source != "" || c.Root != "/var/lib/flotilla" {
		t.Errorf("missing default file: %v, source %q; want the defaults", err, c.Source)
	}
	other := filepath.Join(dir, "mine.toml")
	if _, err := load(other, def); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing file named by hand: error %v; want it refused", err)
	}
}

func TestEffectiveSpellsOutTheGraphsDefaults(t *testing.T) {
	c := Default().Effective()
	if c.Services["content"].MaxProcs != 1 || c.Services["metadata"].GOGC != 50 || c.MaxProcs != 1 || c.GRPC.Address != "/run/flotilla/flotilla.sock" {
		t.Errorf("effective: content max_procs %d, metadata gogc %d, max_procs %d, address %q",
			c.Services["content"].MaxProcs, c.Services["metadata"].GOGC, c.MaxProcs, c.GRPC.Address)
	}
}

func TestLineOfFindsKeysHoweverTheyAreWritten(t *testing.T) {
	doc := []byte(`version = 1
[services."cri".options]
snapshotter = 'native'
[snapshotters."my.snap"]
driver = 'native'
[services.tasks]
options = { shim_debug = true, socket_dir = '/s' }
services.metadata.options.gc_schedule = '1m'
`)
	for path, want := range map[string]string{
		"services cri options snapshotter":  ":3",
		"services cri options":              ":2",
		"snapshotters my.snap":              ":4",
		"services tasks options socket_dir": ":7",
		"services tasks":                    ":6",
		"services metadata options":         "",
		"nothing here":                      "",
	} {
		if got := lineOf(doc, strings.Split(path, " ")...); got != want {
			t.Errorf("lineOf(%s) = %q, want %q", path, got, want)
		}
	}
}
