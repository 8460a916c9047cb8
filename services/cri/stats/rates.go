package stats

import "sync"

// CPURates turns cumulative CPU time into nano-cores, from the previous
// sample of the same object. The samples live in this process only: after
// a restart the first call reports no rate, as a new object's does.
type CPURates struct {
	mu   sync.Mutex
	last map[string]Sample
}

// NewCPURates returns rates that know no sample yet.
func NewCPURates() *CPURates { return &CPURates{last: map[string]Sample{}} }

// NanoCores records s as the latest sample of id and returns the CPU rate
// since the one before; nil for the first sample, one not newer than the
// last, or a counter that went back.
func (r *CPURates) NanoCores(id string, s Sample) *uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, ok := r.last[id]
	if !ok || !s.at.After(prev.at) {
		if !ok {
			r.last[id] = s
		}
		return nil
	}
	r.last[id] = s
	if s.cpuNanos < prev.cpuNanos {
		return nil
	}
	v := uint64(float64(s.cpuNanos-prev.cpuNanos) / float64(s.at.Sub(prev.at).Nanoseconds()) * 1e9)
	return &v
}

// Forget drops the samples of an object that is gone.
func (r *CPURates) Forget(id string) {
	r.mu.Lock()
	delete(r.last, id)
	r.mu.Unlock()
}
