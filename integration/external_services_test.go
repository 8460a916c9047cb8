package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/internal/testimage"
	"github.com/flotilla-project/flotilla/pkg/rpc"
	servicepb "github.com/flotilla-project/flotilla/proto/service/v1"
)

// externalService is a service process started by hand, as a container of
// its own would start it: flotilla-<binary> with the standalone flags, its
// dependencies' sockets on its command line.
type externalService struct {
	t      *testing.T
	name   string // the service's name in flotillad's config
	binary string
	socket string
	args   []string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
}

// startExternal runs the service and returns once it answers Describe on
// its socket, as flotillad asks it to.
func startExternal(t *testing.T, name, binary, socket string, args ...string) *externalService {
	t.Helper()
	s := &externalService{t: t, name: name, binary: binary, socket: socket, args: args, out: &syncBuffer{}}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("flotilla-%s (%s) output:\n%s", binary, name, s.out.String())
		}
	})
	s.start()
	return s
}

func (s *externalService) start() {
	s.t.Helper()
	s.cmd = exec.Command(filepath.Join(binDir, "flotilla-"+s.binary), append([]string{"--socket", s.socket, "--log-level", "debug"}, s.args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start flotilla-%s: %v", s.binary, err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	waitFor(s.t, 20*time.Second, "flotilla-"+s.binary+" to answer Describe on "+s.socket, func() bool {
		select {
		case <-done:
			s.t.Fatalf("flotilla-%s exited at start:\n%s", s.binary, s.out.String())
		default:
		}
		_, err := describeAt(s.socket)
		return err == nil
	})
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (s *externalService) kill() {
	s.t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

func (s *externalService) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// describeAt asks the service on socket to describe itself.
func describeAt(socket string) (*servicepb.DescribeResponse, error) {
	conn, err := rpc.Dial(socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	return servicepb.NewServiceClient(conn).Describe(ctx, &servicepb.DescribeRequest{}, grpc.WaitForReady(true))
}

// externalGraph is flotillad as a gateway only: every service of the graph
// runs outside it, laid out as flotillad would lay them out (socket
// <state>/<name>.sock, root <root>/<name>, state <state>/<name>).
type externalGraph struct {
	d        *daemon
	services map[string]*externalService
}

// externalConfig names every service's socket under state.
func externalConfig(state string) string {
	sock := func(name string) string { return filepath.Join(state, name+".sock") }
	return fmt.Sprintf(`
[snapshotters.native]
disabled = true
[services.content]
address = %q
[services.snapshotter-overlayfs]
address = %q
[services.metadata]
address = %q
[services.transfer]
address = %q
[services.tasks]
address = %q
[services.cri]
address = %q
`, sock("content"), sock("snapshotter-overlayfs"), sock("metadata"), sock("transfer"), sock("tasks"), sock("cri"))
}

// startExternalGraph starts each service by hand in dependency order, each
// given the sockets of the services it calls and the gateway's, then
// flotillad.
func startExternalGraph(t *testing.T) *externalGraph {
	t.Helper()
	requireRoot(t)
	var d *daemon
	d = newDaemon(t, func(dd *daemon, args *[]string) {
		withConfig(externalConfig(dd.state))(dd, args)
	})
	t.Cleanup(func() { unmountUnder(d.dir) })
	sock := func(name string) string { return filepath.Join(d.state, name+".sock") }
	dirs := func(name string) []string {
		return []string{"--root", filepath.Join(d.root, name), "--state", filepath.Join(d.state, name)}
	}
	g := &externalGraph{d: d, services: map[string]*externalService{}}
	add := func(name, binary string, args ...string) {
		g.services[name] = startExternal(t, name, binary, sock(name), append(dirs(name), args...)...)
	}
	// It serves the namespaced reads and writes, asking metadata, which
	// starts after it.
	add("content", "content", "--dep", "metadata="+sock("metadata"))
	// The default snapshotter also serves layer apply, as flotillad asks
	// the first snapshotter it starts to.
	// It reaches metadata, which starts after it, once it is asked to
	// apply a layer.
	add("snapshotter-overlayfs", "snapshotter",
		"--option", "driver=overlayfs", "--option", "name=overlayfs", "--option", "serve_diff=true",
		"--gateway", d.address, "--dep", "content="+sock("content"), "--dep", "metadata="+sock("metadata"))
	add("metadata", "metadata",
		"--dep", "content="+sock("content"), "--snapshotter", "overlayfs="+sock("snapshotter-overlayfs"),
		"--gateway", d.address)
	add("transfer", "transfer", "--gateway", d.address, "--dep", "metadata="+sock("metadata"), "--dep", "content="+sock("content"),
		"--snapshotter", "overlayfs="+sock("snapshotter-overlayfs"))
	add("tasks", "tasks", "--gateway", d.address, "--dep", "metadata="+sock("metadata"))
	add("cri", "cri", "--gateway", d.address,
		"--dep", "metadata="+sock("metadata"), "--dep", "tasks="+sock("tasks"), "--dep", "content="+sock("content"),
		"--snapshotter", "overlayfs="+sock("snapshotter-overlayfs"))
	d.start()
	return g
}

func TestDaemonRoutesToServicesRunOutsideItAndRunsAContainer(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	requireTool(t, "runc", "runc")
	g := startExternalGraph(t)
	d := g.d
	t.Cleanup(d.reapLeftovers)

	// flotillad started no process: each service is the one started here.
	c := d.client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]map[string]string{}
	for _, p := range resp.Plugins {
		listed[p.ID] = p.Exports
	}
	for name, s := range g.services {
		id := name
		if name == "snapshotter-overlayfs" {
			id = "overlayfs"
		}
		ex, ok := listed[id]
		if !ok {
			t.Errorf("Introspection does not list %s (plugins %v)", id, resp.Plugins)
			continue
		}
		if ex["external"] != "true" || ex["socket"] != s.socket || ex["pid"] != fmt.Sprint(s.cmd.Process.Pid) {
			t.Errorf("Introspection lists %s with exports %v; want external=true, socket %s, pid %d", id, ex, s.socket, s.cmd.Process.Pid)
		}
	}
	if _, ok := listed["native"]; ok {
		t.Errorf("Introspection lists the disabled native snapshotter")
	}

	_, archive := imageArchive(t, testimage.WithName(busyboxRef))
	d.mustCtr("images", "import", archive)
	out, err := d.ctrBytes("run", "--rm", busyboxRef, "ext1", "echo", "hello")
	if err != nil || string(out) != "hello\n" {
		t.Fatalf("ctr run --rm ... echo hello through services run outside flotillad: %v, output %q, want %q", err, out, "hello\n")
	}
	// The task events the shim published reached the gateway's exchange
	// from a tasks process flotillad does not own.
	if out := d.mustCtr("containers", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("ctr run --rm left containers: %q", out)
	}
}

func TestDaemonFollowsAnExternalServiceThroughItsRestart(t *testing.T) {
	g := startExternalGraph(t)
	d := g.d
	if out := d.mustCtr("namespaces", "create", "before"); out != "" {
		t.Logf("ctr namespaces create: %s", out)
	}
	md := g.services["metadata"]
	md.kill()
	waitFor(t, 10*time.Second, "Introspection to show metadata as not answering", func() bool {
		return externalState(d, "metadata") == "restarting"
	})
	// Restarted where it runs (a container's restart policy, here by hand).
	md.start()
	out := d.mustCtr("namespaces", "ls", "-q")
	if !strings.Contains(out, "before") {
		t.Fatalf("after metadata's restart ctr namespaces ls shows %q, want the namespace made before", out)
	}
	waitFor(t, 10*time.Second, "Introspection to show metadata's new process", func() bool {
		pid, err := d.introspectPid("metadata")
		return err == nil && pid == md.cmd.Process.Pid && externalState(d, "metadata") == "running"
	})
	d.mustCtr("namespaces", "create", "after")
}

// externalState is the state Introspection reports for a service.
func externalState(d *daemon, id string) string {
	c, err := containerd.New(d.address, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return ""
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx, "id=="+id)
	if err != nil || len(resp.Plugins) == 0 {
		return ""
	}
	return resp.Plugins[0].Exports["state"]
}

func TestDaemonStartupNamesAnExternalServiceThatDoesNotAnswer(t *testing.T) {
	d := newDaemon(t, withConfig(`
[timeouts]
service_start = "2s"
[services.content]
address = "/nonexistent/flotilla-content.sock"
`))
	err := d.startErr()
	if err == nil {
		t.Fatalf("flotillad became ready without the content service it was told runs at /nonexistent")
	}
	if werr := d.wait(10 * time.Second); werr == nil {
		t.Fatalf("flotillad exited cleanly; want a failed startup")
	}
	out := d.out.String()
	if !strings.Contains(out, "service content failed to start") || !strings.Contains(out, "/nonexistent/flotilla-content.sock") {
		t.Fatalf("flotillad's failure does not name the content service and its address:\n%s", out)
	}
	// Nothing it would have started after content was started.
	if strings.Contains(out, "service running") {
		t.Errorf("flotillad started services although content never answered:\n%s", out)
	}
}
