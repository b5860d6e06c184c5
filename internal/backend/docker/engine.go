package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/client"

	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// engine makes sure the engine answers, before an operation's first API
// call. An engine that accepts connections but never answers (a paused VM,
// a dead proxy in front of it) would otherwise hold every call until the
// operation's timeout, minutes; this fails within ConnectTimeout. Callers
// that arrive while a ping is out wait for its result rather than sending
// their own, so ten operations against a dead engine fail together after
// one connect timeout, not one after another. Only a success is
// remembered: after a failure the next caller pings again.
func (b *Backend) engine(ctx context.Context) error {
	if b.answered.Load() {
		return nil
	}
	return b.pinging.Do(ctx, func(ctx context.Context) error {
		if b.answered.Load() {
			return nil
		}
		limit := b.handshakeLimit()
		pctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		p, err := b.cli.Ping(pctx)
		if err == nil {
			// The answer settles the API version too, which the client
			// would otherwise ask for with a ping of its own, unbounded,
			// on the first call.
			b.cli.NegotiateAPIVersionPing(p)
			b.answered.Store(true)
			return nil
		}
		if ctx.Err() != nil {
			// The operation's own time ran out: its timeout, not the
			// engine's, is what a diagnostic must name.
			return fmt.Errorf("waiting for the Docker engine at %s: %w", b.engineAddr, err)
		}
		reason, cause := b.whyNoAnswer(pctx, err)
		return &reach.Error{Component: reach.DockerEngine, Address: b.engineAddr, Reason: reason,
			Timeout: limit, Err: cause}
	})
}

// handshakeLimit bounds the engine's first answer: the connect timeout, or
// for an ssh:// engine at least ssh's own ConnectTimeout, since the answer
// then includes a whole ssh login and the remote docker CLI starting (the
// docker CLI allows the same 30 s; on a loaded machine 10 s were seen not
// to be enough).
func (b *Backend) handshakeLimit() time.Duration {
	if strings.HasPrefix(b.engineAddr, "ssh://") {
		return max(b.cfg.ConnectTimeout, sshConnectTimeout)
	}
	return b.cfg.ConnectTimeout
}

// errPingTimeout is the cause of a ping that the connect timeout cut off.
var errPingTimeout = fmt.Errorf("HEAD /_ping: %w", context.DeadlineExceeded)

// whyNoAnswer says why a ping failed, with a cause fit to end a sentence.
// The docker client reports a refused connection, a missing socket and
// its own dial timeout alike, as "Cannot connect to the Docker daemon at
// …. Is the docker daemon running?" without the cause; for a unix:// or
// tcp:// engine a plain dial of its address, within what is left of the
// connect timeout, tells them apart.
func (b *Backend) whyNoAnswer(pctx context.Context, err error) (reach.Reason, error) {
	if pctx.Err() != nil {
		return reach.Timeout, errPingTimeout
	}
	if !client.IsErrConnectionFailed(err) || b.dialNet == "" {
		return reach.Other, sentence{err}
	}
	conn, derr := (&net.Dialer{}).DialContext(pctx, b.dialNet, b.dialAddr)
	switch {
	case derr == nil:
		// Something listens but does not speak the engine's API (TLS on
		// one side only, say): the client's text says more.
		_ = conn.Close()
		return reach.Other, sentence{err}
	case pctx.Err() != nil:
		return reach.Timeout, errPingTimeout
	case errors.Is(derr, syscall.ECONNREFUSED), errors.Is(derr, syscall.ENOENT),
		errors.Is(derr, syscall.EHOSTUNREACH), errors.Is(derr, syscall.ENETUNREACH):
		return reach.Refused, derr
	}
	return reach.Other, derr
}

// Check implements backend.Checker.
func (b *Backend) Check(ctx context.Context) error { return b.engine(ctx) }

// sentence drops the question the docker client ends some errors with
// ("Is the docker daemon running?"), so the diagnostic's next sentence
// does not start after "?.".
type sentence struct{ err error }

func (s sentence) Error() string {
	msg := s.err.Error()
	if i := strings.LastIndex(msg, ". Is the docker daemon running?"); i >= 0 {
		msg = msg[:i]
	}
	return strings.TrimRight(msg, ".? ")
}

func (s sentence) Unwrap() error { return s.err }
