package instance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

// renewals renews the create leases this process holds, all of them in one
// statement per tick (metadb.RenewLeases). A provider process runs up to
// Terraform's parallelism of creates at once; renewing each on its own
// meant a login per create per tick, since the pool closes idle
// connections after a second, and on a server short of connections or slow
// to accept them those logins were a large share of all of them.
type renewals struct {
	mu      sync.Mutex
	held    map[int64]*heldLease
	running bool // a loop goroutine is ticking
}

// heldLease is one create's lease.
type heldLease struct {
	owner string
	// since is when the lease was last known to run for a whole TTL: the
	// start of the last renewal that succeeded (the server set the expiry
	// after that moment) or, before the first, the reservation.
	since time.Time
	// lost ends the create's context with the reason.
	lost context.CancelCauseFunc
}

// keepLease renews the lease until halted. The returned context ends when
// the lease is lost (taken over) or can no longer be proven held (no
// renewal succeeded for TTL-Renew, so it might expire before this run
// heard), so the create stops and undoes itself rather than complete a
// row that is not its own. halt stops the renewals, ends the context and
// returns why it had ended before (nil while the lease was held and the
// caller's context alive); calling it again does no harm. A renewal in
// flight when halt is called can no longer end the context: its answer
// about this row is dropped, and the statement itself only ever extends a
// row that is still creating under this owner.
func (s *Service) keepLease(ctx context.Context, id int64, lease metadb.Lease) (context.Context, func() error) {
	cctx, cancel := context.WithCancelCause(ctx)
	h := &heldLease{owner: lease.Owner, since: time.Now(), lost: cancel}
	r := &s.renewals
	r.mu.Lock()
	r.held[id] = h
	if !r.running {
		r.running = true
		go s.renewLoop()
	}
	r.mu.Unlock()
	return cctx, func() error {
		r.mu.Lock()
		if r.held[id] == h {
			delete(r.held, id)
		}
		r.mu.Unlock()
		cause := context.Cause(cctx)
		cancel(nil)
		return cause
	}
}

// renewLoop renews every held lease each Renew, until none is held.
func (s *Service) renewLoop() {
	r := &s.renewals
	t := time.NewTicker(s.lease.Renew)
	defer t.Stop()
	for range t.C {
		r.mu.Lock()
		if len(r.held) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		batch := make(map[int64]*heldLease, len(r.held))
		owners := make(map[int64]string, len(r.held))
		var deadline time.Time
		for id, h := range r.held {
			batch[id], owners[id] = h, h.owner
			if halt := h.since.Add(s.lease.TTL - s.lease.Renew); deadline.IsZero() || halt.Before(deadline) {
				deadline = halt
			}
		}
		r.mu.Unlock()

		// One attempt may take until the first lease in the batch must be
		// given up, not just until the next tick: a connect waiting in a
		// long accept queue keeps its place there, where one cut short
		// would leave its socket for the server to accept and find closed,
		// and start again at the queue's end.
		start := time.Now()
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		lost, err := s.store.RenewLeases(ctx, s.lease.TTL, owners)
		cancel()

		r.mu.Lock()
		for id, h := range batch {
			if r.held[id] != h {
				continue // halted meanwhile: the answer no longer matters
			}
			switch {
			case err == nil && slices.Contains(lost, id):
				h.lost(&LeaseError{ID: id, Err: metadb.ErrLeaseLost})
				delete(r.held, id)
			case err == nil:
				h.since = start
			case time.Since(h.since) > s.lease.TTL-s.lease.Renew:
				h.lost(&LeaseError{ID: id, Unanswered: time.Since(h.since), Err: err})
				delete(r.held, id)
			}
		}
		r.mu.Unlock()
	}
}

// LeaseError is why a create stopped of itself: its row was taken over by
// another run (Err is metadb.ErrLeaseLost), or no renewal of its lease
// succeeded for Unanswered, so the lease might expire before this run could
// know and another run take the row over while this one still works on it.
// What stopped the create's work is reported with this as its cause; the
// create then undoes what it made.
type LeaseError struct {
	ID         int64
	Unanswered time.Duration
	Err        error
}

func (e *LeaseError) Error() string {
	if errors.Is(e.Err, metadb.ErrLeaseLost) {
		return fmt.Sprintf("another run took over meta DB row %d", e.ID)
	}
	return fmt.Sprintf("the lease on meta DB row %d could not be renewed for %s (%v)", e.ID, e.Unanswered.Round(time.Second), e.Err)
}

func (e *LeaseError) Unwrap() error { return e.Err }
