package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// syncTopic carries the probes a subscriber uses to learn that its
// subscription is live and that everything published before a probe has
// been delivered: the exchange hands events to a subscriber in publication
// order.
const syncTopic = "/flotilla-test/sync"

// subscriber is a containerd Go client subscription, plus a way to fence it.
type subscriber struct {
	t      *testing.T
	client *containerd.Client
	ch     <-chan *events.Envelope
	errs   <-chan error
	n      int
}

// subscribeSynced subscribes with filters (or to everything) and returns once the
// subscription receives events. Subscribe returns before the daemon has
// registered the stream, so it publishes probes until one comes back.
func subscribeSynced(t *testing.T, c *containerd.Client, filters ...string) *subscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if len(filters) > 0 {
		filters = append(filters, `topic=="`+syncTopic+`"`)
	}
	ch, errs := c.EventService().Subscribe(ctx, filters...)
	s := &subscriber{t: t, client: c, ch: ch, errs: errs}
	s.fence()
	return s
}

// fence publishes a probe and returns every other envelope delivered before
// it. Nothing published before the call can arrive after it returns.
func (s *subscriber) fence() []*events.Envelope {
	s.t.Helper()
	s.n++
	probe := digest.FromString(fmt.Sprintf("probe %d", s.n)).String()
	ctx := namespaces.WithNamespace(context.Background(), "flotilla-test")
	publish := func() {
		if err := s.client.EventService().Publish(ctx, syncTopic, &eventstypes.ContentDelete{Digest: probe}); err != nil {
			s.t.Fatalf("publishing a probe event: %v", err)
		}
	}
	publish()
	var seen []*events.Envelope
	deadline := time.After(5 * time.Second)
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	for {
		select {
		case env := <-s.ch:
			if env.Topic != syncTopic {
				seen = append(seen, env)
				continue
			}
			if ev, ok := decodeEvent(s.t, env).(*eventstypes.ContentDelete); ok && ev.Digest == probe {
				return seen
			}
		case err := <-s.errs:
			s.t.Fatalf("subscription ended: %v", err)
		case <-retry.C:
			// The first probe may have been published before the
			// subscription was registered.
			publish()
		case <-deadline:
			s.t.Fatalf("probe event %d never reached the subscriber", s.n)
		}
	}
}

// next returns the next envelope that is not a probe.
func (s *subscriber) next(timeout time.Duration) *events.Envelope {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case env := <-s.ch:
			if env.Topic != syncTopic {
				return env
			}
		case err := <-s.errs:
			s.t.Fatalf("subscription ended: %v", err)
		case <-deadline:
			s.t.Fatalf("no event within %s", timeout)
		}
	}
}

// expect reads envelopes until one on topic arrives and checks its
// namespace; it fails on any other topic in between.
func (s *subscriber) expect(topic, namespace string) any {
	s.t.Helper()
	env := s.next(5 * time.Second)
	if env.Topic != topic {
		s.t.Fatalf("got event %s (namespace %s), want %s", env.Topic, env.Namespace, topic)
	}
	if env.Namespace != namespace {
		s.t.Errorf("event %s carries namespace %q, want %q", topic, env.Namespace, namespace)
	}
	if env.Timestamp.IsZero() {
		s.t.Errorf("event %s has no timestamp", topic)
	}
	return decodeEvent(s.t, env)
}

func decodeEvent(t *testing.T, env *events.Envelope) any {
	t.Helper()
	if env.Event == nil {
		t.Fatalf("event %s has no body", env.Topic)
	}
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		t.Fatalf("event %s of type %s does not decode: %v", env.Topic, env.Event.GetTypeUrl(), err)
	}
	return v
}

func TestEventsOfNamespaceImageAndContentChanges(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	sub := subscribeSynced(t, d.client())
	img, archive := imageArchive(t)

	d.mustCtr("namespaces", "create", "x")
	// ctr calls in namespace "default", and containerd publishes in the
	// caller's namespace.
	if ev, ok := sub.expect("/namespaces/create", "default").(*eventstypes.NamespaceCreate); !ok || ev.Name != "x" {
		t.Errorf("/namespaces/create event is %#v, want NamespaceCreate of x", ev)
	}

	d.mustCtr("-n", "x", "images", "import", "--no-unpack", archive)
	// As containerd 2.x, each blob committed is announced before the
	// image that references it.
	created := map[string]bool{}
	env := sub.next(5 * time.Second)
	for ; env.Topic == "/content/create"; env = sub.next(5 * time.Second) {
		if ev, ok := decodeEvent(t, env).(*eventstypes.ContentCreate); ok && env.Namespace == "x" {
			created[ev.Digest] = ev.Size > 0
		}
	}
	blobs := []string{img.Config.Digest.String(), img.Manifest.Digest.String()}
	for _, l := range img.Layers {
		blobs = append(blobs, l.Digest.String())
	}
	for _, d := range blobs {
		if !created[d] {
			t.Errorf("no /content/create event with a size in namespace x for %s (got %v)", d, created)
		}
	}
	if env.Topic != "/images/create" || env.Namespace != "x" {
		t.Fatalf("got event %s (namespace %s) after the blobs', want /images/create in x", env.Topic, env.Namespace)
	}
	if ev, ok := decodeEvent(t, env).(*eventstypes.ImageCreate); !ok || ev.Name != img.Name {
		t.Errorf("/images/create event is %#v, want ImageCreate of %s", ev, img.Name)
	}

	// Removing a blob an image still references is allowed, as in
	// containerd; remove it before the image so no collection takes it first.
	d.mustCtr("-n", "x", "content", "rm", img.Config.Digest.String())
	if ev, ok := sub.expect("/content/delete", "x").(*eventstypes.ContentDelete); !ok || ev.Digest != img.Config.Digest.String() {
		t.Errorf("/content/delete event is %#v, want ContentDelete of %s", ev, img.Config.Digest)
	}

	d.mustCtr("-n", "x", "images", "rm", img.Name)
	if ev, ok := sub.expect("/images/delete", "x").(*eventstypes.ImageDelete); !ok || ev.Name != img.Name {
		t.Errorf("/images/delete event is %#v, want ImageDelete of %s", ev, img.Name)
	}

	if extra := sub.fence(); len(extra) > 0 {
		for _, env := range extra {
			t.Errorf("unexpected event %s in namespace %s", env.Topic, env.Namespace)
		}
	}
}

func TestEventFiltersDropWhatTheyDoNotMatch(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	c := d.client()
	sub := subscribeSynced(t, c, `topic=="/images/create",namespace=="x"`)
	img, archive := imageArchive(t)

	// Everything here but the import is filtered out: other topics, and the
	// same topic in another namespace. The metadata service publishes in
	// call order, so once x's image event is in, the others have been
	// through the exchange.
	d.mustCtr("namespaces", "create", "y")
	createBareImage(t, c, "y", img.Name)
	d.mustCtr("-n", "y", "images", "rm", img.Name)
	d.mustCtr("-n", "x", "images", "import", "--no-unpack", archive)

	env := sub.next(5 * time.Second)
	if env.Topic != "/images/create" || env.Namespace != "x" {
		t.Fatalf("first event through the filter is %s in namespace %s, want /images/create in x", env.Topic, env.Namespace)
	}
	if ev, ok := decodeEvent(t, env).(*eventstypes.ImageCreate); !ok || ev.Name != img.Name {
		t.Errorf("event is %#v, want ImageCreate of %s", ev, img.Name)
	}
	d.mustCtr("-n", "x", "images", "rm", img.Name)
	for _, env := range sub.fence() {
		t.Errorf("the filter let through %s in namespace %s", env.Topic, env.Namespace)
	}

	// A filter on an event field (containerd's event.<field>).
	const wanted = "docker.io/flotilla/wanted:1"
	named := subscribeSynced(t, c, `topic~="^/images/",event.name=="`+wanted+`"`)
	createBareImage(t, c, "x", "docker.io/flotilla/other:1")
	createBareImage(t, c, "x", wanted)
	env = named.next(5 * time.Second)
	if ev, ok := decodeEvent(t, env).(*eventstypes.ImageCreate); !ok || ev.Name != wanted {
		t.Errorf("event.name filter delivered %s %#v, want ImageCreate of %s", env.Topic, decodeEvent(t, env), wanted)
	}
	for _, env := range named.fence() {
		t.Errorf("the event.name filter let through %s %v", env.Topic, decodeEvent(t, env))
	}
}

// createBareImage records an image whose target need not exist: enough for an
// /images/create event.
func createBareImage(t *testing.T, c *containerd.Client, ns, name string) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	target := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(name), Size: 1}
	if _, err := c.ImageService().Create(ctx, images.Image{Name: name, Target: target}); err != nil {
		t.Fatalf("create image %s in %s: %v", name, ns, err)
	}
}

func TestCtrEventsPrintsNamespaceCreate(t *testing.T) {
	requireTool(t, "ctr", "containerd")
	d := newDaemon(t).start()
	out := &syncBuffer{}
	cmd := exec.Command("ctr", "--address", d.address, "events")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// ctr events gives no sign of being subscribed: create namespaces until
	// one shows up.
	var created []string
	waitFor(t, 5*time.Second, "ctr events to print a /namespaces/create event", func() bool {
		name := fmt.Sprintf("watched-%d", len(created))
		d.mustCtr("namespaces", "create", name)
		created = append(created, name)
		time.Sleep(100 * time.Millisecond)
		return strings.Contains(out.String(), "/namespaces/create")
	})
	line := ""
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, "/namespaces/create") {
			line = l
			break
		}
	}
	if !strings.Contains(line, `"name":"watched-`) || !strings.Contains(line, " default ") {
		t.Errorf("ctr events line does not show the namespace's name and the caller's namespace:\n%s", line)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	// The daemon outlives a subscriber that vanishes.
	d.mustCtr("namespaces", "create", "after-ctr-events")
}

func TestPublishedEventReachesSubscriber(t *testing.T) {
	d := newDaemon(t).start()
	c := d.client()
	sub := subscribeSynced(t, c, `namespace=="pub"`)
	ctx := namespaces.WithNamespace(context.Background(), "pub")
	want := digest.FromString("published by a client").String()
	if err := c.EventService().Publish(ctx, "/test/topic", &eventstypes.ContentDelete{Digest: want}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if ev, ok := sub.expect("/test/topic", "pub").(*eventstypes.ContentDelete); !ok || ev.Digest != want {
		t.Errorf("subscriber got %#v, want ContentDelete of %s", ev, want)
	}

	for _, topic := range []string{"no-slash", "", "/", "/a//b", "/bad topic"} {
		err := c.EventService().Publish(ctx, topic, &eventstypes.ContentDelete{Digest: want})
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("publish on topic %q: %v, want InvalidArgument", topic, err)
		}
	}
	// containerd's exchange needs the publisher's namespace.
	if err := c.EventService().Publish(context.Background(), "/test/topic", &eventstypes.ContentDelete{Digest: want}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("publish without a namespace: %v, want FailedPrecondition", err)
	}
	for _, env := range sub.fence() {
		t.Errorf("a rejected publish reached the subscriber: %s %v", env.Topic, decodeEvent(t, env))
	}
}
