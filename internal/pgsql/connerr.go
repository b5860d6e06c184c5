package pgsql

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// connectFailure turns a failed connection attempt to t into a
// *reach.Error that says which component failed and why. ctx is the
// caller's: when it has ended, the failure is the operation's time running
// out (or a cancellation), reported as it is, so a diagnostic never blames
// the connect timeout for the operation's.
func (t Target) connectFailure(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil || reach.As(err) != nil {
		return err
	}
	reason := reach.Other
	switch {
	case (pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)) && serverAnswered(ctx):
		reason = reach.Slow
	case pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded):
		reason = reach.Timeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		reason = reach.Refused
	case IsAuthFailure(err) && t.Password == "":
		reason = reach.NoPassword
	case IsAuthFailure(err):
		reason = reach.WrongPassword
	case Code(err) == CodeInvalidCatalogName:
		reason = reach.NoDatabase
	case Code(err) == CodeTooManyConnections:
		reason = reach.Full
	}
	return &reach.Error{Component: t.component(), Address: t.String(), Reason: reason, Timeout: t.connectTimeout(), Err: err}
}

func (t Target) component() reach.Component {
	if t.Component == "" {
		return reach.Instance
	}
	return t.Component
}

func (t Target) connectTimeout() time.Duration {
	if t.ConnectTimeout <= 0 {
		return reach.DefaultConnectTimeout
	}
	return t.ConnectTimeout
}
