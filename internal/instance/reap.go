package instance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

// Reaping defaults: a Terraform run removes at most DefaultReapLimit
// expired instances and spends at most DefaultReapBudget on them; the rest
// is left for the next run.
const (
	DefaultReapLimit  = 5
	DefaultReapBudget = 30 * time.Second
	// MaxReapLookup bounds a run's look for expired instances, its first
	// connection to the meta DB included (about 0.1 s on a loaded machine;
	// the provider gives it its connect_timeout, at most this): a meta DB
	// that does not answer delays the run by no more, and its reaping is
	// left to a later run.
	MaxReapLookup = 5 * time.Second
)

// MaxReapLimit bounds the limit, so that a typo cannot make one run spend
// its time reaping.
const MaxReapLimit = 1000

// Reaped is an expired instance that a reap removed (or, dry, would
// remove).
type Reaped struct {
	ID        int64
	Name      string
	Backend   string
	ExpiresAt time.Time
	Labels    map[string]string
}

func reapedOf(rec metadb.Record) Reaped {
	return Reaped{ID: rec.ID, Name: rec.Name, Backend: rec.Backend, ExpiresAt: rec.ExpiresAt, Labels: rec.Labels}
}

// ReapFailedError: an expired instance could not be removed; it stays
// recorded, and a later run tries again.
type ReapFailedError struct {
	Instance Reaped
	Err      error
}

func (e *ReapFailedError) Error() string {
	return fmt.Sprintf("removing expired instance %q (id %d, %s): %v", e.Instance.Name, e.Instance.ID, e.Instance.Backend, e.Err)
}

func (e *ReapFailedError) Unwrap() error { return e.Err }

// Expired lists the instances a reap would remove now, at most limit.
func (s *Service) Expired(ctx context.Context, limit int) ([]Reaped, error) {
	if there, err := s.store.Exists(ctx); err != nil || !there {
		return nil, err
	}
	recs, err := s.store.Expired(ctx, limit, s.kinds())
	out := make([]Reaped, 0, len(recs))
	for _, r := range recs {
		out = append(out, reapedOf(r))
	}
	return out, err
}

// Reap removes at most limit expired instances within budget (each
// removal gets what is left of it), the longest expired first. Finding
// out whether anything is expired, the meta DB's first connection
// included, must take at most lookup. Expiry is
// the owner's consent to removal: no password is asked for, and sessions
// are terminated. What proves consent, and what is removed, is the
// ownership proof, as everywhere else:
//
//   - Only one run reaps at a time (the meta DB's session advisory lock,
//     held on a connection of its own while the removals run); another
//     run finds it taken and reaps nothing.
//   - Only rows with an owner token are candidates (never a row of
//     postgraas_server or of a provider older than proofs), and only ready
//     ones or those a dead create left (lease expired; removed as a
//     take-over would, see reapDeadCreate, never one being created); each
//     ready one is claimed with the destroy's own lease (ClaimDelete,
//     so a destroy of it waits, and nothing claims it twice), and the
//     claimed row must still be expired and carry the token it was listed
//     with (an owner extending the expiry in between wins).
//   - Removal is the backend's Purge: it proves every object by the row's
//     token right before dropping it, and removes nothing else. Its
//     pg_cluster drop terminates the sessions on the database; docker and
//     kubernetes stop the server with its sessions.
//   - The row goes last, and only while this run's lease is on it: each
//     instance is reported by exactly one run.
//
// It returns what it removed and, joined, what it could not (each a
// *ReapFailedError; those rows are released for the next run). A limit of
// 0 does nothing.
func (s *Service) Reap(ctx context.Context, limit int, lookup, budget time.Duration) ([]Reaped, error) {
	if limit <= 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	// The common case, nothing expired, costs one query (an index probe)
	// and takes no lock; a meta DB that is not there yet is not made.
	lctx, lcancel := context.WithTimeout(ctx, lookup)
	defer lcancel()
	if there, err := s.store.Exists(lctx); err != nil || !there {
		return nil, err
	}
	if recs, err := s.store.Expired(lctx, 1, s.kinds()); err != nil || len(recs) == 0 {
		return nil, err
	}
	unlock, ok, err := s.store.LockReaping(ctx)
	if err != nil || !ok {
		if !ok && err == nil {
			tflog.Debug(ctx, "another run is reaping expired instances")
		}
		return nil, err
	}
	defer unlock()
	recs, err := s.store.Expired(ctx, limit, s.kinds())
	if err != nil {
		return nil, err
	}
	var reaped []Reaped
	var errs []error
	for _, rec := range recs {
		if ctx.Err() != nil {
			break // the budget is spent: the rest is the next run's
		}
		done, err := s.reapOne(ctx, rec)
		switch {
		case err != nil:
			errs = append(errs, &ReapFailedError{Instance: reapedOf(rec), Err: err})
		case done:
			reaped = append(reaped, reapedOf(rec))
			tflog.Warn(ctx, "removed expired instance", map[string]any{"name": rec.Name, "id": rec.ID,
				"expired_at": rec.ExpiresAt.Format(time.RFC3339)})
		}
	}
	return reaped, errors.Join(errs...)
}

// reapOne removes one expired instance through the destroy's claim and
// reports whether this run removed it.
func (s *Service) reapOne(ctx context.Context, listed metadb.Record) (bool, error) {
	lease := metadb.Lease{Owner: randomHex(16), TTL: s.lease.TTL}
	if listed.State == metadb.StateCreating {
		return s.reapDeadCreate(ctx, listed, lease)
	}
	rec, err := s.store.ClaimDelete(ctx, listed.ID, lease)
	if errors.Is(err, metadb.ErrNotFound) {
		return false, nil // destroyed, or claimed by a destroy, since it was listed
	}
	if err != nil {
		return false, err
	}
	if !rec.Expired || rec.Token == "" || rec.Token != listed.Token || rec.State != metadb.StateReady {
		// Changed since it was listed (the expiry moved, the row was
		// re-created): not this reap's to remove.
		return false, s.store.ReleaseDelete(context.WithoutCancel(ctx), rec.ID, lease.Owner)
	}
	err = s.removeClaimed(ctx, rec, lease, func(ctx context.Context, b backend.Backend, inst backend.Instance) error {
		return b.Purge(ctx, inst)
	})
	if err != nil {
		return false, err
	}
	return s.store.DeleteLeased(ctx, rec.ID, lease.Owner)
}

// reapDeadCreate removes what a create that died left (its row still
// creating, its lease expired, its expiry passed), exactly as the next
// create of the name would on taking it over: the take-over's claim (only
// one run wins it, and only while the row is still that dead attempt's:
// same token, lease expired), Purge of what carries the row's proof, and
// the release of the row under this run's lease.
func (s *Service) reapDeadCreate(ctx context.Context, listed metadb.Record, lease metadb.Lease) (bool, error) {
	claimed, err := s.store.Claim(ctx, listed, lease)
	if err != nil || !claimed {
		return false, err
	}
	b, err := s.Backend(listed.Backend)
	if err == nil {
		err = b.Purge(ctx, InstanceOf(listed))
	}
	if err != nil {
		// The claim's lease runs out, and the row is a dead create's again.
		return false, err
	}
	return s.store.ReleaseLeased(ctx, listed.ID, lease.Owner)
}

// SetMeta changes an instance's labels and expiry: the row only, no
// backend object. The row must be rec's (same token) and not held by a
// create or destroy. An expiry needs an ownership proof, since the reaper
// removes only what it can prove: a row without a token refuses one.
func (s *Service) SetMeta(ctx context.Context, rec metadb.Record, labels map[string]string, expiresAt time.Time) (metadb.Record, error) {
	if rec.Token == "" && !expiresAt.IsZero() {
		return rec, &backend.SpecError{Attribute: "expires_at", Err: fmt.Errorf("instance %q (id %d) was recorded by "+
			"postgraas_server or a provider older than ownership proofs, so the reaper could never prove its objects "+
			"and it cannot expire", rec.Name, rec.ID)}
	}
	out, err := s.store.SetMeta(ctx, rec.ID, rec.Token, labels, expiresAt)
	if errors.Is(err, metadb.ErrNotFound) {
		return rec, &BusyError{Record: rec, Doing: "destroyed, reaped or re-created"}
	}
	return out, err
}

// kinds are the backends this service has: the only ones it can reap on.
func (s *Service) kinds() []string {
	kinds := make([]string, 0, len(s.backends))
	for k := range s.backends {
		kinds = append(kinds, k)
	}
	return kinds
}
