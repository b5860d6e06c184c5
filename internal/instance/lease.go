package instance

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"
)

// LeaseConfig sets the create lease. The defaults keep a name blocked for
// at most half a minute after a create died; tests shorten them through
// the environment (see LeaseFromEnv) instead of sleeping through them.
type LeaseConfig struct {
	// TTL is how long a create's lease lasts without renewal.
	TTL time.Duration
	// Renew is how often a running create renews it.
	Renew time.Duration
	// Poll is how often a create waiting for another run's lease looks
	// again.
	Poll time.Duration
}

const (
	defaultLeaseTTL  = 30 * time.Second
	defaultLeasePoll = 250 * time.Millisecond
	// minLeaseTTL keeps a lease renewable over a slow meta DB.
	minLeaseTTL = time.Second
)

func (c LeaseConfig) withDefaults() LeaseConfig {
	if c.TTL <= 0 {
		c.TTL = defaultLeaseTTL
	}
	if c.TTL < minLeaseTTL {
		c.TTL = minLeaseTTL
	}
	if c.Renew <= 0 || c.Renew >= c.TTL {
		c.Renew = c.TTL / 6
	}
	if c.Poll <= 0 {
		c.Poll = defaultLeasePoll
	}
	return c
}

// LeaseFromEnv reads POSTGRAAS_LEASE_TTL, POSTGRAAS_LEASE_RENEW and
// POSTGRAAS_LEASE_POLL (Go durations such as "4s"); unset ones keep their
// defaults (30s, TTL/6, 250ms).
func LeaseFromEnv() (LeaseConfig, error) {
	var c LeaseConfig
	for _, v := range []struct {
		env string
		dst *time.Duration
	}{{"POSTGRAAS_LEASE_TTL", &c.TTL}, {"POSTGRAAS_LEASE_RENEW", &c.Renew}, {"POSTGRAAS_LEASE_POLL", &c.Poll}} {
		s := os.Getenv(v.env)
		if s == "" {
			continue
		}
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return c, fmt.Errorf("%s=%q is not a positive duration such as \"30s\"", v.env, s)
		}
		*v.dst = d
	}
	return c.withDefaults(), nil
}

// The process-wide shutdown: SIGTERM or SIGINT cancels every create in
// flight, whose undo then runs, and the signal handler waits for them.
var (
	shutdownCtx, shutdown = context.WithCancelCause(context.Background())
	inflight              sync.WaitGroup
)

// track ties ctx to the process-wide shutdown and counts the operation as
// in flight until done is called.
func track(ctx context.Context) (context.Context, func()) {
	inflight.Add(1)
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(shutdownCtx, func() { cancel(context.Cause(shutdownCtx)) })
	return ctx, func() {
		stop()
		cancel(nil)
		inflight.Done()
	}
}

// Shutdown cancels every create in flight, with reason as the cause, and
// waits at most wait for them to undo what they made. It reports whether
// they all finished.
func Shutdown(reason error, wait time.Duration) bool {
	shutdown(reason)
	finished := make(chan struct{})
	go func() {
		inflight.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return true
	case <-time.After(wait):
		return false
	}
}
