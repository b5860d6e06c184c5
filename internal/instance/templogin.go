package instance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

// Bounds of a temporary login's lifetime. A login outliving its run by
// more than a day is no longer temporary; one shorter than a few seconds
// cannot be used.
const (
	DefaultTempLoginTTL = 15 * time.Minute
	MinTempLoginTTL     = time.Second
	MaxTempLoginTTL     = 24 * time.Hour
)

func checkTTL(ttl time.Duration) error {
	if ttl < MinTempLoginTTL || ttl > MaxTempLoginTTL {
		return fmt.Errorf("a temporary login's ttl must be between %s and %s, not %s", MinTempLoginTTL, MaxTempLoginTTL, ttl)
	}
	return nil
}

// OpenTempLogin opens a short-lived login to the instance with that id, on
// the backend that holds it, after the backend proved its objects to be
// the row's.
func (s *Service) OpenTempLogin(ctx context.Context, id int64, ttl time.Duration) (metadb.Record, backend.TempLogin, error) {
	if err := checkTTL(ttl); err != nil {
		return metadb.Record{}, backend.TempLogin{}, err
	}
	rec, b, err := s.readyRow(ctx, id)
	if err != nil {
		return rec, backend.TempLogin{}, err
	}
	login, err := b.OpenTempLogin(ctx, InstanceOf(rec), ttl)
	return rec, login, err
}

// RenewTempLogin moves a temporary login's expiry to ttl from now.
func (s *Service) RenewTempLogin(ctx context.Context, id int64, role string, ttl time.Duration) (time.Time, error) {
	if err := checkTTL(ttl); err != nil {
		return time.Time{}, err
	}
	rec, b, err := s.readyRow(ctx, id)
	if errors.Is(err, metadb.ErrNotFound) {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	if err != nil {
		return time.Time{}, err
	}
	return b.RenewTempLogin(ctx, InstanceOf(rec), role, ttl)
}

// CloseTempLogin removes a temporary login. An instance whose row is gone
// was destroyed, and its temporary logins with it.
func (s *Service) CloseTempLogin(ctx context.Context, id int64, role string) error {
	rec, b, err := s.readyRow(ctx, id)
	if errors.Is(err, metadb.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return b.CloseTempLogin(ctx, InstanceOf(rec), role)
}

// readyRow reads the row with that id and its backend; a row still being
// created is a *BusyError.
func (s *Service) readyRow(ctx context.Context, id int64) (metadb.Record, backend.Backend, error) {
	rec, err := s.store.Get(ctx, id)
	if err != nil {
		return rec, nil, err
	}
	if rec.State == metadb.StateCreating {
		return rec, nil, &BusyError{Record: rec}
	}
	b, err := s.Backend(rec.Backend)
	return rec, b, err
}
