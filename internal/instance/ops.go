package instance

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/faultinject"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Inspect reports on rec's objects through rec's backend.
func (s *Service) Inspect(ctx context.Context, rec metadb.Record) (backend.Status, error) {
	b, err := s.Backend(rec.Backend)
	if err != nil {
		return backend.Status{}, err
	}
	return b.Inspect(ctx, InstanceOf(rec))
}

// Refresh reads the row with that id and inspects its objects; a docker
// port that changed is written back to the row, so the shared record stays
// right for everyone.
func (s *Service) Refresh(ctx context.Context, id string) (metadb.Record, backend.Status, error) {
	rec, err := s.store.Lookup(ctx, id)
	if err != nil {
		return rec, backend.Status{}, err
	}
	if rec.State == metadb.StateCreating {
		// Claimed by a create that reclaims the name: this instance's
		// objects were found gone and are being replaced.
		return rec, backend.Status{}, nil
	}
	st, err := s.Inspect(ctx, rec)
	if err != nil || !st.Exists {
		return rec, st, err
	}
	if st.Port != 0 && st.Port != rec.Port {
		if err := s.store.SetPort(ctx, rec.ID, st.Port); err != nil {
			return rec, st, err
		}
		rec.Port = st.Port
	}
	return rec, st, nil
}

// Rotate makes newPassword the instance's password, on the row's own
// backend, under postgraas_server's rule: only the holder of the current
// password may change it. current is what the caller holds (the password
// in state, or the verifier it set last in write-only mode; empty after an
// import). An instance that already accepts newPassword (changed out of
// band, or the import of an instance whose password the configuration
// has) is accepted as it is. It returns the verifier now stored.
func (s *Service) Rotate(ctx context.Context, rec metadb.Record, current backend.Auth, newPassword string) (string, error) {
	b, err := s.Backend(rec.Backend)
	if err != nil {
		return "", err
	}
	inst := InstanceOf(rec)
	proven := backend.Auth{Password: newPassword}
	err = b.Authenticate(ctx, inst, proven)
	if errors.Is(err, backend.ErrWrongPassword) && (current.Password != "" || current.Verifier != "") {
		proven = current
		err = b.Authenticate(ctx, inst, current)
	}
	if err != nil {
		return "", err
	}
	verifier, err := pgsql.ScramVerifier(newPassword)
	if err != nil {
		return "", err
	}
	// Stored even when the instance already took newPassword: the verifier
	// kept for write-only mode must be the server's, exactly.
	if err := b.SetPassword(ctx, inst, proven, verifier); err != nil {
		return "", err
	}
	// Killed here, the server has the new password and the state does
	// not know: the next apply finds the instance already accepting it.
	faultinject.Pause(ctx, "rotate.password_set")
	return verifier, nil
}

// Delete removes the instance with that id: the backend objects that carry
// its proof first, the row last, so an interrupted destroy is finished by
// a retry. A row already gone (a concurrent destroy) is success; a destroy
// running elsewhere is waited for.
func (s *Service) Delete(ctx context.Context, id string, auth backend.Auth, force bool) error {
	lease := metadb.Lease{Owner: randomHex(16), TTL: s.lease.TTL}
	for {
		rec, claimed, err := s.claimDelete(ctx, id, lease)
		if errors.Is(err, metadb.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if rec.State == metadb.StateCreating {
			return &BusyError{Record: rec}
		}
		if !claimed {
			// Another run is destroying it: its outcome is ours.
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for another run's destroy of %q: %w", rec.Name, ctx.Err())
			case <-time.After(s.lease.Poll):
			}
			continue
		}
		err = s.removeClaimed(ctx, rec, lease, func(ctx context.Context, b backend.Backend, inst backend.Instance) error {
			return b.Delete(ctx, inst, auth, force)
		})
		if err != nil {
			return err
		}
		return s.store.Delete(ctx, rec.ID)
	}
}

// claimDelete claims the row for a destroy in one round trip when id is a
// row id (Terraform's state always holds one); otherwise, or when the claim
// matched nothing, it reads the row to tell why: gone (ErrNotFound), being
// created, or being destroyed by another run.
func (s *Service) claimDelete(ctx context.Context, id string, lease metadb.Lease) (metadb.Record, bool, error) {
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		rec, err := s.store.ClaimDelete(ctx, n, lease)
		if !errors.Is(err, metadb.ErrNotFound) {
			return rec, err == nil, err
		}
	}
	rec, err := s.store.Lookup(ctx, id)
	if err != nil || rec.State == metadb.StateCreating {
		return rec, false, err
	}
	if rec.LeaseOwner == "" || rec.LeaseLeft <= 0 {
		// Claimable (looked up by name, or its lease ended in between).
		claimed, err := s.store.ClaimDelete(ctx, rec.ID, lease)
		if errors.Is(err, metadb.ErrNotFound) {
			return rec, false, nil // claimed by another run since, or gone: look again
		}
		return claimed, err == nil, err
	}
	return rec, false, nil
}

// removeClaimed removes, by remove on the row's own backend, the objects
// of rec, a row this run has claimed for destroy under lease (a destroy
// removes by Delete, the reaper by Purge). When that fails, the claim is
// released, so the instance can be destroyed (or used) again.
func (s *Service) removeClaimed(ctx context.Context, rec metadb.Record, lease metadb.Lease,
	remove func(context.Context, backend.Backend, backend.Instance) error) error {
	b, err := s.Backend(rec.Backend)
	if err == nil {
		err = remove(ctx, b, InstanceOf(rec))
	}
	if err == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	if rerr := pgsql.Retry(cctx, func(ctx context.Context) error {
		return s.store.ReleaseDelete(ctx, rec.ID, lease.Owner)
	}); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// BusyError: the row is being created (or re-created) by a run right now,
// or, for a change of its labels or expiry, Doing says what.
type BusyError struct {
	Record metadb.Record
	// Doing is what the other run does; "" for "created".
	Doing string
}

func (e *BusyError) Error() string {
	doing := e.Doing
	if doing == "" {
		doing = "created"
	}
	return fmt.Sprintf("instance %q (meta DB row %d) is being %s by another run", e.Record.Name, e.Record.ID, doing)
}

// ForImport looks an instance up by id or name for terraform import. A row
// still being created is refused: adopting it could destroy a create in
// flight.
func (s *Service) ForImport(ctx context.Context, idOrName string) (metadb.Record, error) {
	rec, err := s.store.Lookup(ctx, idOrName)
	if err != nil {
		return rec, err
	}
	if rec.State == metadb.StateCreating {
		return rec, &BusyError{Record: rec}
	}
	return rec, nil
}

// Rerecord writes back the row of an instance whose row was deleted out of
// band, after proving that its objects still exist and carry the proof of
// rec's token (kept in Terraform's private state). It returns the row, or
// (false, nil) when the objects are not provably rec's.
func (s *Service) Rerecord(ctx context.Context, rec metadb.Record) (metadb.Record, backend.Status, bool, error) {
	if rec.Token == "" {
		return rec, backend.Status{}, false, nil
	}
	st, err := s.Inspect(ctx, rec)
	if err != nil || !st.Exists {
		return rec, st, false, err
	}
	if st.Port != 0 {
		rec.Port = st.Port
	}
	out, err := s.store.Rerecord(ctx, rec)
	return out, st, err == nil, err
}
