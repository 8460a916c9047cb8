package image

import (
	"context"
	"fmt"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/v2/core/images"

	"github.com/flotilla-project/flotilla/pkg/graphclient"
	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/store"
)

// imageIndex keeps the namespace's image records as last listed, so that
// resolving an image reference (every sandbox and container create) is no
// Images List call. A listing is reused only while an event
// subscription is confirmed live (the exchange's header) and has seen no image event since the
// listing began, and for at most imageIndexTTL, which bounds how long an
// event the exchange dropped can leave it stale. This process's own pulls
// and removals invalidate it synchronously; another client's changes
// reach it through the events, as they reach containerd's CRI image
// store. A reference not found in a reused listing is looked up in a
// fresh one before it is called missing, so an image imported a moment
// ago by another client is never reported absent.
type imageIndex struct {
	mu sync.Mutex
	// live says the subscription is confirmed and receiving.
	live bool
	// gen counts invalidations: image events, own changes, the
	// subscription going up or down.
	gen uint64
	// records were listed at generation listedGen, at listedAt.
	records   []images.Image
	listedGen uint64
	listedAt  time.Time
	valid     bool
}

// imageIndexTTL bounds the reuse of one listing.
const imageIndexTTL = 10 * time.Second

var imageEventFilters = []string{
	fmt.Sprintf(`namespace==%q,topic~="^/images/"`, store.Namespace),
}

// invalidate makes the next resolve list again.
func (x *imageIndex) invalidate() {
	x.mu.Lock()
	x.gen++
	x.mu.Unlock()
}

func (x *imageIndex) setLive(live bool) {
	x.mu.Lock()
	x.live = live
	x.gen++
	x.mu.Unlock()
}

// cached returns the reusable listing, if there is one.
func (x *imageIndex) cached() ([]images.Image, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.live && x.valid && x.listedGen == x.gen && time.Since(x.listedAt) < imageIndexTTL {
		return x.records, true
	}
	return nil, false
}

// list lists the image records and keeps the listing when nothing
// invalidated it meanwhile.
func (x *imageIndex) list(ctx context.Context, is images.Store) ([]images.Image, error) {
	x.mu.Lock()
	gen, live, at := x.gen, x.live, time.Now()
	x.mu.Unlock()
	records, err := is.List(ctx)
	if err != nil {
		return nil, err
	}
	if live {
		x.mu.Lock()
		if x.gen == gen {
			x.records, x.listedGen, x.listedAt, x.valid = records, gen, at, true
		}
		x.mu.Unlock()
	}
	return records, nil
}

// WatchImages keeps the image index's subscription to image events until
// ctx ends; without it every resolve lists the images.
func (s *Service) WatchImages(ctx context.Context) {
	for {
		err := s.followImageEvents(ctx)
		s.imageIdx.setLive(false)
		if ctx.Err() != nil {
			return
		}
		logging.G(ctx).Debug("image event subscription ended, resubscribing", "error", err)
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return
		}
	}
}

func (s *Service) followImageEvents(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := eventsapi.NewEventsClient(s.daemon).Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: imageEventFilters})
	if err != nil {
		return err
	}
	if err := graphclient.AwaitSubscribed(stream); err != nil {
		return err
	}
	s.imageIdx.setLive(true)
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
		s.imageIdx.invalidate()
	}
}
