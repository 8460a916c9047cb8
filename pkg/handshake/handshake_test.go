package handshake

import (
	"strings"
	"testing"
)

type cni struct {
	ConfDir string `json:"conf_dir"`
}

type testOptions struct {
	Image string `json:"sandbox_image"`
	CNI   cni    `json:"cni"`
}

func (*testOptions) Aliases() map[string]string {
	return map[string]string{"cni_conf_dir": "cni.conf_dir"}
}

func TestDecodeOptionsRefusesUnknownNames(t *testing.T) {
	env := Env{Name: "cri", Options: map[string]any{"sandbox_imagee": "x"}}
	_, err := env.DecodeOptions(&testOptions{})
	if err == nil || !strings.Contains(err.Error(), `unknown field "sandbox_imagee"`) || !strings.Contains(err.Error(), "service cri") {
		t.Errorf("error %v; want the unknown option named, and the service", err)
	}
}

func TestDecodeOptionsKeepsDefaultsAndTakesOldNames(t *testing.T) {
	env := Env{Name: "cri", Options: map[string]any{"cni_conf_dir": "/x"}}
	opts := &testOptions{Image: "pause"}
	renamed, err := env.DecodeOptions(opts)
	if err != nil {
		t.Fatal(err)
	}
	if opts.CNI.ConfDir != "/x" || opts.Image != "pause" {
		t.Errorf("options %+v; want cni.conf_dir from the old name and the default image", opts)
	}
	if len(renamed) != 1 || renamed[0] != (Rename{Old: "cni_conf_dir", New: "cni.conf_dir"}) {
		t.Errorf("renamed %v", renamed)
	}
	if _, ok := env.Options["cni_conf_dir"]; !ok {
		t.Error("DecodeOptions changed the environment's options")
	}
	env.Options["cni"] = map[string]any{"conf_dir": "/y"}
	if _, err := env.DecodeOptions(&testOptions{}); err == nil {
		t.Error("an option under its old and its new name accepted")
	}
}

func TestSetOptionMakesTables(t *testing.T) {
	m := map[string]any{}
	if err := SetOption(m, "cni.conf_dir", "/x"); err != nil {
		t.Fatal(err)
	}
	if err := SetOption(m, "cni.bin_dirs", []any{"/a"}); err != nil {
		t.Fatal(err)
	}
	c, _ := m["cni"].(map[string]any)
	if c["conf_dir"] != "/x" || len(c) != 2 {
		t.Errorf("options %v", m)
	}
	if err := SetOption(m, "cni.conf_dir.x", 1); err == nil {
		t.Error("a key below a value accepted")
	}
}
