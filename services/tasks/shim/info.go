package shim

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// infoTimeout bounds one `<shim> -info`, which runs the OCI runtime's
// `features` (a few tens of milliseconds).
const infoTimeout = 10 * time.Second

// RuntimeInfo asks a runtime's shim binary what it is and what it supports,
// as containerd does for Introspection.PluginInfo of its runtime plugin:
// `<shim> -info` reads the runtime options (a protobuf Any, as the client
// sent it; nothing for none) on stdin and prints a RuntimeInfo (name,
// version, options, and the OCI runtime's features) on stdout. runtime is a
// runtime name or a shim path, as a task's; "" is the default runtime.
func (m *Manager) RuntimeInfo(ctx context.Context, runtime string, options *anypb.Any) (*apitypes.RuntimeInfo, error) {
	binary, err := m.ResolveRuntime(runtime)
	if err != nil {
		return nil, err
	}
	var stdin []byte
	if options != nil {
		if stdin, err = proto.Marshal(options); err != nil {
			return nil, fmt.Errorf("runtime options %s: %w", options.GetTypeUrl(), err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, "-info")
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stderr = &stderr
	cmd.Env = shimEnviron()
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -info: %w (stderr: %q)", binary, err, stderr.String())
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("%s -info printed no RuntimeInfo: %w", binary, err)
	}
	return &info, nil
}
