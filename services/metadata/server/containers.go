package server

import (
	"context"

	eventstypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/containers/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Containers serves containerd.services.containers.v1.
type Containers struct {
	api.UnimplementedContainersServer
	db  *metadb.DB
	pub *Publisher
}

func (s *Containers) Register(srv grpc.ServiceRegistrar) { api.RegisterContainersServer(srv, s) }

func (s *Containers) Get(ctx context.Context, req *api.GetContainerRequest) (*api.GetContainerResponse, error) {
	c, err := s.db.GetContainer(ctx, req.GetID())
	if err != nil {
		return nil, err
	}
	return &api.GetContainerResponse{Container: c}, nil
}

func (s *Containers) List(ctx context.Context, req *api.ListContainersRequest) (*api.ListContainersResponse, error) {
	cs, err := s.db.ListContainers(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	return &api.ListContainersResponse{Containers: cs}, nil
}

// ListStream sends containers in messages bounded well below the 16 MiB
// limit, for namespaces whose specs add up to more than one message holds.
func (s *Containers) ListStream(req *api.ListContainersRequest, stream api.Containers_ListStreamServer) error {
	cs, err := s.db.ListContainers(stream.Context(), req.GetFilters()...)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := stream.Send(&api.ListContainerMessage{Container: c}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Containers) Create(ctx context.Context, req *api.CreateContainerRequest) (*api.CreateContainerResponse, error) {
	c, err := s.db.CreateContainer(ctx, req.GetContainer())
	if err != nil {
		return nil, err
	}
	ev := &eventstypes.ContainerCreate{ID: c.ID, Image: c.Image}
	if c.Runtime != nil {
		ev.Runtime = &eventstypes.ContainerCreate_Runtime{Name: c.Runtime.Name, Options: c.Runtime.Options}
	}
	s.pub.Publish(ctx, "/containers/create", ev, "")
	return &api.CreateContainerResponse{Container: c}, nil
}

func (s *Containers) Update(ctx context.Context, req *api.UpdateContainerRequest) (*api.UpdateContainerResponse, error) {
	c, err := s.db.UpdateContainer(ctx, req.GetContainer(), req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/containers/update", &eventstypes.ContainerUpdate{
		ID: c.ID, Image: c.Image, Labels: c.Labels, SnapshotKey: c.SnapshotKey,
	}, "")
	return &api.UpdateContainerResponse{Container: c}, nil
}

func (s *Containers) Delete(ctx context.Context, req *api.DeleteContainerRequest) (*emptypb.Empty, error) {
	if err := s.db.DeleteContainer(ctx, req.GetID()); err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/containers/delete", &eventstypes.ContainerDelete{ID: req.GetID()}, "")
	return &emptypb.Empty{}, nil
}
