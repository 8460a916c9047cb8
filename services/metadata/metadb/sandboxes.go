package metadb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A sandbox is containerd's Sandbox Store record: kept, like a container,
// as its API message (spec, runtime options and extensions are Anys that
// mean nothing here) with its labels beside it for the collector, which
// treats the resources they reference as roots, as containerd's does.
//
// The store behaves as containerd 2.x's: ids are checked only on create
// (InvalidArgument); Get, Update and Delete of an unknown id are NotFound;
// the store publishes no events (containerd's controllers do).

// GetSandbox returns a sandbox record of the call's namespace.
func (db *DB) GetSandbox(ctx context.Context, id string) (*types.Sandbox, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	var sb *types.Sandbox
	err = db.bolt.View(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketSandboxes, []byte(id))
		if b == nil {
			return fmt.Errorf("sandbox %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
		}
		sb, err = readSandbox(b)
		return err
	})
	return sb, err
}

// ListSandboxes lists the sandboxes matching any filter (fields id and
// labels.<k>, as containerd's).
func (db *DB) ListSandboxes(ctx context.Context, fs ...string) ([]*types.Sandbox, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("sandbox filters %q: %v: %w", fs, err, errdefs.ErrInvalidArgument)
	}
	var out []*types.Sandbox
	err = db.bolt.View(func(tx *bolt.Tx) error {
		sb := bucketPath(nsBucket(tx, ns), bucketSandboxes)
		if sb == nil {
			return nil
		}
		return sb.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			s, err := readSandbox(sb.Bucket(k))
			if err != nil {
				return fmt.Errorf("sandbox %q: %w", k, err)
			}
			if filter.Match(adaptSandbox(s)) {
				out = append(out, s)
			}
			return nil
		})
	})
	return out, err
}

// CreateSandbox records a new sandbox; its times are the store's.
func (db *DB) CreateSandbox(ctx context.Context, in *types.Sandbox) (*types.Sandbox, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if in == nil {
		return nil, fmt.Errorf("request carries no sandbox: %w", errdefs.ErrInvalidArgument)
	}
	s := proto.Clone(in).(*types.Sandbox)
	if err := identifiers.Validate(s.SandboxID); err != nil {
		return nil, fmt.Errorf("sandbox id %q: %w", s.SandboxID, err)
	}
	if err := validateLabels(s.Labels); err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", s.SandboxID, err)
	}
	if s.Runtime == nil {
		s.Runtime = &types.Sandbox_Runtime{}
	}
	now := timestamppb.New(time.Now().UTC())
	s.CreatedAt, s.UpdatedAt = now, now
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		nb, err := createNSBucket(tx, ns)
		if err != nil {
			return err
		}
		sb, err := nb.CreateBucketIfNotExists(bucketSandboxes)
		if err != nil {
			return err
		}
		if sb.Bucket([]byte(s.SandboxID)) != nil {
			return fmt.Errorf("sandbox %q: %w", s.SandboxID, errdefs.ErrAlreadyExists)
		}
		b, err := sb.CreateBucket([]byte(s.SandboxID))
		if err != nil {
			return err
		}
		return writeSandbox(b, s)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// UpdateSandbox changes a sandbox by containerd's field paths: labels,
// labels.<k>, extensions, extensions.<k>, spec, runtime. None means all of
// them, and then the runtime's name must stay as it is.
func (db *DB) UpdateSandbox(ctx context.Context, in *types.Sandbox, paths ...string) (*types.Sandbox, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if in == nil {
		return nil, fmt.Errorf("request carries no sandbox: %w", errdefs.ErrInvalidArgument)
	}
	var (
		out     *types.Sandbox
		dropped bool
	)
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		b := bucketPath(nsBucket(tx, ns), bucketSandboxes, []byte(in.SandboxID))
		if b == nil {
			return fmt.Errorf("sandbox %q in namespace %q: %w", in.SandboxID, ns, errdefs.ErrNotFound)
		}
		cur, err := readSandbox(b)
		if err != nil {
			return err
		}
		if len(paths) == 0 {
			paths = []string{"labels", "extensions", "spec", "runtime"}
			if cur.GetRuntime().GetName() != in.GetRuntime().GetName() {
				return fmt.Errorf("sandbox %q: the runtime's name cannot change: %w", in.SandboxID, errdefs.ErrInvalidArgument)
			}
		}
		var labelPaths []string
		for _, p := range paths {
			switch {
			case p == "labels" || strings.HasPrefix(p, "labels."):
				labelPaths = append(labelPaths, p)
			case p == "extensions":
				cur.Extensions = in.Extensions
			case strings.HasPrefix(p, "extensions."):
				name := strings.TrimPrefix(p, "extensions.")
				if ext, ok := in.Extensions[name]; ok {
					if cur.Extensions == nil {
						cur.Extensions = map[string]*anypb.Any{}
					}
					cur.Extensions[name] = ext
				} else {
					delete(cur.Extensions, name)
				}
			case p == "spec":
				cur.Spec = in.Spec
			case p == "runtime":
				cur.Runtime = in.Runtime
				if cur.Runtime == nil {
					cur.Runtime = &types.Sandbox_Runtime{}
				}
			default:
				return fmt.Errorf("cannot update %q field on sandbox %q: %w", p, in.SandboxID, errdefs.ErrInvalidArgument)
			}
		}
		if len(labelPaths) > 0 {
			old := cur.Labels
			cur.Labels, _ = applyLabelPaths(cur.Labels, in.Labels, labelPaths)
			dropped = droppedGCRef(old, cur.Labels)
			if err := validateLabels(cur.Labels); err != nil {
				return fmt.Errorf("sandbox %q: %w", in.SandboxID, err)
			}
		}
		cur.UpdatedAt = timestamppb.New(time.Now().UTC())
		if err := writeSandbox(b, cur); err != nil {
			return err
		}
		out = cur
		return nil
	})
	if err == nil && dropped {
		// A reference it no longer holds may have been what kept a
		// resource.
		db.dirty(false)
	}
	return out, err
}

// droppedGCRef says whether a containerd.io/gc.ref label of before is gone
// or changed in after.
func droppedGCRef(before, after map[string]string) bool {
	for k, v := range before {
		if strings.HasPrefix(k, "containerd.io/gc.ref.") && after[k] != v {
			return true
		}
	}
	return false
}

// DeleteSandbox forgets a sandbox; what only its labels kept goes with the
// collection its removal asks for.
func (db *DB) DeleteSandbox(ctx context.Context, id string) error {
	ns, err := namespace(ctx)
	if err != nil {
		return err
	}
	var held bool
	err = db.bolt.Update(func(tx *bolt.Tx) error {
		sb := bucketPath(nsBucket(tx, ns), bucketSandboxes)
		if sb == nil || sb.Bucket([]byte(id)) == nil {
			return fmt.Errorf("sandbox %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
		}
		held = droppedGCRef(readMap(sb.Bucket([]byte(id)), bucketLabels), nil)
		return sb.DeleteBucket([]byte(id))
	})
	if err != nil {
		return err
	}
	if held {
		db.dirty(false)
	}
	return nil
}

func readSandbox(b *bolt.Bucket) (*types.Sandbox, error) {
	var s types.Sandbox
	if err := proto.Unmarshal(b.Get(keyRecord), &s); err != nil {
		return nil, fmt.Errorf("sandbox record: %w", err)
	}
	return &s, nil
}

// writeSandbox stores the message and, beside it, the labels the collector
// follows.
func writeSandbox(b *bolt.Bucket, s *types.Sandbox) error {
	v, err := proto.Marshal(s)
	if err != nil {
		return err
	}
	if err := b.Put(keyRecord, v); err != nil {
		return err
	}
	return writeMap(b, bucketLabels, s.Labels)
}

func adaptSandbox(s *types.Sandbox) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 0 {
			return "", false
		}
		switch fp[0] {
		case "id":
			return s.SandboxID, true
		case "labels":
			return mapField(fp[1:], s.Labels)
		}
		return "", false
	})
}
