// Package content is Flotilla's content service: containerd's raw
// Content API over a blob store under the service root. The gateway routes
// no client API here; the metadata service serves the namespaced Content API
// and keeps its bytes in this one.
package content

import (
	"context"

	"github.com/flotilla-project/flotilla/pkg/contentserver"
	"github.com/flotilla-project/flotilla/pkg/service"
	"github.com/flotilla-project/flotilla/services/content/blobs"
)

// New builds the content service in its process.
func New(ctx context.Context, p *service.Process) (*service.Instance, error) {
	store, err := blobs.Open(p.Env.Root, p.Logger)
	if err != nil {
		return nil, err
	}
	return &service.Instance{
		Type:     "io.containerd.content.v1",
		Exports:  map[string]string{"root": p.Env.Root},
		Register: contentserver.New(store, p.Logger).Register,
		Close:    func(context.Context) error { return store.Close() },
	}, nil
}
