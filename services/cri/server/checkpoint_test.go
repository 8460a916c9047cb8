package server

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/flotilla-project/flotilla/services/cri/image"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestCRIUsFirstErrorIsTheReason(t *testing.T) {
	out := `Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds
Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable
Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.
`
	if got := criuReason(out, errors.New("exit status 1")); got != "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds" {
		t.Errorf("reason %q", got)
	}
	if got := criuReason("", errors.New("exit status 1")); got != "exit status 1" {
		t.Errorf("reason without output %q", got)
	}
}

func TestCheckpointWithoutCRIUIsAFailedPreconditionNamingTheReason(t *testing.T) {
	saved := criu
	t.Cleanup(func() { criu = saved })
	criu = &criuProbe{check: func() error { return errors.New("criu check: vdso: Unexpected rt vDSO area bounds") }}
	s := &Server{}
	ctx := context.Background()
	_, err := s.CheckpointContainer(ctx, &runtime.CheckpointContainerRequest{ContainerId: "abc", Location: "/tmp/x.tar"})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "vDSO") {
		t.Errorf("CheckpointContainer: %v; want a failed precondition with CRIU's reason", err)
	}
	if _, err := s.CheckpointPod(ctx, &runtime.CheckpointPodRequest{PodSandboxId: "p"}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("CheckpointPod: %v", err)
	}
	if _, err := s.RestorePod(ctx, &runtime.RestorePodRequest{CheckpointPath: "/tmp/x"}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("RestorePod: %v", err)
	}
}

func TestStreamBatchesSendEachItemOnce(t *testing.T) {
	items := make([]int, 2*image.StreamBatch+1)
	for i := range items {
		items[i] = i
	}
	var sizes []int
	next := 0
	if err := sendBatches(items, func(b []int) error {
		sizes = append(sizes, len(b))
		for _, v := range b {
			if v != next {
				t.Fatalf("item %d after %d", v, next-1)
			}
			next++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 3 || sizes[2] != 1 || next != len(items) {
		t.Errorf("batches %v, sent %d of %d", sizes, next, len(items))
	}
	if err := sendBatches([]int{}, func([]int) error { t.Error("a batch for no items"); return nil }); err != nil {
		t.Fatal(err)
	}
}
