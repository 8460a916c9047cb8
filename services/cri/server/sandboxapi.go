package server

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// Every CRI pod also has a record in containerd's Sandbox Store (kept by
// metadata), as containerd 2.x's CRI keeps one, so that `ctr sandboxes`
// and the containerd client's sandbox calls see the pods. The pod's own
// record stays its container record (store.go); the Sandbox Store's copy
// is derived from it:
//
//	sandboxer   "podsandbox", containerd's controller of CRI pods, which
//	            this process serves (controller.go)
//	runtime     the pause container's runtime and its options
//	spec        the pause container's OCI spec
//	labels      the pause container's labels and oci_runtime_type, as
//	            containerd's podsandbox controller gives them
//	extensions  io.flotilla.cri.sandbox.v1, the pod's store.Sandbox
//
// RunPodSandbox writes it once the pause container exists, StopPodSandbox
// refreshes it, RemovePodSandbox deletes it after the container; a crash in
// between leaves a pod without a record or a record without a pod, which
// RecoverSandboxes mends when the process starts.

// podSandboxer is the sandboxer of CRI pods, containerd 2.x's name for its
// podsandbox controller.
const podSandboxer = "podsandbox"

// podRecord is a pod's Sandbox Store record, from its container record.
func podRecord(rec containers.Container) sandbox.Sandbox {
	labels := maps.Clone(rec.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels["oci_runtime_type"] = rec.Runtime.Name
	sb := sandbox.Sandbox{
		ID:        rec.ID,
		Labels:    labels,
		Runtime:   sandbox.RuntimeOpts{Name: rec.Runtime.Name, Options: rec.Runtime.Options},
		Spec:      rec.Spec,
		Sandboxer: podSandboxer,
	}
	if ext, ok := rec.Extensions[store.SandboxExtension]; ok {
		sb.Extensions = map[string]typeurl.Any{store.SandboxExtension: ext}
	}
	return sb
}

// createPodRecord records a new pod in the Sandbox Store; a record
// already there (RecoverSandboxes got there first) is brought up to date.
func (s *Server) createPodRecord(ctx context.Context, rec containers.Container) error {
	store := s.client.SandboxStore()
	_, err := store.Create(ctx, podRecord(rec))
	if errdefs.IsAlreadyExists(err) {
		_, err = store.Update(ctx, podRecord(rec))
	}
	if err != nil {
		return fmt.Errorf("record sandbox %s in the sandbox store: %w", rec.ID, err)
	}
	return nil
}

// refreshPodRecord rewrites a pod's record from its container record,
// creating it if it is missing.
func (s *Server) refreshPodRecord(ctx context.Context, id string) error {
	rec, err := s.client.ContainerService().Get(ctx, id)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}
	_, err = s.client.SandboxStore().Update(ctx, podRecord(rec))
	if errdefs.IsNotFound(err) {
		return s.createPodRecord(ctx, rec)
	}
	if err != nil {
		return fmt.Errorf("update sandbox %s in the sandbox store: %w", id, err)
	}
	return nil
}

// deletePodRecord removes a pod's record; one already gone is fine.
func (s *Server) deletePodRecord(ctx context.Context, id string) error {
	if err := s.client.SandboxStore().Delete(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete sandbox %s from the sandbox store: %w", id, err)
	}
	return nil
}

// RecoverSandboxes makes the Sandbox Store agree with the pods: podsandbox
// records of pods that no longer exist are deleted, pods without a record
// get one. It retries until metadata answers, for at most a minute.
func (s *Server) RecoverSandboxes(ctx context.Context) {
	ctx = withNamespace(ctx)
	var err error
	for i := 0; i < 60; i++ {
		if err = s.reconcileSandboxes(ctx); err == nil {
			return
		}
		select {
		case <-time.After(time.Second):
		case <-s.bg.Done():
			return
		}
	}
	logging.G(ctx).Error("recover sandbox store records", "error", err)
}

func (s *Server) reconcileSandboxes(ctx context.Context) error {
	// The records first: a pod's container exists before its record, so
	// every record listed here whose pod is missing from the listing
	// below belongs to a pod that was removed (or never finished).
	stored, err := s.client.SandboxStore().List(ctx)
	if err != nil {
		return fmt.Errorf("list sandbox store: %w", err)
	}
	pods, err := s.store.List(ctx, store.KindSandbox)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, sb := range stored {
		if sb.Sandboxer == podSandboxer {
			have[sb.ID] = true
		}
	}
	isPod := map[string]bool{}
	var added, removed int
	for _, c := range pods {
		isPod[c.ID] = true
		if have[c.ID] {
			continue
		}
		// Under the pod's lock, so that a RemovePodSandbox running
		// meanwhile cannot delete the record before it is written.
		unlock := s.store.Lock(c.ID)
		if _, err := s.client.ContainerService().Get(ctx, c.ID); err == nil {
			err = s.createPodRecord(ctx, c)
			if err != nil {
				unlock()
				return err
			}
			added++
		}
		unlock()
	}
	for id := range have {
		if isPod[id] {
			continue
		}
		unlock := s.store.Lock(id)
		_, err := s.client.ContainerService().Get(ctx, id)
		if errdefs.IsNotFound(err) {
			err = s.deletePodRecord(ctx, id)
			removed++
		}
		unlock()
		if err != nil {
			return err
		}
	}
	logging.G(ctx).Debug("sandbox store recovered", "pods", len(pods), "added", added, "removed", removed)
	return nil
}
