package server

import (
	"context"

	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The ImageService calls are package image's; these hand them over.

// PullImage: see image.Service.PullImage.
func (s *Server) PullImage(ctx context.Context, req *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	return s.images.PullImage(ctx, req)
}

// ListImages: see image.Service.ListImages.
func (s *Server) ListImages(ctx context.Context, req *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return s.images.ListImages(ctx, req)
}

// StreamImages: see image.Service.StreamImages.
func (s *Server) StreamImages(req *runtime.StreamImagesRequest, stream grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	return s.images.StreamImages(req, stream)
}

// ImageStatus: see image.Service.ImageStatus.
func (s *Server) ImageStatus(ctx context.Context, req *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	return s.images.ImageStatus(ctx, req)
}

// RemoveImage: see image.Service.RemoveImage.
func (s *Server) RemoveImage(ctx context.Context, req *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	return s.images.RemoveImage(ctx, req)
}

// ImageFsInfo: see image.Service.ImageFsInfo.
func (s *Server) ImageFsInfo(ctx context.Context, req *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	return s.images.ImageFsInfo(ctx, req)
}

// WatchImages keeps the image index's subscription to image events until
// the server closes; without it every resolve lists the images.
func (s *Server) WatchImages() {
	s.images.WatchImages(s.bg)
}
