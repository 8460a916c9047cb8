package store

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
)

// Store reads and writes the records on the containers service, and keeps
// what this process knows besides: locks, just-created records and the
// name index.
type Store struct {
	containers containers.Store

	mu    sync.Mutex
	locks map[string]*sync.Mutex
	// created holds the records this process created and has not
	// rewritten since; see Created.
	created map[string]Created
	// reserved are the names of sandboxes and containers being
	// created: names are unique, and the record appears only at the
	// end of a create.
	reserved map[string]bool
	// names maps kind/name to the ID of the record holding it, and
	// nameOf back, once namesLoaded[kind]; see ReserveName.
	names       map[string]string
	nameOf      map[string]string
	namesLoaded map[string]bool
}

// New is a store over the containers service; calls on it must carry
// the CRI namespace.
func New(cs containers.Store) *Store {
	return &Store{
		containers:  cs,
		locks:       map[string]*sync.Mutex{},
		created:     map[string]Created{},
		reserved:    map[string]bool{},
		names:       map[string]string{},
		nameOf:      map[string]string{},
		namesLoaded: map[string]bool{},
	}
}

// List lists the records of one kind.
func (s *Store) List(ctx context.Context, kind string) ([]containers.Container, error) {
	cs, err := s.containers.List(ctx, fmt.Sprintf(`labels."%s"==%s`, KindLabel, kind))
	if err != nil {
		return nil, fmt.Errorf("list %s records: %w", kind, err)
	}
	return cs, nil
}

// Get finds the record of one kind by ID or unique ID prefix, as
// crictl passes truncated IDs.
func (s *Store) Get(ctx context.Context, kind, id string) (containers.Container, error) {
	if id == "" {
		return containers.Container{}, fmt.Errorf("no %s ID given: %w", kind, errdefs.ErrInvalidArgument)
	}
	c, err := s.containers.Get(ctx, id)
	if err == nil && c.Labels[KindLabel] == kind {
		return c, nil
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return containers.Container{}, fmt.Errorf("%s %s: %w", kind, id, err)
	}
	all, err := s.List(ctx, kind)
	if err != nil {
		return containers.Container{}, err
	}
	var found []containers.Container
	for _, c := range all {
		if strings.HasPrefix(c.ID, id) {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return containers.Container{}, fmt.Errorf("%s %s: %w", kind, id, errdefs.ErrNotFound)
	default:
		return containers.Container{}, fmt.Errorf("%s ID prefix %s is ambiguous: %w", kind, id, errdefs.ErrInvalidArgument)
	}
}

// Container finds a CRI container's record by ID or unique ID prefix.
func (s *Store) Container(ctx context.Context, id string) (*Container, containers.Container, error) {
	c, err := s.Get(ctx, KindContainer, id)
	if err != nil {
		return nil, c, err
	}
	m, err := DecodeContainer(c)
	return m, c, err
}

// SandboxContainers lists the container records of one sandbox.
func (s *Store) SandboxContainers(ctx context.Context, sandboxID string) ([]containers.Container, error) {
	cs, err := s.containers.List(ctx,
		fmt.Sprintf(`labels."%s"==%s,labels."%s"==%s`, KindLabel, KindContainer, SandboxIDLabel, sandboxID))
	if err != nil {
		return nil, fmt.Errorf("containers of sandbox %s: %w", sandboxID, err)
	}
	return cs, nil
}

// SaveSandbox rewrites a sandbox's extension.
func (s *Store) SaveSandbox(ctx context.Context, m *Sandbox) error {
	s.ForgetCreated(m.ID)
	ext, err := EncodeExtension(SandboxExtension, m)
	if err != nil {
		return err
	}
	_, err = s.containers.Update(ctx, containers.Container{
		ID: m.ID, Extensions: map[string]typeurl.Any{SandboxExtension: ext},
	}, "extensions."+SandboxExtension)
	if err != nil {
		return fmt.Errorf("update sandbox %s: %w", m.ID, err)
	}
	return nil
}

// SaveContainer rewrites a container's extension.
func (s *Store) SaveContainer(ctx context.Context, m *Container) error {
	s.ForgetCreated(m.ID)
	ext, err := EncodeExtension(ContainerExtension, m)
	if err != nil {
		return err
	}
	_, err = s.containers.Update(ctx, containers.Container{
		ID: m.ID, Extensions: map[string]typeurl.Any{ContainerExtension: ext},
	}, "extensions."+ContainerExtension)
	if err != nil {
		return fmt.Errorf("update container %s: %w", m.ID, err)
	}
	return nil
}

// Created is a record this process created and has not rewritten
// since, with the mounts its snapshot was prepared with: what a Get and
// Snapshots.Mounts would answer, kept so that the calls that follow a
// create (CreateContainer in a new pod, StartContainer) need not ask. It
// holds only what this process wrote, so a restart merely empties it.
type Created struct {
	Record containers.Container
	Mounts []mount.Mount
}

// RememberCreated keeps a record just created, for Created.
func (s *Store) RememberCreated(rec containers.Container, mounts []mount.Mount) {
	s.mu.Lock()
	s.created[rec.ID] = Created{Record: rec, Mounts: mounts}
	s.mu.Unlock()
}

// Created returns the kept record of an object of kind by its full ID.
func (s *Store) Created(kind, id string) (Created, bool) {
	s.mu.Lock()
	r, ok := s.created[id]
	s.mu.Unlock()
	return r, ok && r.Record.Labels[KindLabel] == kind
}

// ForgetCreated drops a kept record: it is about to be rewritten.
func (s *Store) ForgetCreated(id string) {
	s.mu.Lock()
	delete(s.created, id)
	s.mu.Unlock()
}

// Lock serialises the lifecycle calls on one object.
func (s *Store) Lock(id string) func() {
	s.mu.Lock()
	l, ok := s.locks[id]
	if !ok {
		l = &sync.Mutex{}
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// TryLock takes an object's lifecycle lock if it frees within d.
func (s *Store) TryLock(id string, d time.Duration) (func(), bool) {
	s.mu.Lock()
	l, ok := s.locks[id]
	s.mu.Unlock()
	if !ok {
		return s.Lock(id), true
	}
	for deadline := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if l.TryLock() {
			return l.Unlock, true
		}
		if time.Now().After(deadline) {
			return nil, false
		}
	}
}

// Forget drops what is kept of a removed object: its name, lock and
// created record.
func (s *Store) Forget(id string) {
	s.mu.Lock()
	if key, ok := s.nameOf[id]; ok && s.names[key] == id {
		delete(s.names, key)
	}
	delete(s.nameOf, id)
	delete(s.locks, id)
	delete(s.created, id)
	s.mu.Unlock()
}
