package rpc

import "testing"

// TestReadOnly pins which methods are retried across a restart of their
// service: every read of containerd's and the CRI's APIs, and nothing that
// changes state.
func TestReadOnly(t *testing.T) {
	reads := []string{
		// containerd
		"Get", "List", "ListStream", "ListPids", "ListStatuses", "ListResources", "Info", "Read", "Status",
		"Stat", "Mounts", "Usage", "Version", "Metrics", "Platform",
		// CRI
		"ImageStatus", "ImageFsInfo", "ListImages", "ContainerStatus", "ContainerStats", "ListContainers",
		"ListContainerStats", "PodSandboxStatus", "PodSandboxStats", "ListPodSandbox", "ListPodSandboxStats",
		"ListPodSandboxMetrics", "ListMetricDescriptors", "RuntimeConfig", "GetContainerEvents",
		// gRPC health
		"Check",
	}
	writes := []string{
		// containerd
		"Create", "Update", "Delete", "Abort", "Write", "Prepare", "View", "Commit", "Remove", "Cleanup",
		"Apply", "Diff", "Start", "Kill", "Exec", "Pause", "Resume", "CloseIO", "ResizePty", "Checkpoint",
		"DeleteProcess", "AddResource", "DeleteResource", "Publish", "Forward", "Transfer",
		// CRI
		"RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "CreateContainer", "StartContainer",
		"StopContainer", "RemoveContainer", "ExecSync", "UpdateContainerResources", "UpdateRuntimeConfig",
		"ReopenContainerLog", "CheckpointContainer", "CheckpointPod", "RestorePod", "PullImage", "RemoveImage",
	}
	for _, m := range reads {
		if !ReadOnly(m) {
			t.Errorf("ReadOnly(%q) = false: a read that would not be retried across a restart", m)
		}
	}
	for _, m := range writes {
		if ReadOnly(m) {
			t.Errorf("ReadOnly(%q) = true: a call that changes state would be made twice", m)
		}
	}
}
