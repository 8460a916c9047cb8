// Package content is Flotilla's content service: containerd's raw
// (unnamespaced) Content API served from a process of its own. The blob store
// lives in blobs, its gRPC façade in server, and the process wiring in
// cmd/flotilla-content. The namespaced Content API clients use is the
// metadata service's, which keeps its records and leases and stores the bytes
// here.
package content
