package stats

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ReadNetDev reads a network namespace's interface counters from
// /proc/<pid>/net/dev of a process inside it; eth0 (the CNI default) is
// the default interface, the loopback is left out.
func ReadNetDev(path string) (*runtime.NetworkUsage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseNetDev(f, time.Now())
}

func parseNetDev(r io.Reader, at time.Time) (*runtime.NetworkUsage, error) {
	ifaces, err := parseNetCounters(r)
	if err != nil {
		return nil, err
	}
	n := &runtime.NetworkUsage{Timestamp: at.UnixNano()}
	def := DefaultInterface(ifaces)
	for _, c := range ifaces {
		iface := &runtime.NetworkInterfaceUsage{Name: c.name, RxBytes: u64(c.rxBytes), RxErrors: u64(c.rxErrors), TxBytes: u64(c.txBytes), TxErrors: u64(c.txErrors)}
		n.Interfaces = append(n.Interfaces, iface)
		if def != nil && c.name == def.name {
			n.DefaultInterface = iface
		}
	}
	return n, nil
}

// NetCounters is one interface's line of /proc/<pid>/net/dev.
type NetCounters struct {
	name                                    string
	rxBytes, rxPackets, rxErrors, rxDropped uint64
	txBytes, txPackets, txErrors, txDropped uint64
}

// ReadNetCounters reads the interface counters of the network namespace
// of a process inside it, from its /proc/<pid>/net/dev; the loopback is
// left out.
func ReadNetCounters(path string) ([]NetCounters, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseNetCounters(f)
}

func parseNetCounters(r io.Reader) ([]NetCounters, error) {
	var out []NetCounters
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue // the two header lines
		}
		name = strings.TrimSpace(name)
		fields := strings.Fields(rest)
		// receive: bytes packets errs drop fifo frame compressed
		// multicast; transmit: bytes packets errs drop ...
		if name == "lo" || len(fields) < 12 {
			continue
		}
		num := func(i int) uint64 {
			v, _ := strconv.ParseUint(fields[i], 10, 64)
			return v
		}
		out = append(out, NetCounters{
			name:    name,
			rxBytes: num(0), rxPackets: num(1), rxErrors: num(2), rxDropped: num(3),
			txBytes: num(8), txPackets: num(9), txErrors: num(10), txDropped: num(11),
		})
	}
	return out, sc.Err()
}

// DefaultInterface is eth0, the CNI default, or else the first interface;
// nil when there is none.
func DefaultInterface(ifaces []NetCounters) *NetCounters {
	for i := range ifaces {
		if ifaces[i].name == "eth0" {
			return &ifaces[i]
		}
	}
	if len(ifaces) > 0 {
		return &ifaces[0]
	}
	return nil
}
