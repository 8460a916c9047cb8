package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A pod sandbox and a CRI container are each one containerd container
// record in the k8s.io namespace; everything the cri process needs to
// answer for them after a restart lives on that record:
//
//	labels
//	  io.cri-containerd.kind       "sandbox" or "container" (containerd's own label)
//	  io.flotilla.cri.sandbox-id   a container's sandbox
//	  <the CRI config's labels>    so that label selectors are containerd filters
//	extensions
//	  io.flotilla.cri.sandbox.v1   JSON sandboxMeta
//	  io.flotilla.cri.container.v1 JSON containerMeta
//
// Whether a sandbox or container runs is its task's state, asked of the
// tasks service; how a container ended is written into its extension
// when its exit is handled, since the task is deleted then.
const (
	kindLabel          = "io.cri-containerd.kind"
	kindSandbox        = "sandbox"
	kindContainer      = "container"
	sandboxIDLabel     = "io.flotilla.cri.sandbox-id"
	sandboxExtension   = "io.flotilla.cri.sandbox.v1"
	containerExtension = "io.flotilla.cri.container.v1"
)

// sandboxMeta is a pod sandbox's record.
type sandboxMeta struct {
	ID   string `json:"id"`
	Name string `json:"name"` // name_namespace_uid_attempt, unique
	// Config is the PodSandboxConfig, protobuf-encoded.
	Config         []byte `json:"config"`
	RuntimeHandler string `json:"runtimeHandler,omitempty"`
	CreatedAt      int64  `json:"createdAt"`
	// NetNS is the bind-mounted network namespace; empty for host
	// network pods.
	NetNS         string   `json:"netns,omitempty"`
	IP            string   `json:"ip,omitempty"`
	AdditionalIPs []string `json:"additionalIPs,omitempty"`
	// NetworkTornDown records that CNI DEL ran, so it runs once.
	NetworkTornDown bool `json:"networkTornDown,omitempty"`

	config *runtime.PodSandboxConfig
}

// containerMeta is a CRI container's record.
type containerMeta struct {
	ID        string `json:"id"`
	Name      string `json:"name"` // sandbox name + container name/attempt, unique
	SandboxID string `json:"sandboxID"`
	// Config is the ContainerConfig, protobuf-encoded.
	Config     []byte `json:"config"`
	ImageID    string `json:"imageID"`
	ImageRef   string `json:"imageRef"`
	LogPath    string `json:"logPath,omitempty"`
	StopSignal string `json:"stopSignal,omitempty"`
	CreatedAt  int64  `json:"createdAt"`
	StartedAt  int64  `json:"startedAt,omitempty"`
	FinishedAt int64  `json:"finishedAt,omitempty"`
	ExitCode   int32  `json:"exitCode,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Message    string `json:"message,omitempty"`

	config *runtime.ContainerConfig
}

func newID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func encodeExtension(key string, v any) (*anypb.Any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", key, err)
	}
	return &anypb.Any{TypeUrl: key, Value: b}, nil
}

func decodeSandbox(c containers.Container) (*sandboxMeta, error) {
	ext, ok := c.Extensions[sandboxExtension]
	if !ok {
		return nil, fmt.Errorf("container %s has no sandbox record: %w", c.ID, errdefs.ErrNotFound)
	}
	var m sandboxMeta
	if err := json.Unmarshal(ext.GetValue(), &m); err != nil {
		return nil, fmt.Errorf("sandbox record of %s: %w", c.ID, err)
	}
	m.config = &runtime.PodSandboxConfig{}
	if err := proto.Unmarshal(m.Config, m.config); err != nil {
		return nil, fmt.Errorf("sandbox config of %s: %w", c.ID, err)
	}
	return &m, nil
}

func decodeContainer(c containers.Container) (*containerMeta, error) {
	ext, ok := c.Extensions[containerExtension]
	if !ok {
		return nil, fmt.Errorf("container %s has no CRI container record: %w", c.ID, errdefs.ErrNotFound)
	}
	var m containerMeta
	if err := json.Unmarshal(ext.GetValue(), &m); err != nil {
		return nil, fmt.Errorf("container record of %s: %w", c.ID, err)
	}
	m.config = &runtime.ContainerConfig{}
	if err := proto.Unmarshal(m.Config, m.config); err != nil {
		return nil, fmt.Errorf("container config of %s: %w", c.ID, err)
	}
	return &m, nil
}

// listKind lists the records of one kind.
func (s *Server) listKind(ctx context.Context, kind string) ([]containers.Container, error) {
	cs, err := s.client.ContainerService().List(ctx, fmt.Sprintf(`labels."%s"==%s`, kindLabel, kind))
	if err != nil {
		return nil, fmt.Errorf("list %s records: %w", kind, err)
	}
	return cs, nil
}

// getKind finds the record of one kind by ID or unique ID prefix, as
// crictl passes truncated IDs.
func (s *Server) getKind(ctx context.Context, kind, id string) (containers.Container, error) {
	if id == "" {
		return containers.Container{}, fmt.Errorf("no %s ID given: %w", kind, errdefs.ErrInvalidArgument)
	}
	c, err := s.client.ContainerService().Get(ctx, id)
	if err == nil && c.Labels[kindLabel] == kind {
		return c, nil
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return containers.Container{}, fmt.Errorf("%s %s: %w", kind, id, err)
	}
	all, err := s.listKind(ctx, kind)
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

// createdSandbox is getSandbox answered from the record this process
// created when it has it: for CreateContainer, whose pod is usually one
// this process just ran.
func (s *Server) createdSandbox(ctx context.Context, id string) (*sandboxMeta, error) {
	if r, ok := s.createdRecord(kindSandbox, id); ok {
		return decodeSandbox(r.rec)
	}
	return s.getSandbox(ctx, id)
}

func (s *Server) getSandbox(ctx context.Context, id string) (*sandboxMeta, error) {
	c, err := s.getKind(ctx, kindSandbox, id)
	if err != nil {
		return nil, err
	}
	if s.isStarting(c.ID) {
		return nil, fmt.Errorf("sandbox %s is being created: %w", c.ID, errdefs.ErrNotFound)
	}
	return decodeSandbox(c)
}

// createdRecord is a record this process created and has not rewritten
// since, with the mounts its snapshot was prepared with: what a Get and
// Snapshots.Mounts would answer, kept so that the calls that follow a
// create (CreateContainer in a new pod, StartContainer) need not ask. It
// holds only what this process wrote, so a restart merely empties it.
type createdRecord struct {
	rec    containers.Container
	mounts []mount.Mount
}

// rememberCreated keeps a record just created, for createdRecord.
func (s *Server) rememberCreated(rec containers.Container, mounts []mount.Mount) {
	s.pods.mu.Lock()
	s.pods.created[rec.ID] = createdRecord{rec: rec, mounts: mounts}
	s.pods.mu.Unlock()
}

// createdRecord returns the kept record of an object of kind by its full
// ID.
func (s *Server) createdRecord(kind, id string) (createdRecord, bool) {
	s.pods.mu.Lock()
	r, ok := s.pods.created[id]
	s.pods.mu.Unlock()
	return r, ok && r.rec.Labels[kindLabel] == kind
}

// forgetCreated drops a kept record: it is about to be rewritten.
func (s *Server) forgetCreated(id string) {
	s.pods.mu.Lock()
	delete(s.pods.created, id)
	s.pods.mu.Unlock()
}

func (s *Server) getContainer(ctx context.Context, id string) (*containerMeta, containers.Container, error) {
	c, err := s.getKind(ctx, kindContainer, id)
	if err != nil {
		return nil, c, err
	}
	m, err := decodeContainer(c)
	return m, c, err
}

// saveSandbox rewrites a sandbox's extension.
func (s *Server) saveSandbox(ctx context.Context, m *sandboxMeta) error {
	s.forgetCreated(m.ID)
	ext, err := encodeExtension(sandboxExtension, m)
	if err != nil {
		return err
	}
	_, err = s.client.ContainerService().Update(ctx, containers.Container{
		ID: m.ID, Extensions: map[string]typeurl.Any{sandboxExtension: ext},
	}, "extensions."+sandboxExtension)
	if err != nil {
		return fmt.Errorf("update sandbox %s: %w", m.ID, err)
	}
	return nil
}

// saveContainer rewrites a container's extension.
func (s *Server) saveContainer(ctx context.Context, m *containerMeta) error {
	s.forgetCreated(m.ID)
	ext, err := encodeExtension(containerExtension, m)
	if err != nil {
		return err
	}
	_, err = s.client.ContainerService().Update(ctx, containers.Container{
		ID: m.ID, Extensions: map[string]typeurl.Any{containerExtension: ext},
	}, "extensions."+containerExtension)
	if err != nil {
		return fmt.Errorf("update container %s: %w", m.ID, err)
	}
	return nil
}

// podState is what the cri process keeps in memory about pods: locks,
// exit watchers and log writers. All of it is rebuilt by Recover.
type podState struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
	// exits holds, per started container, a channel closed once its exit
	// has been recorded and its task deleted.
	exits map[string]chan struct{}
	// logs holds the log writer of each container whose output this
	// process writes, for ReopenContainerLog.
	logs map[string]*containerLog
	// created holds the records this process created and has not
	// rewritten since; see createdRecord.
	created map[string]createdRecord
	// reserved are the names of sandboxes and containers being
	// created: names are unique, and the record appears only at the
	// end of a create.
	reserved map[string]bool
	// names maps kind/name to the ID of the record holding it, and
	// nameOf back, once namesLoaded[kind]; see reserveName.
	names       map[string]string
	nameOf      map[string]string
	namesLoaded map[string]bool
	// ctx bounds the exit watchers and carries the process's logger;
	// cancelled when the process stops.
	ctx    context.Context
	cancel context.CancelFunc
}

func newPodState(ctx context.Context) podState {
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.WithoutCancel(ctx), Namespace))
	return podState{
		locks:       map[string]*sync.Mutex{},
		exits:       map[string]chan struct{}{},
		logs:        map[string]*containerLog{},
		created:     map[string]createdRecord{},
		reserved:    map[string]bool{},
		names:       map[string]string{},
		nameOf:      map[string]string{},
		namesLoaded: map[string]bool{},
		ctx:         ctx,
		cancel:      cancel,
	}
}

// lock serialises the lifecycle calls on one object.
func (p *podState) lock(id string) func() {
	p.mu.Lock()
	l, ok := p.locks[id]
	if !ok {
		l = &sync.Mutex{}
		p.locks[id] = l
	}
	p.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (p *podState) forget(id string) {
	p.mu.Lock()
	if key, ok := p.nameOf[id]; ok && p.names[key] == id {
		delete(p.names, key)
	}
	delete(p.nameOf, id)
	delete(p.locks, id)
	delete(p.exits, id)
	delete(p.logs, id)
	delete(p.created, id)
	p.mu.Unlock()
	rates.Forget(id)
}

func nanos(t time.Time) int64 { return t.UnixNano() }
