// Package manager is the mounts service's mount manager: containerd 2.2's
// mount.Manager (core/mount's interface) over a bbolt file of its own (see
// store.go). An activation takes a list of mounts, each mounted on top of
// what the ones before it make possible, and mounts, outside any container,
// those the caller cannot: every mount up to the last one whose type carries
// a transform (format/, mkdir/, mkfs/, see transform.go), or every one for a
// temporary activation. What it mounts goes under <state>/t/<id>/<index>;
// the rest, transformed, it hands back as the system mounts the caller
// performs (in a container's mount namespace, say). An activation with
// nothing to do here is NotImplemented, as containerd's: the caller mounts
// as it would have without a manager.
//
// Activations are per namespace and kept until deactivated. One a crash
// interrupted (a record without its active mounts, or a directory under
// <state>/t without a record) is unmounted and removed when the service
// starts.
package manager

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// Manager activates and deactivates mounts. It implements mount.Manager.
type Manager struct {
	db      *bolt.DB
	targets string
	// roots are where mkdir and mkfs may act: the targets and Flotilla's
	// root, as containerd's manager allows its own root.
	roots []*os.Root

	mu     sync.Mutex
	naming map[string]chan struct{} // ns/name -> held while (de)activating
}

var _ mount.Manager = (*Manager)(nil)

// Open opens (creating) the manager's database under state, its mount
// points under <state>/t, and lets mkdir and mkfs act under allowed too.
func Open(state string, allowed ...string) (*Manager, error) {
	targets := filepath.Join(state, "t")
	if err := os.MkdirAll(targets, 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(state, "mounts.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second, NoStatistics: true})
	if err != nil {
		return nil, fmt.Errorf("open mounts.db: %w", err)
	}
	m := &Manager{db: db, targets: targets, naming: map[string]chan struct{}{}}
	for _, dir := range append([]string{targets}, allowed...) {
		if dir == "" {
			continue
		}
		r, err := os.OpenRoot(dir)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("allowed root %s: %w", dir, err)
		}
		m.roots = append(m.roots, r)
	}
	return m, nil
}

// Close closes the database; activations stay mounted.
func (m *Manager) Close() error {
	var errs []error
	for _, r := range m.roots {
		errs = append(errs, r.Close())
	}
	return errors.Join(append(errs, m.db.Close())...)
}

// lock holds ns/name against concurrent (de)activation, honouring ctx.
func (m *Manager) lock(ctx context.Context, ns, name string) (func(), error) {
	key := ns + "/" + name
	for {
		m.mu.Lock()
		held, busy := m.naming[key]
		if !busy {
			ch := make(chan struct{})
			m.naming[key] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.naming, key)
				m.mu.Unlock()
				close(ch)
			}, nil
		}
		m.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func namespaceAndName(ctx context.Context, name string) (string, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	if name == "" {
		return "", fmt.Errorf("activation name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("activation name %q: %w", name, errdefs.ErrInvalidArgument)
	}
	return ns, identifiers.Validate(ns)
}

// plan says which mounts the manager mounts itself: those before the
// first system mount, the one it returns first. -1: none needs it.
func plan(mounts []mount.Mount, temporary bool) int {
	if temporary {
		return len(mounts)
	}
	first := -1
	for i, mt := range mounts {
		if transforms, _ := splitType(mt.Type); len(transforms) > 0 {
			first = i
		}
	}
	return first
}

// Activate mounts what the caller cannot of mounts and records the
// activation under name. An activation of that name already complete is
// AlreadyExists.
func (m *Manager) Activate(ctx context.Context, name string, mounts []mount.Mount, opts ...mount.ActivateOpt) (_ mount.ActivationInfo, retErr error) {
	ns, err := namespaceAndName(ctx, name)
	if err != nil {
		return mount.ActivationInfo{}, err
	}
	var cfg mount.ActivateOptions
	for _, o := range opts {
		o(&cfg)
	}
	first := plan(mounts, cfg.Temporary)
	if first < 0 || len(mounts) == 0 {
		return mount.ActivationInfo{}, fmt.Errorf("no mount of %q needs the mount manager: %w", name, errdefs.ErrNotImplemented)
	}
	for _, mt := range mounts {
		transforms, _ := splitType(mt.Type)
		for _, t := range transforms {
			if _, err := m.transformFor(t); err != nil {
				return mount.ActivationInfo{}, err
			}
		}
	}
	unlock, err := m.lock(ctx, ns, name)
	if err != nil {
		return mount.ActivationInfo{}, err
	}
	defer unlock()
	lease, leased := leases.FromContext(ctx)
	now := time.Now().UTC()

	// The record first, without its active mounts: a crash before the end
	// leaves a record the next start recognises as interrupted.
	var id, stale uint64
	if err := m.db.Update(func(tx *bolt.Tx) error {
		v1, err := tx.CreateBucketIfNotExists(bucketV1)
		if err != nil {
			return err
		}
		nb, err := v1.CreateBucketIfNotExists([]byte(ns))
		if err != nil {
			return err
		}
		mb, err := nb.CreateBucketIfNotExists(bucketMounts)
		if err != nil {
			return err
		}
		if old := mb.Bucket([]byte(name)); old != nil {
			if old.Bucket(bucketActive) != nil {
				return fmt.Errorf("activation %q: %w", name, errdefs.ErrAlreadyExists)
			}
			stale, _ = binary.Uvarint(old.Get(keyID))
			if err := deleteRecord(tx, ns, name); err != nil {
				return err
			}
		}
		b, err := mb.CreateBucket([]byte(name))
		if err != nil {
			return err
		}
		if id, err = v1.NextSequence(); err != nil {
			return err
		}
		if err := b.Put(keyID, binary.AppendUvarint(nil, id)); err != nil {
			return err
		}
		if err := putTime(b, keyCreated, now); err != nil {
			return err
		}
		if err := putTime(b, keyUpdated, now); err != nil {
			return err
		}
		if err := putLabels(b, cfg.Labels); err != nil {
			return err
		}
		if leased {
			if err := b.Put(keyLease, []byte(lease)); err != nil {
				return err
			}
			lb, err := nb.CreateBucketIfNotExists(bucketLeases)
			if err != nil {
				return err
			}
			lease, err := lb.CreateBucketIfNotExists([]byte(lease))
			if err != nil {
				return err
			}
			return lease.Put([]byte(name), nil)
		}
		return nil
	}); err != nil {
		return mount.ActivationInfo{}, err
	}
	if stale != 0 {
		if err := m.unmountDir(ctx, m.dir(stale)); err != nil {
			logging.G(ctx).Warn("mounts of an interrupted activation", "name", name, "id", stale, "error", err)
		}
	}
	dir := m.dir(id)
	var active []mount.ActiveMount
	defer func() {
		if retErr == nil {
			return
		}
		if err := m.unmount(active); err == nil {
			_ = os.Remove(dir)
		} else {
			logging.G(ctx).Error("unmount after a failed activation", "name", name, "error", err)
		}
		if err := m.db.Update(func(tx *bolt.Tx) error { return deleteRecord(tx, ns, name) }); err != nil {
			logging.G(ctx).Error("forget a failed activation", "name", name, "error", err)
		}
	}()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return mount.ActivationInfo{}, err
	}
	for i, mt := range mounts[:first] {
		if mt, err = m.applyTransforms(ctx, mt, active); err != nil {
			return mount.ActivationInfo{}, err
		}
		mp := filepath.Join(dir, strconv.Itoa(i))
		if err := os.Mkdir(mp, 0o700); err != nil {
			return mount.ActivationInfo{}, err
		}
		if err := mt.Mount(mp); err != nil {
			_ = os.Remove(mp)
			return mount.ActivationInfo{}, fmt.Errorf("mount %d (%s %s) of %q: %w", i, mt.Type, mt.Source, name, err)
		}
		at := time.Now().UTC()
		active = append(active, mount.ActiveMount{Mount: mt, MountPoint: mp, MountedAt: &at})
	}
	system := slices.Clone(mounts[first:])
	if len(system) > 0 {
		if system[0], err = m.applyTransforms(ctx, system[0], active); err != nil {
			return mount.ActivationInfo{}, err
		}
	}
	if cfg.Temporary {
		// Everything is mounted here; the caller gets it as one bind.
		system = []mount.Mount{{Type: "bind", Source: active[len(active)-1].MountPoint, Options: []string{"rbind"}}}
	}
	if err := m.db.Update(func(tx *bolt.Tx) error {
		b := mountsBucket(tx, ns).Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("activation %q vanished while activating: %w", name, errdefs.ErrAborted)
		}
		return putActivation(b, active, system, time.Now().UTC())
	}); err != nil {
		return mount.ActivationInfo{}, err
	}
	return mount.ActivationInfo{Name: name, Active: active, System: system, Labels: cfg.Labels}, nil
}

func (m *Manager) dir(id uint64) string { return filepath.Join(m.targets, strconv.FormatUint(id, 10)) }

// unmount undoes active mounts, the last mounted first, removing their
// mount points.
func (m *Manager) unmount(active []mount.ActiveMount) error {
	var errs []error
	for _, a := range slices.Backward(active) {
		if err := unmountPoint(a.MountPoint); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmountPoint unmounts whatever is mounted at mp and removes the (then
// empty) directory. Nothing is ever removed recursively: a directory still
// mounted keeps what the mount holds.
func unmountPoint(mp string) error {
	if err := mount.UnmountAll(mp, 0); err != nil {
		if err := mount.UnmountAll(mp, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	if err := os.Remove(mp); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// unmountDir unmounts and removes an activation's directory whose record
// is lost: its mount points in the reverse of their mounting order.
func (m *Manager) unmountDir(_ context.Context, dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var idx []int
	for _, e := range entries {
		if i, err := strconv.Atoi(e.Name()); err == nil {
			idx = append(idx, i)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(idx)))
	var errs []error
	for _, i := range idx {
		if err := unmountPoint(filepath.Join(dir, strconv.Itoa(i))); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Deactivate unmounts an activation and forgets it.
func (m *Manager) Deactivate(ctx context.Context, name string) error {
	return m.deactivate(ctx, name, 0)
}

// deactivate is Deactivate of the activation numbered id (any, for 0): the
// collector's decision is about the activation it looked at, not one made
// again under its name since.
func (m *Manager) deactivate(ctx context.Context, name string, id uint64) error {
	ns, err := namespaceAndName(ctx, name)
	if err != nil {
		return err
	}
	unlock, err := m.lock(ctx, ns, name)
	if err != nil {
		return err
	}
	defer unlock()
	var rec record
	if err := m.db.Update(func(tx *bolt.Tx) error {
		mb := mountsBucket(tx, ns)
		if mb == nil || mb.Bucket([]byte(name)) == nil {
			return fmt.Errorf("activation %q: %w", name, errdefs.ErrNotFound)
		}
		var err error
		if rec, err = readRecord(name, mb.Bucket([]byte(name))); err != nil {
			return err
		}
		if id != 0 && rec.id != id {
			return fmt.Errorf("activation %q was made again: %w", name, errdefs.ErrNotFound)
		}
		return deleteRecord(tx, ns, name)
	}); err != nil {
		return err
	}
	// The record is gone first: mounts that fail to unmount are found
	// again, without a record, at the next start.
	if err := m.unmount(rec.info.Active); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	if err := m.unmountDir(ctx, m.dir(rec.id)); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	return nil
}

// Info describes an activation.
func (m *Manager) Info(ctx context.Context, name string) (mount.ActivationInfo, error) {
	ns, err := namespaceAndName(ctx, name)
	if err != nil {
		return mount.ActivationInfo{}, err
	}
	var rec record
	err = m.db.View(func(tx *bolt.Tx) error {
		mb := mountsBucket(tx, ns)
		if mb == nil || mb.Bucket([]byte(name)) == nil {
			return fmt.Errorf("activation %q: %w", name, errdefs.ErrNotFound)
		}
		rec, err = readRecord(name, mb.Bucket([]byte(name)))
		return err
	})
	return rec.info, err
}

// Update changes an activation's labels, the one thing of it that may
// change: fieldpaths "labels" (all of them) or "labels.<key>" (one; an
// empty value removes it); none means the labels. Anything else is
// InvalidArgument.
func (m *Manager) Update(ctx context.Context, info mount.ActivationInfo, fieldpaths ...string) (mount.ActivationInfo, error) {
	ns, err := namespaceAndName(ctx, info.Name)
	if err != nil {
		return mount.ActivationInfo{}, err
	}
	if len(fieldpaths) == 0 {
		fieldpaths = []string{"labels"}
	}
	var rec record
	err = m.db.Update(func(tx *bolt.Tx) error {
		mb := mountsBucket(tx, ns)
		b := (*bolt.Bucket)(nil)
		if mb != nil {
			b = mb.Bucket([]byte(info.Name))
		}
		if b == nil {
			return fmt.Errorf("activation %q: %w", info.Name, errdefs.ErrNotFound)
		}
		if rec, err = readRecord(info.Name, b); err != nil {
			return err
		}
		labels := rec.info.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		for _, p := range fieldpaths {
			switch key, ok := strings.CutPrefix(p, "labels."); {
			case p == "labels":
				labels = map[string]string{}
				for k, v := range info.Labels {
					labels[k] = v
				}
			case ok && key != "":
				if v := info.Labels[key]; v != "" {
					labels[key] = v
				} else {
					delete(labels, key)
				}
			default:
				return fmt.Errorf("cannot update %q of activation %q (only labels): %w", p, info.Name, errdefs.ErrInvalidArgument)
			}
		}
		if len(labels) == 0 {
			labels = nil
		}
		rec.info.Labels = labels
		if err := putLabels(b, labels); err != nil {
			return err
		}
		return putTime(b, keyUpdated, time.Now().UTC())
	})
	return rec.info, err
}

// List lists the namespace's activations matching any of filters
// (containerd's filter syntax over name and labels).
func (m *Manager) List(ctx context.Context, fs ...string) ([]mount.ActivationInfo, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []mount.ActivationInfo
	err = m.db.View(func(tx *bolt.Tx) error {
		mb := mountsBucket(tx, ns)
		if mb == nil {
			return nil
		}
		return mb.ForEachBucket(func(k []byte) error {
			rec, err := readRecord(string(k), mb.Bucket(k))
			if err != nil {
				return err
			}
			if filter.Match(adapt(rec.info)) {
				out = append(out, rec.info)
			}
			return nil
		})
	})
	return out, err
}

func adapt(info mount.ActivationInfo) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 0 {
			return "", false
		}
		switch fp[0] {
		case "name":
			return info.Name, true
		case "labels":
			if len(fp) < 2 {
				return "", len(info.Labels) > 0
			}
			v, ok := info.Labels[strings.Join(fp[1:], ".")]
			return v, ok
		}
		return "", false
	})
}

// Recover cleans up after a crash: activations whose record is incomplete
// are unmounted and forgotten, and directories under the targets that no
// record names are unmounted and removed.
func (m *Manager) Recover(ctx context.Context) error {
	type interrupted struct {
		ns, name string
	}
	var (
		drop []interrupted
		keep = map[string]bool{}
	)
	if err := m.db.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket(bucketV1)
		if v1 == nil {
			return nil
		}
		return v1.ForEachBucket(func(ns []byte) error {
			mb := mountsBucket(tx, string(ns))
			if mb == nil {
				return nil
			}
			return mb.ForEachBucket(func(k []byte) error {
				rec, err := readRecord(string(k), mb.Bucket(k))
				if err != nil {
					return err
				}
				if rec.complete {
					keep[strconv.FormatUint(rec.id, 10)] = true
				} else {
					drop = append(drop, interrupted{string(ns), string(k)})
				}
				return nil
			})
		})
	}); err != nil {
		return err
	}
	if len(drop) > 0 {
		if err := m.db.Update(func(tx *bolt.Tx) error {
			for _, d := range drop {
				if err := deleteRecord(tx, d.ns, d.name); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(m.targets)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		if err := m.unmountDir(ctx, filepath.Join(m.targets, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range drop {
		logging.G(ctx).Info("removed an activation a crash interrupted", "namespace", d.ns, "name", d.name)
	}
	return errors.Join(errs...)
}

// Held is an activation as the collector weighs it: what keeps it.
type Held struct {
	Namespace string
	Name      string
	// Lease is the lease it was activated under, if any.
	Lease string
	// Labels carry its back-references (containerd.io/gc.bref.*).
	Labels map[string]string
	id     uint64
}

// Collect deactivates the complete activations keep says nothing holds any
// more (their lease deleted, what they back-reference gone), as
// containerd's collector removes a mount manager's. keep errs on the side
// of keeping: an activation it cannot decide on stays. It returns how many
// it deactivated.
func (m *Manager) Collect(ctx context.Context, keep func(context.Context, Held) bool) (int, error) {
	var held []Held
	if err := m.db.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket(bucketV1)
		if v1 == nil {
			return nil
		}
		return v1.ForEachBucket(func(ns []byte) error {
			mb := mountsBucket(tx, string(ns))
			if mb == nil {
				return nil
			}
			return mb.ForEachBucket(func(k []byte) error {
				rec, err := readRecord(string(k), mb.Bucket(k))
				if err != nil || !rec.complete {
					return err
				}
				held = append(held, Held{Namespace: string(ns), Name: rec.info.Name, Lease: rec.lease, Labels: rec.info.Labels, id: rec.id})
				return nil
			})
		})
	}); err != nil {
		return 0, err
	}
	var (
		n    int
		errs []error
	)
	for _, h := range held {
		if keep(ctx, h) {
			continue
		}
		err := m.deactivate(namespaces.WithNamespace(ctx, h.Namespace), h.Name, h.id)
		switch {
		case err == nil:
			n++
			logging.G(ctx).Info("deactivated an activation nothing holds any more", "namespace", h.Namespace, "name", h.Name, "lease", h.Lease)
		case errdefs.IsNotFound(err):
		default:
			errs = append(errs, fmt.Errorf("deactivate %s/%s: %w", h.Namespace, h.Name, err))
		}
	}
	return n, errors.Join(errs...)
}
