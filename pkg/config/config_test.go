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
