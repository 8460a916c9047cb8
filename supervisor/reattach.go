package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"

	"github.com/flotilla-project/flotilla/pkg/handshake"
)

// A service process outlives the flotillad that started it (it runs in a
// process group of its own). What a later flotillad needs to take it over
// instead of starting another copy is kept beside its pid file, in
// <service state>/reattach.json:
//
//	{
//	  "pid": 1234,                     the service process
//	  "start_time": 98765,             its start time (/proc/<pid>/stat field 22),
//	                                   so a reused pid is never mistaken for it
//	  "path": "/usr/bin/flotilla-x",   the executable it was started from
//	  "env_hash": "…",                 sha256 of its path and handshake env: a
//	                                   service configured differently now is
//	                                   restarted, not reattached
//	  "protocol": "grpc", "protocol_version": 1,
//	  "network": "unix", "addr": "<service state>/plugin…",  go-plugin's socket
//	  "since": "…", "restarts": 0,     carried over for `flotilla services`
//	  "oom_kills": 0, "last_exit": "…"
//	}
//
// The file is written once a started process has described itself and
// removed when the supervisor stops the service on purpose.
const reattachFile = "reattach.json"

type reattachRecord struct {
	Pid             int       `json:"pid"`
	StartTime       uint64    `json:"start_time"`
	Path            string    `json:"path"`
	EnvHash         string    `json:"env_hash"`
	Protocol        string    `json:"protocol"`
	ProtocolVersion int       `json:"protocol_version"`
	Network         string    `json:"network"`
	Addr            string    `json:"addr"`
	Since           time.Time `json:"since"`
	Restarts        int       `json:"restarts"`
	OOMKills        int       `json:"oom_kills,omitempty"`
	LastExit        string    `json:"last_exit,omitempty"`
}

// errNoRecord means there is nothing to reattach to: the normal case after a
// clean stop or on a first start.
var errNoRecord = errors.New("no reattach record")

func (p *proc) reattachPath() string {
	return filepath.Join(p.spec.Env.State, reattachFile)
}

// envHash identifies how a service was started; a service started otherwise
// than the configuration now says is not taken over.
func (p *proc) envHash() (string, error) {
	env, err := p.spec.Env.Encode()
	if err != nil {
		return "", err
	}
	path, err := filepath.EvalSymlinks(p.spec.Path)
	if err != nil {
		path = p.spec.Path
	}
	sum := sha256.Sum256([]byte(path + "\x00" + strings.Join(p.spec.Args, "\x00") + "\x00" + env))
	return hex.EncodeToString(sum[:]), nil
}

// saveReattach records how to take over the process client runs.
func (p *proc) saveReattach(client *plugin.Client, pid int, since time.Time, st Status) error {
	rc := client.ReattachConfig()
	if rc == nil || rc.Addr == nil {
		return errors.New("go-plugin has no reattach configuration for the process")
	}
	start, err := procStartTime(pid)
	if err != nil {
		return err
	}
	hash, err := p.envHash()
	if err != nil {
		return err
	}
	path, err := filepath.EvalSymlinks(p.spec.Path)
	if err != nil {
		return err
	}
	rec := reattachRecord{
		Pid:             pid,
		StartTime:       start,
		Path:            path,
		EnvHash:         hash,
		Protocol:        string(rc.Protocol),
		ProtocolVersion: client.NegotiatedVersion(),
		Network:         rc.Addr.Network(),
		Addr:            rc.Addr.String(),
		Since:           since,
		Restarts:        st.Restarts,
		OOMKills:        st.OOMKills,
		LastExit:        st.LastExit,
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	// Written whole or not at all: a flotillad killed mid-write must not
	// leave a record the next one misreads.
	tmp := p.reattachPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.reattachPath())
}

func (p *proc) loadReattach() (*reattachRecord, error) {
	b, err := os.ReadFile(p.reattachPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoRecord
	}
	if err != nil {
		return nil, err
	}
	var rec reattachRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", p.reattachPath(), err)
	}
	return &rec, nil
}

// checkReattach tells whether rec still describes a live process of this
// service, started as the configuration says now.
func (p *proc) checkReattach(rec *reattachRecord) error {
	if rec.Pid <= 1 {
		return fmt.Errorf("recorded pid %d is not a service", rec.Pid)
	}
	if !alive(rec.Pid) {
		return fmt.Errorf("process %d is gone", rec.Pid)
	}
	if st, err := procStartTime(rec.Pid); err != nil || st != rec.StartTime {
		return fmt.Errorf("pid %d now belongs to another process", rec.Pid)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", rec.Pid))
	if err != nil {
		return err
	}
	// A binary replaced on disk (an upgrade) shows as "(deleted)": the
	// process still runs what was started from this path.
	if exe = strings.TrimSuffix(exe, " (deleted)"); exe != rec.Path {
		return fmt.Errorf("process %d runs %s, not %s", rec.Pid, exe, rec.Path)
	}
	hash, err := p.envHash()
	if err != nil {
		return err
	}
	if hash != rec.EnvHash {
		return errors.New("the service's configuration or binary changed since it was started")
	}
	if rec.ProtocolVersion != int(handshake.Config.ProtocolVersion) {
		return fmt.Errorf("process speaks service protocol %d, this flotillad %d", rec.ProtocolVersion, handshake.Config.ProtocolVersion)
	}
	if rec.Protocol != string(plugin.ProtocolGRPC) || rec.Network == "" || rec.Addr == "" {
		return fmt.Errorf("unusable go-plugin address %s %s (%s)", rec.Network, rec.Addr, rec.Protocol)
	}
	return nil
}

// reattach takes over the process a previous flotillad left running, if
// its record is sound and it answers Describe as itself. On any error the
// caller starts the service afresh (killStale ends the old process).
func (p *proc) reattach(ctx context.Context) error {
	rec, err := p.loadReattach()
	if err != nil {
		return err
	}
	if err := p.checkReattach(rec); err != nil {
		return err
	}
	addr, err := netAddr(rec.Network, rec.Addr)
	if err != nil {
		return err
	}
	follow, err := followLog(p.logPath(), false, p.sup.opts.Output, p.logs)
	if err != nil {
		return err
	}
	r := &attachedRunner{pid: rec.Pid, start: rec.StartTime}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake.Config,
		Plugins:          handshake.Plugins(nil),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		// Whatever the service wrote to its redirected os.Stdout/os.Stderr
		// while no flotillad ran is still buffered in go-plugin's stdio
		// stream, which a reattached client drains like a new one.
		SyncStderr: &tailWriter{w: p.sup.opts.Output, ring: p.logs},
		SyncStdout: &tailWriter{w: p.sup.opts.Output, ring: p.logs},
		Reattach: &plugin.ReattachConfig{
			Protocol:        plugin.Protocol(rec.Protocol),
			ProtocolVersion: rec.ProtocolVersion,
			Addr:            addr,
			Pid:             rec.Pid,
			// go-plugin's own runner polls with kill(pid, 0) once a second
			// and so never sees a zombie exit (the process is no child of
			// ours; its reaper may never reap it): watch it as alive does.
			ReattachFunc: func() (runner.AttachedRunner, error) { return r, nil },
		},
	})
	p.setStatus(func(s *Status) { s.State = Starting; s.LastError = "" })
	timeout := p.sup.opts.StartTimeout
	if timeout > 5*time.Second {
		timeout = 5 * time.Second
	}
	info, err := describe(ctx, client, timeout)
	if err == nil && (int(info.Pid) != rec.Pid || info.Name != p.spec.Name) {
		err = fmt.Errorf("go-plugin socket %s is served by %s (pid %d), not %s (pid %d)", rec.Addr, info.Name, info.Pid, p.spec.Name, rec.Pid)
	}
	if err != nil {
		// Not ours any more, or wedged: the fresh start that follows kills
		// it by its pid file; the client only needs its goroutines ended.
		_ = r.Kill(ctx)
		client.Kill()
		follow.close()
		return fmt.Errorf("describe: %w", err)
	}
	// The process keeps (or, started by a flotillad without cgroups, gets)
	// its cgroup, with the limits the configuration sets now.
	if cg := p.cgroup(); cg != nil {
		if err := cg.attach(rec.Pid); err != nil {
			p.sup.opts.Logger.Error("reattached service stays outside its cgroup", "name", p.spec.Name, "error", err)
		}
	}
	p.mu.Lock()
	p.status.Restarts = rec.Restarts
	p.status.OOMKills, p.status.LastExit = rec.OOMKills, rec.LastExit
	p.mu.Unlock()
	p.attach(client, info, follow, nil, rec.Since)
	p.sup.opts.Logger.Info("service reattached", "name", p.spec.Name, "pid", info.Pid, "socket", info.Socket, "since", rec.Since.Format(time.RFC3339))
	return nil
}

func netAddr(network, addr string) (net.Addr, error) {
	switch network {
	case "unix":
		return &net.UnixAddr{Net: network, Name: addr}, nil
	case "tcp":
		return net.ResolveTCPAddr(network, addr)
	}
	return nil, fmt.Errorf("unknown go-plugin network %q", network)
}

// removePluginSockets removes go-plugin sockets left in the service's state
// by a process that did not close its listener (a crash, a kill), once no
// process of the service runs.
func (p *proc) removePluginSockets() {
	paths, _ := filepath.Glob(filepath.Join(p.spec.Env.State, "plugin*"))
	for _, path := range paths {
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			_ = os.Remove(path)
		}
	}
}

// attachedRunner is go-plugin's handle on a process flotillad did not start.
type attachedRunner struct {
	pid   int
	start uint64
}

func (r *attachedRunner) running() bool {
	if !alive(r.pid) {
		return false
	}
	st, err := procStartTime(r.pid)
	return err == nil && st == r.start
}

func (r *attachedRunner) Wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for r.running() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func (r *attachedRunner) Kill(context.Context) error {
	if !r.running() {
		return nil
	}
	if err := syscall.Kill(r.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

func (r *attachedRunner) ID() string { return strconv.Itoa(r.pid) }

func (r *attachedRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (r *attachedRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

// procStartTime is when pid started, in clock ticks since boot: with the pid
// it names one process for good.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields follow the command name, which is in parentheses and may
	// hold anything; starttime is field 22, the 20th after it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}
