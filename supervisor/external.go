package supervisor

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/pkg/rpc"
	"github.com/flotilla-project/flotilla/pkg/service"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// An external service is one a Spec gives an Address for: someone else runs
// its process (a container of its own, restarted by its container runtime),
// and the supervisor only finds it there. It takes the service's place in
// the dependency order all the same: Start waits for it to answer Describe
// on its socket (pkg/service serves the handshake's Describe there too)
// before starting what requires it, and a watcher keeps asking, so that its
// status follows the process as it goes away and comes back. It is never
// started, stopped, restarted or killed from here.

// externalPoll is how often the watcher asks an external service to
// describe itself; externalCallTimeout bounds one such call.
var (
	externalPoll        = time.Second
	externalCallTimeout = 2 * time.Second
)

// External reports whether the spec names a service run outside flotillad.
func (s Spec) External() bool { return s.Address != "" }

// describeExternal asks the service at the spec's address to describe
// itself, as flotillad must reach it: at that address, the service's ttrpc
// endpoint beside it.
func (p *proc) describeExternal(ctx context.Context) (*servicepb.DescribeResponse, error) {
	p.mu.Lock()
	conn, watched := p.conn, p.watchDone != nil
	p.mu.Unlock()
	if !watched {
		// Released (the supervisor stopped): no new connection to leak.
		return nil, fmt.Errorf("service %s is no longer followed", p.spec.Name)
	}
	if conn == nil {
		c, err := rpc.DialTimeout(p.spec.Address, externalCallTimeout)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		switch {
		case p.watchDone == nil:
			_ = c.Close()
		case p.conn == nil:
			p.conn = c
		default:
			_ = c.Close()
		}
		conn = p.conn
		p.mu.Unlock()
		if conn == nil {
			return nil, fmt.Errorf("service %s is no longer followed", p.spec.Name)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, externalCallTimeout)
	defer cancel()
	info, err := servicepb.NewServiceClient(conn).Describe(ctx, &servicepb.DescribeRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	info = proto.Clone(info).(*servicepb.DescribeResponse)
	// The service names its socket as it sees it, which another mount
	// namespace may see elsewhere; what counts here is the address.
	info.Name = p.spec.Name
	info.Socket = p.spec.Address
	if info.Exports == nil {
		info.Exports = map[string]string{}
	}
	if info.Exports["ttrpc"] != "" {
		info.Exports["ttrpc"] = service.TTRPCSocket(p.spec.Address)
	}
	info.Exports["address"] = p.spec.Address
	info.Exports["external"] = "true"
	return info, nil
}

// attachExternal waits, for at most the start timeout, for the external
// service to answer at its address.
func (p *proc) attachExternal(ctx context.Context) error {
	p.setStatus(func(s *Status) { s.State = Starting; s.LastError = "" })
	p.mu.Lock()
	if p.watchDone == nil {
		p.watchDone = make(chan struct{})
	}
	p.mu.Unlock()
	deadline := time.Now().Add(p.sup.opts.StartTimeout)
	var lastErr error
	for {
		info, err := p.describeExternal(ctx)
		if err == nil {
			p.logs.add(fmt.Sprintf("flotilla-%s runs outside flotillad, at %s: its output is where it runs", serviceBinary(p.spec.Name), p.spec.Address))
			p.setExternalRunning(info, false)
			p.sup.opts.Logger.Info("service running outside flotillad", "name", p.spec.Name, "address", p.spec.Address, "pid", info.Pid)
			return nil
		}
		lastErr = err
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	err := fmt.Errorf("no flotilla-%s answered at %s within %s (it runs outside flotillad: start it there first): %w",
		serviceBinary(p.spec.Name), p.spec.Address, p.sup.opts.StartTimeout, lastErr)
	p.setStatus(func(s *Status) { s.State = Failed; s.LastError = err.Error() })
	return err
}

// serviceBinary is the binary name a service's process runs, for messages.
func serviceBinary(name string) string {
	if len(name) > len("snapshotter-") && name[:len("snapshotter-")] == "snapshotter-" {
		return "snapshotter"
	}
	return name
}

// setExternalRunning records a fresh description; restarted says the
// process is not the one described before.
func (p *proc) setExternalRunning(info *servicepb.DescribeResponse, restarted bool) {
	p.setStatus(func(s *Status) {
		if restarted {
			s.Restarts++
			s.LastExit = "exited"
		}
		s.State, s.Info, s.Since, s.LastError = Running, info, time.Now(), ""
		// Its pid may be in another pid namespace: it is the service's
		// own report (Info), not a process the supervisor could signal.
		s.Pid = 0
	})
}

// watchExternal follows an external service until the supervisor stops:
// it notes when it stops answering and when a new process (another pid, or
// an answer after silence) takes its place, whose routes may differ.
func (p *proc) watchExternal() {
	p.mu.Lock()
	done := p.watchDone
	p.mu.Unlock()
	t := time.NewTicker(externalPoll)
	defer t.Stop()
	down := false
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if p.sup.isStopping() {
			return
		}
		info, err := p.describeExternal(context.Background())
		select {
		case <-done:
			// Released while asking: what it answered no longer matters.
			return
		default:
		}
		if err != nil {
			if !down {
				down = true
				p.sup.opts.Logger.Error("service outside flotillad stopped answering; waiting for it to come back",
					"name", p.spec.Name, "address", p.spec.Address, "error", err)
				p.setStatus(func(s *Status) {
					s.State = Restarting
					s.LastError = fmt.Sprintf("not answering at %s: %v", p.spec.Address, err)
				})
			}
			continue
		}
		prev := p.snapshot().Info
		// A container's process often has the same pid each time: its
		// start time tells one process from the next.
		restarted := down || prev == nil || prev.Pid != info.Pid || prev.Exports["started"] != info.Exports["started"]
		if restarted {
			p.sup.opts.Logger.Info("service outside flotillad is back", "name", p.spec.Name, "address", p.spec.Address, "pid", info.Pid)
		}
		down = false
		if restarted || !proto.Equal(prev, info) {
			p.setExternalRunning(info, restarted)
		}
	}
}

// releaseExternal stops watching an external service and forgets it,
// leaving its process alone.
func (p *proc) releaseExternal() {
	p.mu.Lock()
	conn, done := p.conn, p.watchDone
	p.conn, p.watchDone = nil, nil
	p.mu.Unlock()
	if done != nil {
		close(done)
	}
	if conn != nil {
		_ = conn.Close()
	}
	p.setStatus(func(s *Status) { s.State = Stopped; s.Pid = 0 })
}

// restartExternal refuses: the process is someone else's.
func (p *proc) restartExternal() error {
	return fmt.Errorf("restart %s: it runs outside flotillad, at %s: restart it where it runs: %w",
		p.spec.Name, p.spec.Address, errdefs.ErrFailedPrecondition)
}
