package monitor

import (
	"context"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/runtime/restart"
)

func TestShouldRestartFollowsThePolicy(t *testing.T) {
	exited := func(code uint32) containerd.Status {
		return containerd.Status{Status: containerd.Stopped, ExitStatus: code}
	}
	for _, tc := range []struct {
		name   string
		status containerd.Status
		labels map[string]string
		want   bool
	}{
		{"no policy means always", exited(0), map[string]string{}, true},
		{"always after success", exited(0), map[string]string{restart.PolicyLabel: "always"}, true},
		{"always explicitly stopped", exited(0), map[string]string{restart.PolicyLabel: "always", restart.ExplicitlyStoppedLabel: "true"}, false},
		{"unless-stopped", exited(1), map[string]string{restart.PolicyLabel: "unless-stopped"}, true},
		{"unless-stopped explicitly stopped", exited(1), map[string]string{restart.PolicyLabel: "unless-stopped", restart.ExplicitlyStoppedLabel: "true"}, false},
		{"no", exited(1), map[string]string{restart.PolicyLabel: "no"}, false},
		{"on-failure after success", exited(0), map[string]string{restart.PolicyLabel: "on-failure"}, false},
		{"on-failure after failure", exited(2), map[string]string{restart.PolicyLabel: "on-failure"}, true},
		{"on-failure:2 after one restart", exited(2), map[string]string{restart.PolicyLabel: "on-failure:2", restart.CountLabel: "1"}, true},
		{"on-failure:2 after two restarts", exited(2), map[string]string{restart.PolicyLabel: "on-failure:2", restart.CountLabel: "2"}, false},
		{"on-failure with a garbled count", exited(2), map[string]string{restart.PolicyLabel: "on-failure", restart.CountLabel: "x"}, false},
		{"an unknown policy", exited(2), map[string]string{restart.PolicyLabel: "sometimes"}, false},
		{"a task gone (no status)", containerd.Status{}, map[string]string{restart.PolicyLabel: "always"}, true},
	} {
		if got := shouldRestart(context.Background(), tc.status, tc.labels); got != tc.want {
			t.Errorf("%s: shouldRestart = %v, want %v", tc.name, got, tc.want)
		}
	}
}
