package config

import (
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
