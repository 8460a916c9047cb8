// Package version serves containerd's Version API from the gateway: the
// daemon as a whole has one version, the semantic version flotillad was
// built as (pkg/version).
package version

import (
	"context"

	api "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/pkg/version"
)

// Service is the containerd.services.version.v1.Version server.
type Service struct {
	api.UnimplementedVersionServer
}

// NewService returns a Version server reporting pkg/version's Version and
// Revision.
func NewService() *Service { return &Service{} }

// Register adds the service to s.
func (v *Service) Register(s grpc.ServiceRegistrar) { api.RegisterVersionServer(s, v) }

// Version reports the build's version and revision.
func (*Service) Version(context.Context, *emptypb.Empty) (*api.VersionResponse, error) {
	return &api.VersionResponse{Version: version.Version, Revision: version.Revision}, nil
}
