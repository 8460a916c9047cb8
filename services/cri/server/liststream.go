package server

import (
	"github.com/flotilla-project/flotilla/services/cri/image"
	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The Stream* methods (the kubelet's CRIListStreaming gate) answer what
// their List* counterparts do, in messages of at most image.StreamBatch items,
// so that a node with many objects never meets gRPC's message size limit.
// Each item is sent once; the stream ends (EOF) after the last batch.

// sendBatches sends items in batches of image.StreamBatch; nothing for none.
func sendBatches[T any](items []T, send func([]T) error) error {
	for len(items) > 0 {
		n := min(len(items), image.StreamBatch)
		if err := send(items[:n]); err != nil {
			return err
		}
		items = items[n:]
	}
	return nil
}

// StreamContainers is ListContainers in batches.
func (s *Server) StreamContainers(req *runtime.StreamContainersRequest, stream grpc.ServerStreamingServer[runtime.StreamContainersResponse]) error {
	resp, err := s.ListContainers(stream.Context(), &runtime.ListContainersRequest{Filter: req.GetFilter()})
	if err != nil {
		return err
	}
	return sendBatches(resp.GetContainers(), func(b []*runtime.Container) error {
		return stream.Send(&runtime.StreamContainersResponse{Containers: b})
	})
}

// StreamPodSandboxes is ListPodSandbox in batches.
func (s *Server) StreamPodSandboxes(req *runtime.StreamPodSandboxesRequest, stream grpc.ServerStreamingServer[runtime.StreamPodSandboxesResponse]) error {
	resp, err := s.ListPodSandbox(stream.Context(), &runtime.ListPodSandboxRequest{Filter: req.GetFilter()})
	if err != nil {
		return err
	}
	return sendBatches(resp.GetItems(), func(b []*runtime.PodSandbox) error {
		return stream.Send(&runtime.StreamPodSandboxesResponse{PodSandboxes: b})
	})
}

// StreamContainerStats is ListContainerStats in batches.
func (s *Server) StreamContainerStats(req *runtime.StreamContainerStatsRequest, stream grpc.ServerStreamingServer[runtime.StreamContainerStatsResponse]) error {
	resp, err := s.ListContainerStats(stream.Context(), &runtime.ListContainerStatsRequest{Filter: req.GetFilter()})
	if err != nil {
		return err
	}
	return sendBatches(resp.GetStats(), func(b []*runtime.ContainerStats) error {
		return stream.Send(&runtime.StreamContainerStatsResponse{ContainerStats: b})
	})
}

// StreamPodSandboxStats is ListPodSandboxStats in batches.
func (s *Server) StreamPodSandboxStats(req *runtime.StreamPodSandboxStatsRequest, stream grpc.ServerStreamingServer[runtime.StreamPodSandboxStatsResponse]) error {
	resp, err := s.ListPodSandboxStats(stream.Context(), &runtime.ListPodSandboxStatsRequest{Filter: req.GetFilter()})
	if err != nil {
		return err
	}
	return sendBatches(resp.GetStats(), func(b []*runtime.PodSandboxStats) error {
		return stream.Send(&runtime.StreamPodSandboxStatsResponse{PodSandboxStats: b})
	})
}
