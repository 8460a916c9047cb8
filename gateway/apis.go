package gateway

// The gateway forwards containerd's API without decoding it, but it reads
// each method's descriptor to relay unary calls as unary (see router): so the
// descriptors of every API it may route are linked in here: containerd's and
// the Kubernetes CRI.
import (
	_ "github.com/containerd/containerd/api/services/containers/v1"
	_ "github.com/containerd/containerd/api/services/content/v1"
	_ "github.com/containerd/containerd/api/services/diff/v1"
	_ "github.com/containerd/containerd/api/services/images/v1"
	_ "github.com/containerd/containerd/api/services/leases/v1"
	_ "github.com/containerd/containerd/api/services/mounts/v1"
	_ "github.com/containerd/containerd/api/services/namespaces/v1"
	_ "github.com/containerd/containerd/api/services/sandbox/v1"
	_ "github.com/containerd/containerd/api/services/snapshots/v1"
	_ "github.com/containerd/containerd/api/services/streaming/v1"
	_ "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/api/services/transfer/v1"
	_ "k8s.io/cri-api/pkg/apis/runtime/v1"
)
