package server

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-project/flotilla/services/tasks/shim"
)

// The runtime plugin as containerd's clients know it: type and id of
// containerd's runtime v2 task manager, whose PluginInfo answers a
// RuntimeRequest with the shim's RuntimeInfo (client.RuntimeInfo, nerdctl,
// the CRI's runtime handler features).
const (
	RuntimePluginType = "io.containerd.runtime.v2"
	RuntimePluginID   = "task"
)

// logURISchemes are the task IO URIs the shims take, as containerd's
// runtime plugin exports them.
var logURISchemes = []string{"binary", "fifo", "file"}

// runtimeInfo serves Introspection.PluginInfo for the runtime plugin on the
// tasks process's socket; the gateway, which serves Introspection to
// clients, asks it for the runtime's extra information.
type runtimeInfo struct {
	introspectionapi.UnimplementedIntrospectionServer
	shims *shim.Manager
}

func (s *Tasks) registerIntrospection(srv grpc.ServiceRegistrar) {
	introspectionapi.RegisterIntrospectionServer(srv, &runtimeInfo{shims: s.shims})
}

// PluginInfo answers for the runtime plugin: with options (a RuntimeRequest
// naming a runtime and its options), the RuntimeInfo the runtime's shim
// prints for them.
func (r *runtimeInfo) PluginInfo(ctx context.Context, req *introspectionapi.PluginInfoRequest) (*introspectionapi.PluginInfoResponse, error) {
	if req.Type != RuntimePluginType || req.ID != RuntimePluginID {
		return nil, fmt.Errorf("plugin %s.%s not found in the tasks service: %w", req.Type, req.ID, errdefs.ErrNotFound)
	}
	resp := &introspectionapi.PluginInfoResponse{Plugin: &introspectionapi.Plugin{Type: req.Type, ID: req.ID}}
	if req.Options == nil {
		return resp, nil
	}
	var rr apitypes.RuntimeRequest
	if err := typeurl.UnmarshalTo(req.Options, &rr); err != nil {
		return nil, fmt.Errorf("runtime plugin info takes a %s: %v: %w", proto.MessageName(&rr), err, errdefs.ErrInvalidArgument)
	}
	info, err := r.shims.RuntimeInfo(ctx, rr.RuntimePath, rr.Options)
	if err != nil {
		return nil, err
	}
	// Typed as containerd types it ("containerd.types.RuntimeInfo", not
	// anypb's type.googleapis.com/...), which its clients unmarshal by.
	extra, err := typeurl.MarshalAnyToProto(info)
	if err != nil {
		return nil, err
	}
	resp.Extra = extra
	return resp, nil
}

// RuntimeExports describes the default runtime for Introspection's plugin
// list (`ctr plugins ls -d`): what its shim says of itself and of the OCI
// runtime's features, under keys that go to the runtime plugin ("plugin."
// prefixed: the gateway lists them under the plugin's id, not the
// process's). A shim that cannot say leaves the features out.
func RuntimeExports(ctx context.Context, shims *shim.Manager) map[string]string {
	ex := map[string]string{
		"plugin_id":              RuntimePluginID,
		"plugin.log-uri-schemes": strings.Join(logURISchemes, ","),
		"plugin.runtime":         shim.DefaultRuntime,
	}
	info, err := shims.RuntimeInfo(ctx, "", nil)
	if err != nil {
		ex["plugin.runtime.error"] = err.Error()
		return ex
	}
	ex["plugin.runtime.name"] = info.Name
	if v := info.GetVersion(); v != nil {
		ex["plugin.runtime.version"] = v.Version
		if v.Revision != "" {
			ex["plugin.runtime.revision"] = v.Revision
		}
	}
	for k, v := range featureExports(info.GetFeatures()) {
		ex["plugin.features."+k] = v
	}
	return ex
}

// featureExports flattens the OCI runtime's features document (JSON in an
// Any, as runtime-spec's features) into a few readable exports.
func featureExports(a typeurl.Any) map[string]string {
	if a == nil || !strings.HasSuffix(a.GetTypeUrl(), "features/Features") {
		return nil
	}
	var f features.Features
	if err := json.Unmarshal(a.GetValue(), &f); err != nil {
		return map[string]string{"error": err.Error()}
	}
	ex := map[string]string{}
	set := func(k string, vs []string) {
		if len(vs) > 0 {
			vs = append([]string(nil), vs...)
			sort.Strings(vs)
			ex[k] = strings.Join(vs, ",")
		}
	}
	if f.OCIVersionMin != "" || f.OCIVersionMax != "" {
		ex["oci_version"] = f.OCIVersionMin + " - " + f.OCIVersionMax
	}
	set("hooks", f.Hooks)
	set("mount_options", f.MountOptions)
	l := f.Linux
	if l == nil {
		return ex
	}
	set("namespaces", l.Namespaces)
	set("capabilities", l.Capabilities)
	yes := func(b *bool) bool { return b != nil && *b }
	if c := l.Cgroup; c != nil {
		var vs []string
		for name, on := range map[string]*bool{"v1": c.V1, "v2": c.V2, "systemd": c.Systemd, "systemd-user": c.SystemdUser, "rdma": c.Rdma} {
			if yes(on) {
				vs = append(vs, name)
			}
		}
		set("cgroup", vs)
	}
	if s := l.Seccomp; s != nil {
		ex["seccomp"] = strconv.FormatBool(yes(s.Enabled))
	}
	if a := l.Apparmor; a != nil {
		ex["apparmor"] = strconv.FormatBool(yes(a.Enabled))
	}
	if s := l.Selinux; s != nil {
		ex["selinux"] = strconv.FormatBool(yes(s.Enabled))
	}
	if m := l.MountExtensions; m != nil && m.IDMap != nil {
		ex["idmap_mounts"] = strconv.FormatBool(yes(m.IDMap.Enabled))
	}
	return ex
}
