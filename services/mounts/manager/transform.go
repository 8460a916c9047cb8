package manager

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/docker/go-units"
)

// A mount's type may carry transforms before its own type, outermost first:
// "format/mkdir/overlay" is an overlay whose options are first formatted
// from the mounts before it, then given the directories it names. containerd
// 2.2 defines three:
//
//   - format: Source, Target and each option are Go templates over the
//     mounts activated before it: {{ mount N }} (where mount N is mounted),
//     {{ source N }}, {{ target N }}, and {{ overlay A B }} (the mount points
//     of mounts A to B joined with ":", for lowerdir; A > B counts down).
//   - mkdir: each option X-containerd.mkdir.path=<dir>[:<mode>[:<uid>:<gid>]]
//     makes a directory (mode octal, default 0700) and is dropped.
//   - mkfs: the options X-containerd.mkfs.size=<size> (required),
//     X-containerd.mkfs.fs=<ext2|ext3|ext4|xfs> (default ext4) and
//     X-containerd.mkfs.uuid=<uuid> make Source a file system image of that
//     size if it does not exist yet, and are dropped.
//
// mkdir and mkfs only act under the directories the manager allows (its own
// targets and Flotilla's root), never through a symbolic link out of them.
type transform func(ctx context.Context, m mount.Mount, active []mount.ActiveMount) (mount.Mount, error)

const (
	mkdirPrefix = "X-containerd.mkdir."
	mkfsPrefix  = "X-containerd.mkfs."
)

// splitType separates a mount type's transforms from the type mounted.
func splitType(t string) (transforms []string, base string) {
	parts := strings.Split(t, "/")
	return parts[:len(parts)-1], parts[len(parts)-1]
}

func (m *Manager) transformFor(name string) (transform, error) {
	switch name {
	case "format":
		return formatMount, nil
	case "mkdir":
		return m.mkdir, nil
	case "mkfs":
		return m.mkfs, nil
	}
	return nil, fmt.Errorf("unknown mount transform %q (want format, mkdir or mkfs): %w", name, errdefs.ErrInvalidArgument)
}

// applyTransforms runs a mount's transforms in order and leaves it its base
// type.
func (m *Manager) applyTransforms(ctx context.Context, mt mount.Mount, active []mount.ActiveMount) (mount.Mount, error) {
	names, base := splitType(mt.Type)
	for _, name := range names {
		tr, err := m.transformFor(name)
		if err != nil {
			return mount.Mount{}, err
		}
		if mt, err = tr(ctx, mt, active); err != nil {
			return mount.Mount{}, fmt.Errorf("mount transform %s of %s: %w", name, mt.Type, err)
		}
	}
	mt.Type = base
	return mt, nil
}

func formatMount(_ context.Context, m mount.Mount, active []mount.ActiveMount) (mount.Mount, error) {
	var err error
	if m.Source, err = format(m.Source, active); err != nil {
		return m, err
	}
	if m.Target, err = format(m.Target, active); err != nil {
		return m, err
	}
	opts := make([]string, len(m.Options))
	for i, o := range m.Options {
		if opts[i], err = format(o, active); err != nil {
			return m, err
		}
	}
	m.Options = opts
	return m, nil
}

func format(s string, active []mount.ActiveMount) (string, error) {
	if !strings.Contains(s, "{{") {
		return s, nil
	}
	at := func(i int) (mount.ActiveMount, error) {
		if i < 0 || i >= len(active) {
			return mount.ActiveMount{}, fmt.Errorf("mount %d: %d mounts are active before this one", i, len(active))
		}
		return active[i], nil
	}
	funcs := template.FuncMap{
		"mount": func(i int) (string, error) {
			a, err := at(i)
			return a.MountPoint, err
		},
		"source": func(i int) (string, error) {
			a, err := at(i)
			return a.Source, err
		},
		"target": func(i int) (string, error) {
			a, err := at(i)
			return a.Target, err
		},
		"overlay": func(from, to int) (string, error) {
			step := 1
			if from > to {
				step = -1
			}
			var dirs []string
			for i := from; ; i += step {
				a, err := at(i)
				if err != nil {
					return "", err
				}
				dirs = append(dirs, a.MountPoint)
				if i == to {
					break
				}
			}
			return strings.Join(dirs, ":"), nil
		},
	}
	t, err := template.New("mount").Funcs(funcs).Option("missingkey=error").Parse(s)
	if err != nil {
		return "", fmt.Errorf("format %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	var b strings.Builder
	if err := t.Execute(&b, nil); err != nil {
		return "", fmt.Errorf("format %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	return b.String(), nil
}

// within finds the allowed root a path is under, and the path inside it.
func (m *Manager) within(p string) (*os.Root, string, error) {
	clean := filepath.Clean(p)
	if !filepath.IsAbs(clean) {
		return nil, "", fmt.Errorf("path %q is not absolute: %w", p, errdefs.ErrInvalidArgument)
	}
	for _, r := range m.roots {
		if rel, err := filepath.Rel(r.Name(), clean); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return r, rel, nil
		}
	}
	return nil, "", fmt.Errorf("path %q is outside the directories the mount manager may change: %w", p, errdefs.ErrPermissionDenied)
}

func (m *Manager) mkdir(_ context.Context, mt mount.Mount, _ []mount.ActiveMount) (mount.Mount, error) {
	var keep []string
	for _, o := range mt.Options {
		spec, ok := strings.CutPrefix(o, mkdirPrefix)
		if !ok {
			keep = append(keep, o)
			continue
		}
		value, ok := strings.CutPrefix(spec, "path=")
		if !ok {
			return mount.Mount{}, fmt.Errorf("mkdir option %q: want %spath=<dir>[:mode[:uid:gid]]: %w", o, mkdirPrefix, errdefs.ErrInvalidArgument)
		}
		parts := strings.Split(value, ":")
		mode, uid, gid := os.FileMode(0o700), -1, -1
		switch len(parts) {
		case 1:
		case 2, 4:
			p, err := strconv.ParseUint(parts[1], 8, 32)
			if err != nil || os.FileMode(p)&^os.ModePerm != 0 {
				return mount.Mount{}, fmt.Errorf("mkdir option %q: mode %q: %w", o, parts[1], errdefs.ErrInvalidArgument)
			}
			mode = os.FileMode(p)
			if len(parts) == 4 {
				var err1, err2 error
				uid, err1 = strconv.Atoi(parts[2])
				gid, err2 = strconv.Atoi(parts[3])
				if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
					return mount.Mount{}, fmt.Errorf("mkdir option %q: owner %s:%s: %w", o, parts[2], parts[3], errdefs.ErrInvalidArgument)
				}
			}
		default:
			return mount.Mount{}, fmt.Errorf("mkdir option %q: want <dir>[:mode[:uid:gid]]: %w", o, errdefs.ErrInvalidArgument)
		}
		root, rel, err := m.within(parts[0])
		if err != nil {
			return mount.Mount{}, err
		}
		if _, err := root.Stat(rel); err == nil {
			continue // there already: left as it is
		} else if !os.IsNotExist(err) {
			return mount.Mount{}, err
		}
		if err := root.MkdirAll(rel, mode); err != nil {
			return mount.Mount{}, fmt.Errorf("mkdir %s: %w", parts[0], err)
		}
		// MkdirAll's mode passes through the umask.
		if err := root.Chmod(rel, mode); err != nil {
			return mount.Mount{}, err
		}
		if uid >= 0 {
			if err := root.Chown(rel, uid, gid); err != nil {
				return mount.Mount{}, fmt.Errorf("chown %s: %w", parts[0], err)
			}
		}
	}
	mt.Options = keep
	return mt, nil
}

func (m *Manager) mkfs(ctx context.Context, mt mount.Mount, _ []mount.ActiveMount) (mount.Mount, error) {
	var (
		keep []string
		size int64
		fs   = "ext4"
		uuid string
	)
	for _, o := range mt.Options {
		spec, ok := strings.CutPrefix(o, mkfsPrefix)
		if !ok {
			keep = append(keep, o)
			continue
		}
		k, v, _ := strings.Cut(spec, "=")
		switch k {
		case "size":
			n, err := units.RAMInBytes(v)
			if err != nil || n <= 0 {
				return mount.Mount{}, fmt.Errorf("mkfs option %q: size: %w", o, errdefs.ErrInvalidArgument)
			}
			size = n
		case "fs":
			fs = v
		case "uuid":
			uuid = v
		default:
			return mount.Mount{}, fmt.Errorf("unknown mkfs option %q: %w", o, errdefs.ErrInvalidArgument)
		}
	}
	mt.Options = keep
	if size == 0 {
		return mount.Mount{}, fmt.Errorf("mkfs needs %ssize: %w", mkfsPrefix, errdefs.ErrInvalidArgument)
	}
	var args []string
	switch fs {
	case "ext2", "ext3", "ext4":
		args = []string{"-q"}
		if uuid != "" {
			args = append(args, "-U", uuid)
		}
	case "xfs":
		args = []string{"-q"}
		if uuid != "" {
			args = append(args, "-m", "uuid="+uuid)
		}
	default:
		return mount.Mount{}, fmt.Errorf("mkfs of file system %q: want ext2, ext3, ext4 or xfs: %w", fs, errdefs.ErrInvalidArgument)
	}
	root, rel, err := m.within(mt.Source)
	if err != nil {
		return mount.Mount{}, err
	}
	if _, err := root.Stat(rel); err == nil {
		return mt, nil // made before
	} else if !os.IsNotExist(err) {
		return mount.Mount{}, err
	}
	f, err := root.OpenFile(rel, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return mount.Mount{}, fmt.Errorf("mkfs %s: %w", mt.Source, err)
	}
	err = f.Truncate(size)
	if err == nil {
		// mkfs writes the file opened inside the root, not whatever the
		// path names by the time it runs.
		cmd := exec.CommandContext(ctx, "mkfs."+fs, append(args, "/dev/fd/3")...)
		cmd.ExtraFiles = []*os.File{f}
		if out, cerr := cmd.CombinedOutput(); cerr != nil {
			err = fmt.Errorf("mkfs.%s: %v: %s", fs, cerr, strings.TrimSpace(string(out)))
		}
	}
	f.Close()
	if err != nil {
		_ = root.Remove(rel)
		return mount.Mount{}, fmt.Errorf("mkfs %s: %w", mt.Source, err)
	}
	return mt, nil
}
