//go:build !linux

package driver

// spreadSubdirs is a no-op where the filesystem's allocator takes no hint.
func spreadSubdirs(string) {}
