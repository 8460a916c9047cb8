package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// goTool is a program the tests drive that nobody here wrote (containerd
// 2.4.2's ctr, nerdctl, critest, a kubelet, a newer runc): built once from
// the Go module proxy into the user's cache directory, outside the checkout
// so that a clean clone and CI reuse it, or taken from the environment
// variable env when that names one.
type goTool struct {
	name    string        // what it is, for messages
	dir     string        // its directory under ~/.cache/flotilla-tests
	file    string        // the program's file name in it
	env     string        // a variable naming a prebuilt one
	timeout time.Duration // how long a cold build may take
	// build writes the program to out, running go through g.
	build func(g *goBuild, out string) error
}

// goBuild runs go for one tool's build.
type goBuild struct {
	ctx context.Context
	// mod is a directory of the build's own, kept between builds, for a
	// wrapper module when the tool's own go.mod cannot build it as is.
	mod string
}

// run runs go in dir (the build's own directory when empty) with modules
// resolved from the proxy and no workspace, and returns its stdout.
func (g *goBuild) run(dir string, env []string, args ...string) ([]byte, error) {
	if dir == "" {
		dir = g.mod
	}
	cmd := exec.CommandContext(g.ctx, filepath.Join(runtime.GOROOT(), "bin", "go"), args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off"), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// initModule makes the build's own directory a module named name, once.
func (g *goBuild) initModule(name string) error {
	if _, err := os.Stat(filepath.Join(g.mod, "go.mod")); err == nil {
		return nil
	}
	_, err := g.run("", nil, "mod", "init", name)
	return err
}

// moduleDir downloads module@version and returns its directory in the
// module cache (read-only: build there only what needs no go.mod change).
func (g *goBuild) moduleDir(module string) (string, error) {
	out, err := g.run(os.TempDir(), nil, "mod", "download", "-json", module)
	if err != nil {
		return "", err
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory (%v): %s", module, err, out)
	}
	return m.Dir, nil
}

type goToolResult struct {
	once sync.Once
	path string
	err  error
}

// goTools are the builds of this test run, one per tool however many
// tests ask for it.
var goTools sync.Map // dir → *goToolResult

// path is the tool's program, built now if the cache has none.
func (tl goTool) path() (string, error) {
	v, _ := goTools.LoadOrStore(tl.dir, &goToolResult{})
	r := v.(*goToolResult)
	r.once.Do(func() { r.path, r.err = tl.make() })
	return r.path, r.err
}

func (tl goTool) make() (string, error) {
	if p := os.Getenv(tl.env); p != "" {
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for %s: %w", tl.name, err)
	}
	dir := filepath.Join(cache, "flotilla-tests", tl.dir)
	bin := filepath.Join(dir, tl.file)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	g := &goBuild{mod: filepath.Join(dir, "build")}
	if err := os.MkdirAll(g.mod, 0o755); err != nil {
		return "", err
	}
	var cancel context.CancelFunc
	g.ctx, cancel = context.WithTimeout(context.Background(), tl.timeout)
	defer cancel()
	// Into a temporary name first: a build cut short leaves nothing a
	// later run would take for a good program.
	if err := tl.build(g, bin+".tmp"); err != nil {
		return "", fmt.Errorf("build %s: %w", tl.name, err)
	}
	return bin, os.Rename(bin+".tmp", bin)
}
