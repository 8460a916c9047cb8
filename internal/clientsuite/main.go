// Command clientsuite runs containerd's own client integration suite
// (integration/client of containerd v2.4.2, built as a test binary by
// script/containerd-client-suite) against a running daemon's socket, without
// network: it starts a docker-registry serving HTTPS on a loopback address,
// pushes stand-ins for the suite's public images built from the host's
// static busybox under the names the suite pulls (ghcr.io/containerd/...,
// registry.k8s.io/...), runs the suite with those registries resolving to it
// and its certificate authority trusted, and prints which tests passed,
// failed and were skipped.
//
//	go run ./internal/clientsuite -suite client.test -address /run/flotilla/flotilla.sock -dir /tmp/suite
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/flotilla-project/flotilla/internal/testregistry"
)

func main() {
	suite := flag.String("suite", "", "containerd's integration/client test binary")
	address := flag.String("address", "", "socket of the daemon under test")
	dir := flag.String("dir", "", "work directory (registry data, image list, suite log)")
	run := flag.String("run", "", "only the tests matching this -test.run pattern")
	skip := flag.String("skip", "", "leave out the tests matching this -test.skip pattern (besides the two that need a daemon of the suite's own)")
	timeout := flag.String("timeout", "40m", "the suite's -test.timeout")
	ip := flag.String("registry-ip", "127.77.0.1", "loopback address the registry serves HTTPS on, port 443")
	flag.Parse()
	if *suite == "" || *address == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: clientsuite -suite BIN -address SOCK -dir DIR [-run PATTERN]")
		os.Exit(2)
	}
	code, err := runSuite(*suite, *address, *dir, *run, *skip, *timeout, *ip)
	if err != nil {
		fmt.Fprintln(os.Stderr, "clientsuite:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func runSuite(suite, address, dir, run, skip, timeout, ip string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	regIP := net.ParseIP(ip)
	if regIP == nil {
		return 0, fmt.Errorf("-registry-ip %q is not an IP address", ip)
	}
	ctx := context.Background()
	regDir := filepath.Join(dir, "registry")
	// A fresh store each run: the suite deletes and re-pulls images, and a
	// registry left from an earlier run would only hide a push that broke.
	_ = os.RemoveAll(regDir)
	if err := os.MkdirAll(regDir, 0o755); err != nil {
		return 0, err
	}
	ca, cert, key, err := writeCerts(regDir, regIP)
	if err != nil {
		return 0, fmt.Errorf("registry certificate: %w", err)
	}
	reg, err := testregistry.Start(ctx, testregistry.Options{Dir: regDir, IP: ip, Port: 443, TLSCert: cert, TLSKey: key})
	if err != nil {
		return 0, err
	}
	defer reg.Close()
	if err := pushImages(reg); err != nil {
		return 0, err
	}

	// The suite names most of its images in package variables evaluated
	// before its flags are parsed, so its -image-list cannot move them:
	// the registries' names resolve to the local registry instead, through
	// an /etc/hosts of the suite's own (bind-mounted in a mount namespace
	// of its own, so nothing else on the machine sees it).
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return 0, err
	}
	hosts = append(hosts, []byte(fmt.Sprintf("\n%s %s\n", ip, strings.Join(registryHosts, " ")))...)
	hostsPath := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsPath, hosts, 0o644); err != nil {
		return 0, err
	}
	fmt.Printf("registry %s serves %s\n", reg.Host, strings.Join(registryHosts, ", "))

	logPath := filepath.Join(dir, "suite.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	args := []string{
		"--mount", "--propagation", "slave", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hostsPath,
		suite, "-test.v", "-test.root", "-test.timeout", timeout,
		"-no-daemon", "-no-criu", "-address", address,
		// These read the pid of a daemon the suite started itself and
		// panic, ending the whole run, when it started none.
		"-test.skip", "^(TestShimDoesNotLeakPipes|TestShimOOMScore)$" + orSkip(skip),
	}
	if run != "" {
		args = append(args, "-test.run", run)
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+ca)
	// The suite writes temporary files and exported archives in the
	// current directory.
	cmd.Dir = dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start suite: %w", err)
	}
	fmt.Printf("running %s (log: %s)\n", suite, logPath)
	res := tally(io.TeeReader(out, logf))
	waitErr := cmd.Wait()
	res.print(os.Stdout)
	if len(res.failed) > 0 || waitErr != nil {
		if waitErr != nil && len(res.failed) == 0 {
			fmt.Printf("suite exited: %v (see %s)\n", waitErr, logPath)
		}
		return 1, nil
	}
	return 0, nil
}

// orSkip adds a caller's -skip pattern to the suite's own as an
// alternative.
func orSkip(skip string) string {
	if skip == "" {
		return ""
	}
	return "|" + skip
}

// results are the suite's top-level tests by outcome; subtests count only
// through their parent, as `go test` counts them.
type results struct {
	passed, failed, skipped []string
}

var outcome = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+)`)

func tally(r io.Reader) results {
	var res results
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		m := outcome.FindStringSubmatch(sc.Text())
		if m == nil || strings.Contains(m[2], "/") {
			continue
		}
		switch m[1] {
		case "PASS":
			res.passed = append(res.passed, m[2])
		case "FAIL":
			res.failed = append(res.failed, m[2])
		case "SKIP":
			res.skipped = append(res.skipped, m[2])
		}
	}
	return res
}

func (res results) print(w io.Writer) {
	for _, group := range []struct {
		name  string
		tests []string
	}{{"failed", res.failed}, {"skipped", res.skipped}, {"passed", res.passed}} {
		sort.Strings(group.tests)
		fmt.Fprintf(w, "%s (%d): %s\n", group.name, len(group.tests), strings.Join(group.tests, " "))
	}
	fmt.Fprintf(w, "suite: %d passed, %d failed, %d skipped\n", len(res.passed), len(res.failed), len(res.skipped))
}
