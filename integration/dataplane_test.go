package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// procIO is what a process has read and written through system calls,
// sockets included (/proc/<pid>/io rchar and wchar).
func procIO(t *testing.T, pid int) (read, written int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatalf("io of pid %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "rchar":
			read = n
		case "wchar":
			written = n
		}
	}
	return read, written
}

// A blob's bytes go between the client's socket and the disk through the
// gateway and the content process alone, as containerd's go through
// containerd alone: metadata decides and records, and never relays them.
func TestBlobBytesCrossOnlyTheGatewayAndContent(t *testing.T) {
	d := newDaemon(t).start()
	const size = 48 << 20
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(data)
	want := digest.FromBytes(data)

	metadata, content, gateway := d.servicePid("metadata"), d.servicePid("content"), d.cmd.Process.Pid
	gr0, gw0 := procIO(t, gateway)
	mr0, mw0 := procIO(t, metadata)
	cr0, cw0 := procIO(t, content)
	d.ctrStdinMust(bytes.NewReader(data), "content", "ingest", "--expected-size", strconv.Itoa(size), "--expected-digest", want.String(), "dataplane")
	got, err := d.ctrBytes("content", "get", want.String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes of digest %s, want %d of %s", len(got), digest.FromBytes(got), size, want)
	}
	gr1, gw1 := procIO(t, gateway)
	// In from the client and out to content; from the file and out to the
	// client.
	if g := (gr1 - gr0) + (gw1 - gw0); g < 4*size {
		t.Errorf("the gateway read and wrote %d bytes for a %d-byte blob written and read back; want at least %d", g, size, 4*size)
	}
	mr1, mw1 := procIO(t, metadata)
	cr1, cw1 := procIO(t, content)
	moved := (mr1 - mr0) + (mw1 - mw0)
	t.Logf("metadata moved %d bytes, content %d, for a %d-byte blob written and read back", moved, (cr1-cr0)+(cw1-cw0), size)
	if moved > size/8 {
		t.Errorf("metadata read and wrote %d bytes while a %d-byte blob was written and read: the bytes pass through it", moved, size)
	}
	// The ingest goes into content's socket and file; the read comes from
	// the file, in the gateway, which content hands it (pkg/blobfd).
	if c := (cr1 - cr0) + (cw1 - cw0); c < 2*size {
		t.Errorf("content read and wrote %d bytes for a %d-byte blob written; want at least %d", c, size, 2*size)
	}

	// The namespace still decides: another namespace neither sees nor
	// reads the blob.
	if out, err := d.ctr("-n", "other", "content", "get", want.String()); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("namespace other read namespace default's blob: err %v, output %.200q", err, out)
	}
}

// The gateway keeps a blob it read for a namespace a moment, for the calls
// that follow (a content reader asks for each 32 KiB apart), but a blob the
// namespace deletes is gone for its next read at once.
func TestDeletedBlobIsNotReadAfterARead(t *testing.T) {
	d := newDaemon(t).start()
	data := []byte("read, deleted, read again")
	want := digest.FromBytes(data)
	d.ctrStdinMust(bytes.NewReader(data), "content", "ingest", "--expected-digest", want.String(), "grant")
	if got, err := d.ctrBytes("content", "get", want.String()); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content get: %q, %v", got, err)
	}
	d.mustCtr("content", "rm", want.String())
	if out, err := d.ctr("content", "get", want.String()); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("content get right after content rm: err %v, output %.200q; want not found", err, out)
	}
}
