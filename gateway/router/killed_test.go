package router

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"

	"github.com/flotilla-project/flotilla/pkg/rpc"
)

// TestKilledBackendProcess is not a test: run by
// TestRouterRidesOutAKilledServiceUnderReads as a child process, it serves
// Namespaces over gRPC and ttrpc, as a service does, until it is killed.
func TestKilledBackendProcess(t *testing.T) {
	sock := os.Getenv("FLOTILLA_ROUTER_TEST_BACKEND")
	if sock == "" {
		t.Skip("a helper process of TestRouterRidesOutAKilledServiceUnderReads")
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	g := rpc.NewServer(logger)
	tt, err := rpc.NewTTRPCServer()
	if err != nil {
		t.Fatal(err)
	}
	nsapi.RegisterNamespacesServer(rpc.NewRegistrar(logger, g.Server, tt), &stallingServer{})
	if _, err := rpc.ServeTTRPC(context.Background(), tt, sock+".ttrpc"); err != nil {
		t.Fatal(err)
	}
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	_ = g.Serve(l)
}

// A read in flight when the process of its service is killed, and those
// made right after, succeed once a new process serves: however the
// gateway's connections to the old one fail them, they are made again. The
// read is a List without a filter, whose request encodes to no bytes (the
// gateway once took an empty request for a call not to retry).
func TestRouterRidesOutAKilledServiceUnderReads(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts a backend process 20 times")
	}
	dir, err := os.MkdirTemp("", "rk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	sock := filepath.Join(dir, "b.sock")
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilledBackendProcess$")
		cmd.Env = append(os.Environ(), "FLOTILLA_ROUTER_TEST_BACKEND="+sock)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, err := os.Stat(sock); err == nil {
				if _, err := os.Stat(sock + ".ttrpc"); err == nil {
					return cmd
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("the backend process did not come up")
			}
		}
	}
	backend := start()
	t.Cleanup(func() { _ = backend.Process.Kill(); _ = backend.Wait() })
	c, router := throughRouter(t, logger, dir, "ns", sock, "containerd.services.namespaces.v1.Namespaces")
	router.SetFast("ns", sock+".ttrpc")
	client := nsapi.NewNamespacesClient(c)

	for round := range 20 {
		// Reads keep coming, as under load, while the process is killed.
		stop := make(chan struct{})
		errs := make(chan error, 1000)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := client.List(ctx, &nsapi.ListNamespacesRequest{})
					cancel()
					if err != nil {
						errs <- err
					}
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		_ = backend.Process.Signal(syscall.SIGKILL)
		_ = backend.Wait()
		os.Remove(sock)
		os.Remove(sock + ".ttrpc")
		backend = start()
		time.Sleep(50 * time.Millisecond)
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: a read failed when its service's process was killed: %v", round, err)
		}
	}
}
