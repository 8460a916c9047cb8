package router

import (
	"os"
	"sync"
	"time"
)

// A client reading a blob in many calls (containerd's content reader asks
// for each 32 KiB apart: ctr content get makes thousands) would otherwise
// have the content process, and metadata behind it, decide every one. A
// grant of a blob to a namespace is kept a moment for the calls that follow,
// and forgotten at once when the namespace deletes the blob (ForgetBlob,
// on the /content/delete event): only a record a collection takes (an
// expired lease's) can still be read for that moment, as an open reader of
// containerd's can.

// grantTTL is how long a blob granted to a namespace is read without asking
// again.
const grantTTL = time.Second

// maxGrants bounds the files held open for grants.
const maxGrants = 64

type grantKey struct{ namespace, digest string }

type grant struct {
	f    *os.File
	size int64
	at   time.Time
	refs int  // reads using f
	gone bool // forgotten: closed once no read uses it
}

type grants struct {
	mu sync.Mutex
	m  map[grantKey]*grant
}

// take returns the live grant of key, counted as used; release it after.
func (g *grants) take(k grantKey) *grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	gr := g.m[k]
	if gr == nil {
		return nil
	}
	if time.Since(gr.at) > grantTTL {
		g.drop(k, gr)
		return nil
	}
	gr.refs++
	return gr
}

// add keeps a new grant, counted as used.
func (g *grants) add(k grantKey, f *os.File, size int64) *grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[grantKey]*grant{}
	}
	if old := g.m[k]; old != nil {
		g.drop(k, old)
	}
	if len(g.m) >= maxGrants {
		for ok, og := range g.m {
			if time.Since(og.at) > grantTTL || len(g.m) >= maxGrants {
				g.drop(ok, og)
			}
		}
	}
	gr := &grant{f: f, size: size, at: time.Now(), refs: 1}
	g.m[k] = gr
	return gr
}

func (g *grants) release(gr *grant) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gr.refs--; gr.refs <= 0 && gr.gone {
		gr.f.Close()
	}
}

// forget drops the grant of key.
func (g *grants) forget(k grantKey) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gr := g.m[k]; gr != nil {
		g.drop(k, gr)
	}
}

func (g *grants) drop(k grantKey, gr *grant) {
	delete(g.m, k)
	gr.gone = true
	if gr.refs <= 0 {
		gr.f.Close()
	}
}
