package server

import (
	"context"
	"fmt"

	eventstypes "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla-project/flotilla/services/metadata/metadb"
)

// Images serves containerd.services.images.v1.
type Images struct {
	api.UnimplementedImagesServer
	db  *metadb.DB
	pub *Publisher
}

func (s *Images) Register(srv grpc.ServiceRegistrar) { api.RegisterImagesServer(srv, s) }

func (s *Images) Get(ctx context.Context, req *api.GetImageRequest) (*api.GetImageResponse, error) {
	img, err := s.db.GetImage(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &api.GetImageResponse{Image: imageToProto(img)}, nil
}

func (s *Images) List(ctx context.Context, req *api.ListImagesRequest) (*api.ListImagesResponse, error) {
	imgs, err := s.db.ListImages(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	resp := &api.ListImagesResponse{Images: make([]*api.Image, 0, len(imgs))}
	for _, img := range imgs {
		resp.Images = append(resp.Images, imageToProto(img))
	}
	return resp, nil
}

func (s *Images) Create(ctx context.Context, req *api.CreateImageRequest) (*api.CreateImageResponse, error) {
	in, err := imageFromProto(req.GetImage())
	if err != nil {
		return nil, err
	}
	img, err := s.db.CreateImage(ctx, in)
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/images/create", &eventstypes.ImageCreate{Name: img.Name, Labels: img.Labels}, "")
	return &api.CreateImageResponse{Image: imageToProto(img)}, nil
}

func (s *Images) Update(ctx context.Context, req *api.UpdateImageRequest) (*api.UpdateImageResponse, error) {
	in, err := imageFromProto(req.GetImage())
	if err != nil {
		return nil, err
	}
	img, err := s.db.UpdateImage(ctx, in, req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/images/update", &eventstypes.ImageUpdate{Name: img.Name, Labels: img.Labels}, "")
	return &api.UpdateImageResponse{Image: imageToProto(img)}, nil
}

func (s *Images) Delete(ctx context.Context, req *api.DeleteImageRequest) (*emptypb.Empty, error) {
	var target digest.Digest
	if t := req.GetTarget(); t != nil && t.GetDigest() != "" {
		d, err := digest.Parse(t.GetDigest())
		if err != nil {
			return nil, fmt.Errorf("target digest %q: %v: %w", t.GetDigest(), err, errdefs.ErrInvalidArgument)
		}
		target = d
	}
	if err := s.db.DeleteImage(ctx, req.GetName(), target, req.GetSync()); err != nil {
		return nil, err
	}
	s.pub.Publish(ctx, "/images/delete", &eventstypes.ImageDelete{Name: req.GetName()}, "")
	return &emptypb.Empty{}, nil
}

func imageToProto(img images.Image) *api.Image {
	return &api.Image{
		Name:   img.Name,
		Labels: img.Labels,
		Target: &types.Descriptor{
			MediaType:   img.Target.MediaType,
			Digest:      img.Target.Digest.String(),
			Size:        img.Target.Size,
			Annotations: img.Target.Annotations,
		},
		CreatedAt: timestamppb.New(img.CreatedAt),
		UpdatedAt: timestamppb.New(img.UpdatedAt),
	}
}

func imageFromProto(in *api.Image) (images.Image, error) {
	if in == nil {
		return images.Image{}, fmt.Errorf("request carries no image: %w", errdefs.ErrInvalidArgument)
	}
	img := images.Image{Name: in.GetName(), Labels: in.GetLabels()}
	if t := in.GetTarget(); t != nil {
		img.Target = ocispec.Descriptor{
			MediaType:   t.GetMediaType(),
			Digest:      digest.Digest(t.GetDigest()),
			Size:        t.GetSize(),
			Annotations: t.GetAnnotations(),
		}
	}
	return img, nil
}
