package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-project/flotilla/pkg/config"
)

var testCRIConfig = &criConfig{
	sandboxImage: "127.0.0.1:5000/flotilla/pause:bench",
	cniConfDir:   "/tmp/x/net.d-flotilla",
	cniBinDir:    criCNIBinDir,
	hostsDir:     "/tmp/x/certs.d",
	subnet:       "10.199.92.0/24",
	bridge:       "fbcri-f0",
}

// flotillad rejects unknown keys, so a typo in the generated config would
// only show as a daemon that does not start: load it as flotillad does.
func TestFlotillaCRIConfigLoadsWithTheCRIOptions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte("[trace]\nfile = true\n\n"+flotillaCRIConfig(testCRIConfig)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("flotillad would not load the bench's config: %v", err)
	}
	if !cfg.Trace.File {
		t.Error("[trace] file = true was lost")
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("the bench's config has deprecated names: %v", cfg.Warnings)
	}
	opts, err := config.OptionsMap(cfg.Services["cri"].Options)
	if err != nil {
		t.Fatal(err)
	}
	cni, _ := opts["cni"].(map[string]any)
	registry, _ := opts["registry"].(map[string]any)
	for k, c := range map[string]struct{ got, want any }{
		"sandbox_image":          {opts["sandbox_image"], testCRIConfig.sandboxImage},
		"cni.conf_dir":           {cni["conf_dir"], testCRIConfig.cniConfDir},
		"registry.config_path":   {registry["config_path"], testCRIConfig.hostsDir},
		"restrict_oom_score_adj": {opts["restrict_oom_score_adj"], true},
	} {
		if c.got != c.want {
			t.Errorf("cri option %s = %v, want %v", k, c.got, c.want)
		}
	}
	for _, svc := range []string{"content", "metadata", "tasks"} {
		if _, ok := cfg.Services[svc]; !ok {
			t.Errorf("service %s gone from the config once cri options are set", svc)
		}
	}
}

func TestContainerdCRIConfigSetsTheSameImagesNetworkAndRegistry(t *testing.T) {
	var cfg struct {
		Plugins map[string]map[string]any `toml:"plugins"`
	}
	if err := toml.Unmarshal([]byte(containerdCRIConfig(testCRIConfig)), &cfg); err != nil {
		t.Fatalf("containerd's CRI config is not TOML: %v", err)
	}
	images := cfg.Plugins["io.containerd.cri.v1.images"]
	if got := images["pinned_images"].(map[string]any)["sandbox"]; got != testCRIConfig.sandboxImage {
		t.Errorf("sandbox image %v, want %s", got, testCRIConfig.sandboxImage)
	}
	if got := images["registry"].(map[string]any)["config_path"]; got != testCRIConfig.hostsDir {
		t.Errorf("registry config_path %v, want %s", got, testCRIConfig.hostsDir)
	}
	rt := cfg.Plugins["io.containerd.cri.v1.runtime"]
	cni := rt["cni"].(map[string]any)
	if cni["conf_dir"] != testCRIConfig.cniConfDir {
		t.Errorf("cni conf_dir %v, want %s", cni["conf_dir"], testCRIConfig.cniConfDir)
	}
	if rt["restrict_oom_score_adj"] != true {
		t.Error("restrict_oom_score_adj is not set: sandboxes fail without CAP_SYS_RESOURCE")
	}
}
