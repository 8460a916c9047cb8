// Package proto holds Flotilla's own gRPC APIs: service/v1 is the
// supervisor's handshake with a service process, admin/v1 the operator API
// flotillad serves on its client socket (the `flotilla` tool's), ingest/v1
// the control path of a namespaced content write (metadata serves it to the
// content process). The
// generated code is committed; regenerate it after editing a .proto file with
//
//	go generate ./proto
//
// which needs protoc (Debian: protobuf-compiler) and the Go plugins:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
package proto

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative service/v1/service.proto
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative admin/v1/admin.proto
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative ingest/v1/ingest.proto
