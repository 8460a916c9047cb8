package watch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
)

type exitRecord struct {
	id   string
	code int32
	oom  bool
}

type recordingHooks struct {
	mu     sync.Mutex
	exited []exitRecord
}

func (h *recordingHooks) OOMKilled(context.Context, string) bool { return true }

func (h *recordingHooks) Exited(_ context.Context, id string, code int32, _ time.Time, oom bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.exited = append(h.exited, exitRecord{id, code, oom})
}

type deletedTask struct{ deleted chan struct{} }

func (t deletedTask) Delete(context.Context, ...containerd.ProcessDeleteOpts) (*containerd.ExitStatus, error) {
	close(t.deleted)
	return nil, nil
}

// TestWatchRecordsTheExitOnce: a container's one watcher deletes its task,
// closes its log and hands on its exit code with the OOM verdict; watching
// it again is the same watcher; once done, its log is no longer kept.
func TestWatchRecordsTheExitOnce(t *testing.T) {
	hooks := &recordingHooks{}
	w := New(context.Background(), nil, hooks)
	path := filepath.Join(t.TempDir(), "c1.log")
	lg, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	stdout, _ := lg.Writers()
	if _, err := stdout.Write([]byte("partial line")); err != nil {
		t.Fatal(err)
	}
	task := deletedTask{make(chan struct{})}
	exitC := make(chan containerd.ExitStatus, 1)
	done := w.Watch("c1", task, exitC, lg)
	if again := w.Watch("c1", task, exitC, nil); again != done || w.Done("c1") != done {
		t.Fatal("a second watch of a container is not its first watcher")
	}
	if w.Log("c1") != lg {
		t.Fatal("the running container's log is not kept")
	}
	exitC <- *containerd.NewExitStatus(137, time.Now(), nil)
	<-done
	<-task.deleted
	if len(hooks.exited) != 1 || hooks.exited[0] != (exitRecord{"c1", 137, true}) {
		t.Fatalf("exits handed on: %+v; want c1's 137, OOM killed", hooks.exited)
	}
	if w.Log("c1") != nil {
		t.Error("the exited container's log is still kept")
	}
	// Closing the log flushes what the container left unfinished.
	if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), "stdout F partial line") {
		t.Errorf("log after the exit: %q, %v", b, err)
	}
}

// TestWatchStoppedForgetsTheContainer: a wait that ends in error (the
// process stopping) records nothing and leaves the container to be
// watched again.
func TestWatchStoppedForgetsTheContainer(t *testing.T) {
	hooks := &recordingHooks{}
	w := New(context.Background(), nil, hooks)
	exitC := make(chan containerd.ExitStatus, 1)
	done := w.Watch("c1", deletedTask{make(chan struct{})}, exitC, nil)
	exitC <- *containerd.NewExitStatus(containerd.UnknownExitStatus, time.Time{}, errors.New("context canceled"))
	<-done
	if len(hooks.exited) != 0 || w.Done("c1") != nil {
		t.Fatalf("exits %+v, watcher %v; want none of either", hooks.exited, w.Done("c1"))
	}
}
