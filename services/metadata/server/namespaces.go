package server

import (
	"context"

	eventstypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Namespaces serves containerd.services.namespaces.v1.
type Namespaces struct {
	api.UnimplementedNamespacesServer
	db  *metadb.DB
	pub *Publisher
}

func (s *Namespaces) Register(srv grpc.ServiceRegistrar) { api.RegisterNamespacesServer(srv, s) }

// Get of a namespace nobody wrote in answers it with no labels, as
// containerd does: clients (dockerd, containerd's own client) read the
// labels of their default namespace before anything exists in it.
func (s *Namespaces) Get(ctx context.Context, req *api.GetNamespaceRequest) (*api.GetNamespaceResponse, error) {
	ns, err := s.db.GetNamespace(ctx, req.GetName())
	if errdefs.IsNotFound(err) {
		return &api.GetNamespaceResponse{Namespace: &api.Namespace{Name: req.GetName()}}, nil
	}
	if err != nil {
		return nil, err
	}
	return &api.GetNamespaceResponse{Namespace: &api.Namespace{Name: ns.Name, Labels: ns.Labels}}, nil
}

func (s *Namespaces) List(ctx context.Context, req *api.ListNamespacesRequest) (*api.ListNamespacesResponse, error) {
	all, err := s.db.ListNamespaces(ctx)
	if err != nil {
		return nil, err
	}
	resp := &api.ListNamespacesResponse{}
	for _, ns := range all {
		resp.Namespaces = append(resp.Namespaces, &api.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	return resp, nil
}

func (s *Namespaces) Create(ctx context.Context, req *api.CreateNamespaceRequest) (*api.CreateNamespaceResponse, error) {
	in := req.GetNamespace()
	ns, err := s.db.CreateNamespace(ctx, metadb.Namespace{Name: in.GetName(), Labels: in.GetLabels()})
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/namespaces/create", &eventstypes.NamespaceCreate{Name: ns.Name, Labels: ns.Labels}, ns.Name)
	return &api.CreateNamespaceResponse{Namespace: &api.Namespace{Name: ns.Name, Labels: ns.Labels}}, nil
}

func (s *Namespaces) Update(ctx context.Context, req *api.UpdateNamespaceRequest) (*api.UpdateNamespaceResponse, error) {
	in := req.GetNamespace()
	update := metadb.Namespace{Name: in.GetName(), Labels: in.GetLabels()}
	ns, err := s.db.UpdateNamespace(ctx, update, req.GetUpdateMask().GetPaths()...)
	if errdefs.IsNotFound(err) {
		// As containerd: labelling a namespace makes it.
		if _, cerr := s.db.CreateNamespace(ctx, metadb.Namespace{Name: update.Name}); cerr != nil && !errdefs.IsAlreadyExists(cerr) {
			return nil, cerr
		}
		ns, err = s.db.UpdateNamespace(ctx, update, req.GetUpdateMask().GetPaths()...)
	}
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/namespaces/update", &eventstypes.NamespaceUpdate{Name: ns.Name, Labels: ns.Labels}, ns.Name)
	return &api.UpdateNamespaceResponse{Namespace: &api.Namespace{Name: ns.Name, Labels: ns.Labels}}, nil
}

func (s *Namespaces) Delete(ctx context.Context, req *api.DeleteNamespaceRequest) (*emptypb.Empty, error) {
	if err := s.db.DeleteNamespace(ctx, req.GetName()); err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/namespaces/delete", &eventstypes.NamespaceDelete{Name: req.GetName()}, req.GetName())
	return &emptypb.Empty{}, nil
}
