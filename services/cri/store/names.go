package store

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
)

// ReserveName fails with AlreadyExists when an object of kind already has
// name; the reservation ends when release is called, by which time the
// record exists (or creation failed). The names of existing records are
// listed once per process and then kept by this process's creates and
// removes (only the cri makes these records); a name found taken is
// checked against its record, so a record removed by another client
// frees its name.
func (s *Store) ReserveName(ctx context.Context, kind, name string) (release func(), err error) {
	key := kind + "/" + name
	s.mu.Lock()
	if s.reserved[name] {
		s.mu.Unlock()
		return nil, fmt.Errorf("%s name %q is being created: %w", kind, name, errdefs.ErrAlreadyExists)
	}
	s.reserved[name] = true
	loaded := s.namesLoaded[kind]
	s.mu.Unlock()
	release = func() {
		s.mu.Lock()
		delete(s.reserved, name)
		s.mu.Unlock()
	}
	if !loaded {
		if err := s.loadNames(ctx, kind); err != nil {
			release()
			return nil, err
		}
	}
	s.mu.Lock()
	id, taken := s.names[key]
	s.mu.Unlock()
	if taken {
		_, err := s.containers.Get(ctx, id)
		switch {
		case errdefs.IsNotFound(err):
			s.ForgetName(id)
		case err != nil:
			release()
			return nil, fmt.Errorf("%s name %q: %w", kind, name, err)
		default:
			release()
			return nil, fmt.Errorf("%s name %q is reserved for %s: %w", kind, name, id, errdefs.ErrAlreadyExists)
		}
	}
	return release, nil
}

// loadNames lists the records of kind into the name index.
func (s *Store) loadNames(ctx context.Context, kind string) error {
	all, err := s.List(ctx, kind)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.namesLoaded[kind] {
		return nil
	}
	for _, c := range all {
		var name string
		if kind == KindSandbox {
			if m, err := DecodeSandbox(c); err == nil {
				name = m.Name
			}
		} else if m, err := DecodeContainer(c); err == nil {
			name = m.Name
		}
		if name != "" {
			s.names[kind+"/"+name] = c.ID
			s.nameOf[c.ID] = kind + "/" + name
		}
	}
	s.namesLoaded[kind] = true
	return nil
}

// AddName records a created object's name.
func (s *Store) AddName(kind, name, id string) {
	s.mu.Lock()
	s.names[kind+"/"+name] = id
	s.nameOf[id] = kind + "/" + name
	s.mu.Unlock()
}

// ForgetName frees a removed object's name.
func (s *Store) ForgetName(id string) {
	s.mu.Lock()
	if key, ok := s.nameOf[id]; ok && s.names[key] == id {
		delete(s.names, key)
	}
	delete(s.nameOf, id)
	s.mu.Unlock()
}
