// Package store holds the cri process's records of pod sandboxes and CRI
// containers: how they are written onto containerd container records in
// the k8s.io namespace and read back, the lookups by kind with short-ID
// resolution, the records this process just created, unique-name
// reservation and the per-object lifecycle locks. It knows nothing of
// tasks, images or networks; everything in it is rebuilt from the
// containers service after a restart.
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Namespace is the containerd namespace every CRI object lives in, as in
// containerd, so that `ctr -n k8s.io` shows what the kubelet sees.
const Namespace = "k8s.io"

// A pod sandbox and a CRI container are each one containerd container
// record in the k8s.io namespace; everything the cri process needs to
// answer for them after a restart lives on that record:
//
//	labels
//	  io.cri-containerd.kind       "sandbox" or "container" (containerd's own label)
//	  io.flotilla.cri.sandbox-id   a container's sandbox
//	  <the CRI config's labels>    so that label selectors are containerd filters
//	extensions
//	  io.flotilla.cri.sandbox.v1   JSON Sandbox
//	  io.flotilla.cri.container.v1 JSON Container
//
// Whether a sandbox or container runs is its task's state, asked of the
// tasks service; how a container ended is written into its extension
// when its exit is handled, since the task is deleted then.
const (
	KindLabel          = "io.cri-containerd.kind"
	KindSandbox        = "sandbox"
	KindContainer      = "container"
	SandboxIDLabel     = "io.flotilla.cri.sandbox-id"
	SandboxExtension   = "io.flotilla.cri.sandbox.v1"
	ContainerExtension = "io.flotilla.cri.container.v1"
)

// Sandbox is a pod sandbox's record.
type Sandbox struct {
	ID   string `json:"id"`
	Name string `json:"name"` // name_namespace_uid_attempt, unique
	// RawConfig is the PodSandboxConfig, protobuf-encoded.
	RawConfig      []byte `json:"config"`
	RuntimeHandler string `json:"runtimeHandler,omitempty"`
	CreatedAt      int64  `json:"createdAt"`
	// NetNS is the bind-mounted network namespace; empty for host
	// network pods.
	NetNS         string   `json:"netns,omitempty"`
	IP            string   `json:"ip,omitempty"`
	AdditionalIPs []string `json:"additionalIPs,omitempty"`
	// NetworkTornDown records that CNI DEL ran, so it runs once.
	NetworkTornDown bool `json:"networkTornDown,omitempty"`

	// Config is RawConfig decoded.
	Config *runtime.PodSandboxConfig `json:"-"`
}

// Container is a CRI container's record.
type Container struct {
	ID        string `json:"id"`
	Name      string `json:"name"` // sandbox name + container name/attempt, unique
	SandboxID string `json:"sandboxID"`
	// RawConfig is the ContainerConfig, protobuf-encoded.
	RawConfig  []byte `json:"config"`
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

	// Config is RawConfig decoded.
	Config *runtime.ContainerConfig `json:"-"`
}

// NewID is a fresh sandbox or container ID: 64 hex digits, as
// containerd's.
func NewID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// EncodeExtension is v as the record extension key.
func EncodeExtension(key string, v any) (*anypb.Any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", key, err)
	}
	return &anypb.Any{TypeUrl: key, Value: b}, nil
}

// DecodeSandbox reads the sandbox record off c.
func DecodeSandbox(c containers.Container) (*Sandbox, error) {
	ext, ok := c.Extensions[SandboxExtension]
	if !ok {
		return nil, fmt.Errorf("container %s has no sandbox record: %w", c.ID, errdefs.ErrNotFound)
	}
	var m Sandbox
	if err := json.Unmarshal(ext.GetValue(), &m); err != nil {
		return nil, fmt.Errorf("sandbox record of %s: %w", c.ID, err)
	}
	m.Config = &runtime.PodSandboxConfig{}
	if err := proto.Unmarshal(m.RawConfig, m.Config); err != nil {
		return nil, fmt.Errorf("sandbox config of %s: %w", c.ID, err)
	}
	return &m, nil
}

// DecodeContainer reads the CRI container record off c.
func DecodeContainer(c containers.Container) (*Container, error) {
	ext, ok := c.Extensions[ContainerExtension]
	if !ok {
		return nil, fmt.Errorf("container %s has no CRI container record: %w", c.ID, errdefs.ErrNotFound)
	}
	var m Container
	if err := json.Unmarshal(ext.GetValue(), &m); err != nil {
		return nil, fmt.Errorf("container record of %s: %w", c.ID, err)
	}
	m.Config = &runtime.ContainerConfig{}
	if err := proto.Unmarshal(m.RawConfig, m.Config); err != nil {
		return nil, fmt.Errorf("container config of %s: %w", c.ID, err)
	}
	return &m, nil
}

// MatchLabels reports whether labels hold every pair of a CRI label
// selector.
func MatchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Spec is the OCI spec stored in a container record; nil when it
// cannot be read.
func Spec(c containers.Container) *specs.Spec {
	if c.Spec == nil {
		return nil
	}
	var sp specs.Spec
	if err := json.Unmarshal(c.Spec.GetValue(), &sp); err != nil {
		return nil
	}
	return &sp
}

// WithRecordCopy, given last, keeps the record the container is created
// with.
func WithRecordCopy(out *containers.Container) containerd.NewContainerOpts {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		*out = *c
		return nil
	}
}

// WithExtension puts a on the new record under key.
func WithExtension(key string, a *anypb.Any) containerd.NewContainerOpts {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		if c.Extensions == nil {
			c.Extensions = map[string]typeurl.Any{}
		}
		c.Extensions[key] = a
		return nil
	}
}
