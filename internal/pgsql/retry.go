package pgsql

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// SQLSTATEs of a server that cannot take a connection right now.
const (
	CodeTooManyConnections = "53300" // too many clients already, or too many for the role or database
	CodeCannotConnectNow   = "57P03" // the database system is starting up or shutting down
	CodeAdminShutdown      = "57P01" // terminating connection due to administrator command
	CodeCrashShutdown      = "57P02" // terminating connection because of crash of another server process
)

// IsTransient reports a failure that goes away by itself and is worth
// another attempt: the server's connection table is full (53300), the
// server is starting up or shutting down (57P03), or the connection was
// dropped (the server ended it, 57P01/57P02, or the socket closed while
// connecting or in use), or a login the server began did not finish within
// the connect timeout (reach.Slow: overloaded, not gone). A refused connection is not one: a wrong host or
// port must fail at once, not at the operation's timeout. Callers retry a
// statement only when it is idempotent; a connect always is.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if r := reach.As(err); r != nil && r.Reason == reach.Slow {
		// The connect timeout ended a login the server had begun: it is
		// overloaded, not gone (see answer.go).
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch Code(err) {
	case CodeTooManyConnections, CodeCannotConnectNow, CodeAdminShutdown, CodeCrashShutdown:
		return true
	case "":
		return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
			errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
	}
	return false
}

// Backoff between attempts after a transient failure: jittered exponential
// from retryInitial up to retryMax. Jitter (each pause is drawn from the
// upper half of the current step) keeps the provider processes that found
// the server full at the same moment from all coming back at the same
// moment.
const (
	retryInitial = 50 * time.Millisecond
	retryMax     = 2 * time.Second
	// retryBudget bounds the retries when ctx sets no deadline (a data
	// source, an import), so a server that stays full still fails the
	// operation rather than hold it forever.
	retryBudget = 2 * time.Minute
)

// RetryError is the failure of an action that was tried more than once
// because the earlier attempts failed transiently. It unwraps to the last
// attempt's error and, when the context ended the retries, to the
// context's error too (so a timeout is still reported as one).
type RetryError struct {
	Attempts int
	Took     time.Duration
	Err      error // the last attempt's
	Ctx      error // the context's error when it ended the retries
}

func (e *RetryError) Error() string {
	why := "the last failure was not a transient one"
	if e.Ctx != nil {
		why = "the operation's time ran out"
	} else if IsTransient(e.Err) {
		why = "no time was left for another attempt"
	}
	return fmt.Sprintf("%v (tried %d times over %s, backing off while the server was full, starting up, too slow to finish a login or dropped the connection; %s)",
		e.Err, e.Attempts, e.Took.Round(time.Millisecond), why)
}

func (e *RetryError) Unwrap() []error {
	if e.Ctx != nil {
		return []error{e.Err, e.Ctx}
	}
	return []error{e.Err}
}

// Retry calls attempt until it succeeds, fails with an error that is not
// transient (IsTransient), or ctx ends (or retryBudget has passed, when
// ctx sets no deadline), pausing between attempts with
// jittered exponential backoff. attempt must be safe to repeat. An error
// after more than one attempt is a *RetryError that says how often and for
// how long it tried.
func Retry(ctx context.Context, attempt func(context.Context) error) error {
	start := time.Now()
	step := retryInitial
	var lastTransient error
	for n := 1; ; n++ {
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		if !IsTransient(err) || ctx.Err() != nil {
			if n == 1 {
				return err
			}
			if ctx.Err() != nil && lastTransient != nil && Code(err) == "" {
				// The deadline cut the last attempt short, so its error
				// only says "timeout"; what kept the operation from
				// succeeding is what the attempts before it met (a
				// server's own answer, such as a refused password, is
				// kept).
				err = lastTransient
			}
			return &RetryError{Attempts: n, Took: time.Since(start), Err: err, Ctx: ctx.Err()}
		}
		lastTransient = err
		pause := step/2 + rand.N(step/2+1)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < pause {
			return &RetryError{Attempts: n, Took: time.Since(start), Err: err, Ctx: context.DeadlineExceeded}
		} else if !ok && time.Since(start)+pause > retryBudget {
			return &RetryError{Attempts: n, Took: time.Since(start), Err: err}
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return &RetryError{Attempts: n, Took: time.Since(start), Err: err, Ctx: ctx.Err()}
		case <-t.C:
		}
		step = min(2*step, retryMax)
	}
}
