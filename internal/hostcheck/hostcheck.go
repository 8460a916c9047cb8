// Package hostcheck checks a host for what Flotilla needs before the user
// meets a failure: overlayfs and its options, cgroups, runc and the runc v2
// shim, CNI plugins and a network config, kernel features (idmapped mounts,
// seccomp, AppArmor), the daemon's socket and free disk under its root. Each
// check is a function of an Env, so tests point it at directories of their
// own; `flotilla doctor` runs them all.
package hostcheck

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Status is a check's verdict.
type Status string

const (
	Pass Status = "pass"
	Warn Status = "warn" // works, or is optional, but something is worth fixing
	Fail Status = "fail"
	Skip Status = "skip" // could not be checked here (not root, say)
)

// Result is one check's finding.
type Result struct {
	// Name is short and stable ("overlayfs", "runc").
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Required says Flotilla cannot run containers without it: a failed
	// required check makes doctor exit non-zero.
	Required bool `json:"required"`
	// Detail says what was found.
	Detail string `json:"detail"`
	// Fix says what to do about a warning or failure.
	Fix string `json:"fix,omitempty"`
}

// Env is what the checks look at; Default fills it for this host.
type Env struct {
	// Root is flotillad's root directory (overlay mounts and disk space
	// are checked on its filesystem, or its nearest existing parent's).
	Root string
	// Socket is flotillad's client socket.
	Socket string
	// Path lists directories to look for runc and the shim in, after
	// $PATH (the directory of flotillad, where make build puts the shim).
	Path []string
	// CNIBinDirs and CNIConfDir are where CNI plugins and network configs
	// are looked for.
	CNIBinDirs []string
	CNIConfDir string
	// CgroupRoot is where the cgroup filesystems are mounted.
	CgroupRoot string
	// Proc is /proc, Sys is /sys.
	Proc, Sys string
	// Ping asks the daemon on Socket for its version; nil skips that.
	Ping func(ctx context.Context) (string, error)
}

// Default is this host's Env for a daemon with root and socket.
func Default(root, socket string) Env {
	e := Env{
		Root:       root,
		Socket:     socket,
		CNIBinDirs: []string{"/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni"},
		CNIConfDir: "/etc/cni/net.d",
		CgroupRoot: "/sys/fs/cgroup",
		Proc:       "/proc",
		Sys:        "/sys",
	}
	// make build puts containerd-shim-runc-v2 beside flotillad and
	// flotilla; flotillad puts its own directory first on the shims' PATH.
	if exe, err := os.Executable(); err == nil {
		e.Path = append(e.Path, filepath.Dir(exe))
	}
	if d, err := exec.LookPath("flotillad"); err == nil {
		if abs, err := filepath.Abs(d); err == nil {
			e.Path = append(e.Path, filepath.Dir(abs))
		}
	}
	return e
}

// Check is one check.
type Check struct {
	Name     string
	Required bool
	Run      func(ctx context.Context, e Env) Result
}

// Checks are every check, in the order doctor prints them.
func Checks() []Check {
	return []Check{
		{"kernel", false, checkKernel},
		{"overlayfs", true, checkOverlay},
		{"cgroups", true, checkCgroups},
		{"runc", true, checkRunc},
		{"shim", true, checkShim},
		{"cni-plugins", false, checkCNIPlugins},
		{"cni-config", false, checkCNIConfig},
		{"idmapped-mounts", false, checkIDMap},
		{"seccomp", false, checkSeccomp},
		{"apparmor", false, checkAppArmor},
		{"socket", false, checkSocket},
		{"disk", false, checkDisk},
	}
}

// Run runs every check.
func Run(ctx context.Context, e Env) []Result {
	var out []Result
	for _, c := range Checks() {
		r := c.Run(ctx, e)
		r.Name, r.Required = c.Name, c.Required
		out = append(out, r)
	}
	return out
}

// Failed says whether a required check failed.
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Required && r.Status == Fail {
			return true
		}
	}
	return false
}

func pass(format string, a ...any) Result {
	return Result{Status: Pass, Detail: fmt.Sprintf(format, a...)}
}
func skip(format string, a ...any) Result {
	return Result{Status: Skip, Detail: fmt.Sprintf(format, a...)}
}
func warn(fix, format string, a ...any) Result {
	return Result{Status: Warn, Detail: fmt.Sprintf(format, a...), Fix: fix}
}
func fail(fix, format string, a ...any) Result {
	return Result{Status: Fail, Detail: fmt.Sprintf(format, a...), Fix: fix}
}

// firstLine is s's first non-empty line, trimmed.
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// existingParent is dir, or its nearest ancestor that exists.
func existingParent(dir string) string {
	dir = filepath.Clean(dir)
	for {
		if _, err := os.Stat(dir); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return dir
		}
		dir = parent
	}
}

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}
