package rpc

import (
	"strings"
	"testing"

	_ "github.com/containerd/containerd/api/services/containers/v1"
	_ "github.com/containerd/containerd/api/services/content/v1"
	_ "github.com/containerd/containerd/api/services/diff/v1"
	_ "github.com/containerd/containerd/api/services/events/v1"
	_ "github.com/containerd/containerd/api/services/images/v1"
	_ "github.com/containerd/containerd/api/services/introspection/v1"
	_ "github.com/containerd/containerd/api/services/leases/v1"
	_ "github.com/containerd/containerd/api/services/mounts/v1"
	_ "github.com/containerd/containerd/api/services/namespaces/v1"
	_ "github.com/containerd/containerd/api/services/sandbox/v1"
	_ "github.com/containerd/containerd/api/services/snapshots/v1"
	_ "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	_ "k8s.io/cri-api/pkg/apis/runtime/v1"

	_ "github.com/flotilla-project/flotilla/proto/admin/v1"
)

func TestEveryKnownLevelNamesARealMethod(t *testing.T) {
	for method := range knownLevels {
		name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", "."))
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
		if err != nil {
			t.Errorf("%s is in the table but no linked API has it: %v", method, err)
			continue
		}
		if _, ok := d.(protoreflect.MethodDescriptor); !ok {
			t.Errorf("%s is in the table but names a %T, not a method", method, d)
		}
	}
}

func TestLevelsComeFromWhatAMethodDoesNotItsName(t *testing.T) {
	for _, c := range []struct {
		method     string
		readOnly   bool
		repeatable bool
	}{
		{"/containerd.services.tasks.v1.Tasks/Get", true, true},
		{"/containerd.services.tasks.v1.Tasks/Checkpoint", false, false},
		{"/runtime.v1.RuntimeService/CheckpointContainer", false, false},
		{"/runtime.v1.RuntimeService/ContainerStatus", true, true},
		{"/runtime.v1.RuntimeService/StopContainer", false, true},
		{"/containerd.services.content.v1.Content/Read", true, true},
		{"/containerd.services.content.v1.Content/Write", false, false},
		{"/containerd.services.containers.v1.Containers/Update", false, true},
		{"/containerd.services.containers.v1.Containers/Delete", false, false},
		{"/containerd.services.images.v1.Images/Create", false, false},
		// A subscription made again would miss what happened between.
		{"/containerd.services.events.v1.Events/Subscribe", false, false},
		{"/runtime.v1.RuntimeService/GetContainerEvents", false, false},
		// Flotilla's own protos say it in their descriptors.
		{"/flotilla.service.v1.Service/Describe", true, true},
		{"/flotilla.admin.v1.Admin/Services", true, true},
		{"/flotilla.admin.v1.Admin/Restart", false, false},
		{"/nobody.v1.Knows/This", false, false},
	} {
		if got := ReadOnly(c.method); got != c.readOnly {
			t.Errorf("ReadOnly(%s) = %v, want %v", c.method, got, c.readOnly)
		}
		if got := Repeatable(c.method); got != c.repeatable {
			t.Errorf("Repeatable(%s) = %v, want %v", c.method, got, c.repeatable)
		}
	}
}

func TestADescriptorsIdempotencyLevelIsTaken(t *testing.T) {
	level := func(l descriptorpb.MethodOptions_IdempotencyLevel) *descriptorpb.MethodOptions {
		return &descriptorpb.MethodOptions{IdempotencyLevel: l.Enum()}
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("flotilla/rpctest/v1/levels.proto"),
		Package:    proto.String("flotilla.rpctest.v1"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"google/protobuf/empty.proto"},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Store"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("Put"), InputType: proto.String(".google.protobuf.Empty"), OutputType: proto.String(".google.protobuf.Empty"), Options: level(Idempotent)},
				{Name: proto.String("Peek"), InputType: proto.String(".google.protobuf.Empty"), OutputType: proto.String(".google.protobuf.Empty"), Options: level(NoSideEffects)},
				{Name: proto.String("Poke"), InputType: proto.String(".google.protobuf.Empty"), OutputType: proto.String(".google.protobuf.Empty")},
			},
		}},
	}
	if _, err := protoregistry.GlobalFiles.FindFileByPath(fdp.GetName()); err != nil {
		fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
		if err != nil {
			t.Fatal(err)
		}
		if err := protoregistry.GlobalFiles.RegisterFile(fd); err != nil {
			t.Fatal(err)
		}
	}
	for method, want := range map[string]Level{
		"/flotilla.rpctest.v1.Store/Put":  Idempotent,
		"/flotilla.rpctest.v1.Store/Peek": NoSideEffects,
		"/flotilla.rpctest.v1.Store/Poke": Unknown,
	} {
		if got := IdempotencyOf(method); got != want {
			t.Errorf("IdempotencyOf(%s) = %v, want %v", method, got, want)
		}
	}
}
