// Package shim is the runtime v2 host of the tasks service: it lays out task
// bundles, starts shims with containerd's shim protocol, drives them over
// ttrpc, and finds them again after the tasks process restarts.
package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
)

// Bundle is the directory of one task, <state>/<namespace>/<id>. The shim
// runs with it as its working directory. Layout:
//
//	config.json       the OCI runtime spec, from the container record
//	rootfs/           mount point of the root filesystem (the shim mounts it)
//	work              symlink to <root>/<namespace>/<id>, the runtime's
//	                  persistent work directory (survives a reboot of /run)
//	log               FIFO the shim writes its log to; tasks reads it
//	shim-binary-path  the shim binary, for `delete` after the shim died
//	bootstrap.json    how to reach the shim (protocol, address, version),
//	                  written once it started; its presence marks a bundle
//	                  whose shim must be reconnected to after a restart
//
// The shim adds files of its own (init.pid, address, runtime, options.json,
// socket-dir, ...). Everything a restarted tasks process needs is in the
// bundle, so the state directory is the only record of running tasks.
type Bundle struct {
	ID        string
	Namespace string
	// Path is the bundle directory.
	Path string
	// Work is the persistent work directory.
	Work string
}

const (
	configFile     = "config.json"
	rootfsDir      = "rootfs"
	workLink       = "work"
	logFifo        = "log"
	binaryPathFile = "shim-binary-path"
	bootstrapFile  = "bootstrap.json"
)

// bundlePaths validates namespace and id (they become path elements) and
// returns the bundle for them, without touching the disk.
func bundlePaths(root, state, ns, id string) (*Bundle, error) {
	if err := identifiers.Validate(ns); err != nil {
		return nil, fmt.Errorf("namespace %q: %w", ns, err)
	}
	if err := identifiers.Validate(id); err != nil {
		return nil, fmt.Errorf("task id %q: %w", id, err)
	}
	return &Bundle{
		ID:        id,
		Namespace: ns,
		Path:      filepath.Join(state, ns, id),
		Work:      filepath.Join(root, ns, id),
	}, nil
}

// NewBundle creates the bundle of a new task with spec (the JSON of an OCI
// runtime spec) as its config.json. It fails with ErrAlreadyExists when the
// bundle directory exists: a task of that id is running or being created.
func NewBundle(root, state, ns, id string, spec []byte) (_ *Bundle, err error) {
	b, err := bundlePaths(root, state, ns, id)
	if err != nil {
		return nil, err
	}
	// The parents are traversable by others so that a user-namespaced
	// container's remapped root can reach its rootfs.
	if err := os.MkdirAll(filepath.Dir(b.Path), 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(b.Path, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("bundle of task %s in namespace %s: %w", id, ns, errdefs.ErrAlreadyExists)
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = b.Delete()
		}
	}()
	if len(spec) > 0 {
		gid, err := remappedRootGID(spec)
		if err != nil {
			return nil, fmt.Errorf("container spec: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		if gid != 0 {
			// The remapped root group must reach the bundle to enter rootfs.
			if err := os.Chown(b.Path, -1, int(gid)); err != nil {
				return nil, err
			}
			if err := os.Chmod(b.Path, 0o710); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(filepath.Join(b.Path, configFile), spec, 0o666); err != nil {
			return nil, fmt.Errorf("write bundle spec: %w", err)
		}
	}
	if err := os.Mkdir(filepath.Join(b.Path, rootfsDir), 0o711); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(b.Work), 0o711); err != nil {
		return nil, err
	}
	// A work directory without a bundle is a leftover (a reboot cleared
	// the state directory); the new task starts from an empty one.
	if err := os.RemoveAll(b.Work); err != nil {
		return nil, err
	}
	if err := os.Mkdir(b.Work, 0o711); err != nil {
		return nil, err
	}
	if err := os.Symlink(b.Work, filepath.Join(b.Path, workLink)); err != nil {
		return nil, err
	}
	return b, nil
}

// LoadBundle returns the bundle of an existing task.
func LoadBundle(root, state, ns, id string) (*Bundle, error) {
	return bundlePaths(root, state, ns, id)
}

// Delete unmounts whatever is still mounted on rootfs and removes the bundle
// and its work directory. A bundle that is already gone is no error.
func (b *Bundle) Delete() error {
	rootfs := filepath.Join(b.Path, rootfsDir)
	if err := mount.UnmountRecursive(rootfs, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Removing the directory under a live mount would delete the
		// container's files, so stop here.
		return fmt.Errorf("unmount rootfs of task %s: %w", b.ID, err)
	}
	if err := os.Remove(rootfs); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove rootfs of task %s: %w", b.ID, err)
	}
	errBundle := atomicRemove(b.Path)
	errWork := atomicRemove(b.Work)
	return errors.Join(errBundle, errWork)
}

// atomicRemove renames path to a hidden name first, so that a crash midway
// never leaves a half-removed directory that looks like a live one (loading
// skips hidden names and clears them).
func atomicRemove(path string) error {
	hidden := filepath.Join(filepath.Dir(path), "."+filepath.Base(path))
	if err := os.Rename(path, hidden); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(hidden)
}

// remappedRootGID is the host GID of the container's root group when the
// spec maps user namespaces, else 0.
func remappedRootGID(spec []byte) (uint32, error) {
	var s struct {
		Linux *struct {
			GIDMappings []struct {
				ContainerID uint32 `json:"containerID"`
				HostID      uint32 `json:"hostID"`
			} `json:"gidMappings"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(spec, &s); err != nil {
		return 0, err
	}
	if s.Linux == nil {
		return 0, nil
	}
	for _, m := range s.Linux.GIDMappings {
		if m.ContainerID == 0 {
			return m.HostID, nil
		}
	}
	return 0, nil
}

// writeFileAtomic replaces path with data by a rename, so that a crash of
// this process never leaves a torn file. It is not synced: the files of a
// bundle describe a shim, and no shim survives the power loss that could
// lose them; Load treats a bundle it cannot reconnect like one whose shim
// died (containerd writes shim-binary-path the same way).
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
