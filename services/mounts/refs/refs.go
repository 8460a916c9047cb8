// Package refs tells the mounts service's collector whether what holds an
// activation still exists, asking the daemon through the gateway, and when
// to look again. In containerd an activation is a resource of the
// collector's: the lease it was made under holds it, and so do its
// back-references (labels containerd.io/gc.bref.container, .content, .image,
// .snapshot.<snapshotter>, each optionally followed by "." or "/" and a
// name): it goes when its lease is deleted or when everything it
// back-references is gone. Flotilla's metadata collector knows nothing of
// another process's records, so the mounts service asks after them itself.
// Unlike containerd's, an activation with neither a lease nor a
// back-reference is kept until it is deactivated.
package refs

import (
	"context"
	"fmt"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/mounts/manager"
)

const (
	labelContainer = "containerd.io/gc.bref.container"
	labelContent   = "containerd.io/gc.bref.content"
	labelImage     = "containerd.io/gc.bref.image"
	labelSnapshot  = "containerd.io/gc.bref.snapshot."
)

// Deletions are the events after which something an activation
// back-references may be gone.
var Deletions = []string{
	`topic=="/containers/delete"`,
	`topic=="/images/delete"`,
	`topic=="/content/delete"`,
	`topic=="/snapshot/remove"`,
}

// Checker asks the daemon whether an activation's holders exist.
type Checker struct {
	leases     leasesapi.LeasesClient
	containers containersapi.ContainersClient
	images     imagesapi.ImagesClient
	content    contentapi.ContentClient
	snapshots  snapshotsapi.SnapshotsClient
	events     eventsapi.EventsClient
}

// New asks through conn, the gateway.
func New(conn grpc.ClientConnInterface) *Checker {
	return &Checker{
		leases:     leasesapi.NewLeasesClient(conn),
		containers: containersapi.NewContainersClient(conn),
		images:     imagesapi.NewImagesClient(conn),
		content:    contentapi.NewContentClient(conn),
		snapshots:  snapshotsapi.NewSnapshotsClient(conn),
		events:     eventsapi.NewEventsClient(conn),
	}
}

// backRef is one thing an activation back-references.
type backRef struct {
	kind, snapshotter, key string
}

// backRefs reads an activation's back-reference labels.
func backRefs(labels map[string]string) []backRef {
	var out []backRef
	named := func(k, prefix string) bool {
		rest, ok := strings.CutPrefix(k, prefix)
		return ok && (rest == "" || rest[0] == '.' || rest[0] == '/')
	}
	for k, v := range labels {
		switch {
		case named(k, labelContainer):
			out = append(out, backRef{kind: "container", key: v})
		case named(k, labelContent):
			out = append(out, backRef{kind: "content", key: v})
		case named(k, labelImage):
			out = append(out, backRef{kind: "image", key: v})
		case strings.HasPrefix(k, labelSnapshot):
			sn, _, _ := strings.Cut(k[len(labelSnapshot):], "/")
			if sn != "" {
				out = append(out, backRef{kind: "snapshot", snapshotter: sn, key: v})
			}
		}
	}
	return out
}

// Keep says whether anything holds h: its lease, or anything it
// back-references. What cannot be asked (the daemon does not answer) keeps
// it; so does having neither a lease nor a back-reference.
func (c *Checker) Keep(ctx context.Context, h manager.Held) bool {
	refs := backRefs(h.Labels)
	if h.Lease == "" && len(refs) == 0 {
		return true
	}
	ctx = namespaces.WithNamespace(ctx, h.Namespace)
	if h.Lease != "" {
		resp, err := c.leases.List(ctx, &leasesapi.ListRequest{Filters: []string{fmt.Sprintf("id==%q", h.Lease)}})
		if err != nil || len(resp.GetLeases()) > 0 {
			return true
		}
	}
	for _, r := range refs {
		if exists, err := c.exists(ctx, r); exists || err != nil {
			return true
		}
	}
	return false
}

// exists asks after one back-reference: an error is an answer other than
// found or not found.
func (c *Checker) exists(ctx context.Context, r backRef) (bool, error) {
	var err error
	switch r.kind {
	case "container":
		_, err = c.containers.Get(ctx, &containersapi.GetContainerRequest{ID: r.key})
	case "image":
		_, err = c.images.Get(ctx, &imagesapi.GetImageRequest{Name: r.key})
	case "content":
		_, err = c.content.Info(ctx, &contentapi.InfoRequest{Digest: r.key})
	case "snapshot":
		_, err = c.snapshots.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: r.snapshotter, Key: r.key})
	}
	err = errgrpc.ToNative(err)
	switch {
	case err == nil:
		return true, nil
	case errdefs.IsNotFound(err):
		return false, nil
	case r.kind == "snapshot" && errdefs.IsInvalidArgument(err):
		return false, nil // no such snapshotter
	}
	return false, err
}

// Watch calls changed after each deletion the daemon publishes (see
// Deletions), subscribing again when the subscription ends, until ctx
// ends.
func (c *Checker) Watch(ctx context.Context, changed func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := c.events.Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: Deletions}, grpc.WaitForReady(true))
		if err == nil {
			for {
				if _, err = stream.Recv(); err != nil {
					break
				}
				backoff = 100 * time.Millisecond
				changed()
			}
		}
		if ctx.Err() != nil {
			return
		}
		logging.G(ctx).Debug("subscription to deletions ended; subscribing again", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// debounce coalesces a burst of deletions (an image and its content) into
// one collection.
const debounce = 100 * time.Millisecond

// Run collects every interval, and shortly after each deletion the daemon
// publishes, until ctx ends: collect is the manager's Collect with Keep.
func (c *Checker) Run(ctx context.Context, every time.Duration, m *manager.Manager) {
	changed := make(chan struct{}, 1)
	go c.Watch(ctx, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
			select {
			case <-ctx.Done():
				return
			case <-time.After(debounce):
			}
		}
		if n, err := m.Collect(ctx, c.Keep); err != nil && ctx.Err() == nil {
			logging.G(ctx).Warn("collecting activations nothing holds", "deactivated", n, "error", err)
		}
	}
}
