// Package version is the version Flotilla's binaries were built as: a
// semantic version, from the repository's VERSION file and git (see
// script/version), which the Makefile sets with -ldflags -X. flotillad,
// each flotilla-<service>, flotilla and the Version API (what `ctr version`
// shows as the server's) all report it.
package version

import (
	"fmt"
	"runtime"
)

// Version and Revision are set at build time by the Makefile through
// -ldflags -X, so they must stay plain string variables. A binary built
// without them (go build, go install) is VERSION's release plus "+unknown",
// as containerd's are.
var (
	Version  = "0.2.0+unknown"
	Revision = ""
)

// String is the line `<program> --version` prints: program, version,
// revision and the Go release it was built with.
func String(program string) string {
	rev := Revision
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("%s %s (revision %s, %s)", program, Version, rev, runtime.Version())
}
