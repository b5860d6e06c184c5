package pgsql

import (
	"context"
	"sync"
)

// Shared runs an attempt on behalf of many callers: a caller that finds an
// attempt in flight waits for its result instead of starting its own. Ten
// Terraform operations that meet a server that never answers so fail
// together after one connect timeout, instead of one after another. The
// zero value is ready to use.
type Shared struct {
	mu  sync.Mutex
	cur *flight
}

type flight struct {
	done chan struct{}
	err  error
	// ownTime: the attempt ended because its caller's context did, which
	// says nothing about the server; the waiters try for themselves.
	ownTime bool
}

// Do runs f, or waits for the run in flight and returns its error.
func (s *Shared) Do(ctx context.Context, f func(context.Context) error) error {
	for {
		s.mu.Lock()
		if fl := s.cur; fl != nil {
			s.mu.Unlock()
			select {
			case <-fl.done:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if fl.ownTime {
				continue
			}
			return fl.err
		}
		fl := &flight{done: make(chan struct{})}
		s.cur = fl
		s.mu.Unlock()

		fl.err = f(ctx)
		fl.ownTime = fl.err != nil && ctx.Err() != nil
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		close(fl.done)
		return fl.err
	}
}
