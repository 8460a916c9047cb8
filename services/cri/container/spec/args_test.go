package spec

import (
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestContainerArgsMergeImageAndRequest(t *testing.T) {
	ep, cmd := []string{"/ep"}, []string{"c1"}
	for _, tc := range []struct {
		name          string
		command, args []string
		want          string
	}{
		{"image only", nil, nil, "/ep c1"},
		{"args replace the image command", nil, []string{"a"}, "/ep a"},
		{"command replaces entrypoint and command", []string{"sh"}, nil, "sh"},
		{"command and args", []string{"sh"}, []string{"-c", "x"}, "sh -c x"},
	} {
		got := strings.Join(containerArgs(&runtime.ContainerConfig{Command: tc.command, Args: tc.args}, ep, cmd), " ")
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
