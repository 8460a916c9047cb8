package server

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/protobuf/types/known/emptypb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
	"github.com/flotilla-project/flotilla/services/cri/network"
)

const (
	// kubeAPIVersion is the version of the kubelet-runtime API, which the
	// CRI fixes at 0.1.0.
	kubeAPIVersion = "0.1.0"
	runtimeName    = "flotilla"
	// runtimeAPIVersion is the CRI version served.
	runtimeAPIVersion = "v1"
)

// Version reports the daemon's version: the one the gateway reports for
// the whole daemon, or this binary's own when the gateway cannot tell.
func (s *Server) Version(ctx context.Context, _ *runtime.VersionRequest) (*runtime.VersionResponse, error) {
	v, err := versionapi.NewVersionClient(s.daemon).Version(ctx, &emptypb.Empty{})
	version := v.GetVersion()
	if err != nil || version == "" {
		logging.G(ctx).Debug("daemon version unknown, reporting this binary's", "error", err)
		version = buildVersion()
	}
	return &runtime.VersionResponse{
		Version:           kubeAPIVersion,
		RuntimeName:       runtimeName,
		RuntimeVersion:    version,
		RuntimeApiVersion: runtimeAPIVersion,
	}, nil
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}

// Status reports the runtime ready and the network ready once a CNI
// network configuration exists, and the runtime handlers with what each
// supports.
func (s *Server) Status(ctx context.Context, req *runtime.StatusRequest) (*runtime.StatusResponse, error) {
	networkReady := &runtime.RuntimeCondition{Type: runtime.NetworkReady, Status: true}
	if ok, err := network.HasConfig(s.cfg.CNIConfDir); !ok {
		networkReady.Status = false
		networkReady.Reason = "NetworkPluginNotReady"
		networkReady.Message = fmt.Sprintf("Network plugin returns error: cni config not found in %s", s.cfg.CNIConfDir)
		if err != nil {
			networkReady.Message = fmt.Sprintf("Network plugin returns error: %v", err)
		}
	}
	resp := &runtime.StatusResponse{
		Status: &runtime.RuntimeStatus{Conditions: []*runtime.RuntimeCondition{
			{Type: runtime.RuntimeReady, Status: true},
			networkReady,
		}},
		// Both supplemental groups policies are applied (see userOpts).
		Features: &runtime.RuntimeFeatures{SupplementalGroupsPolicy: true},
	}
	resp.RuntimeHandlers = s.cfg.Runtimes.List(ctx, s.client.IntrospectionService())
	if req.GetVerbose() {
		b, err := json.Marshal(map[string]any{
			"snapshotter":        s.cfg.Snapshotter,
			"insecureRegistries": s.cfg.InsecureRegistries,
			"configPath":         s.cfg.ConfigPath,
			"cniConfDir":         s.cfg.CNIConfDir,
			"defaultRuntimeName": s.cfg.Runtimes.Default(),
			"runtimes":           s.cfg.Runtimes.Describe(),
			"enableCDI":          s.cfg.EnableCDI,
			"cdiSpecDirs":        s.cfg.CDISpecDirs,
		})
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"config": string(b)}
	}
	return resp, nil
}
