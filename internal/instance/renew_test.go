package instance

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

// One process's leases are renewed by one statement; a row taken over ends
// that create alone; a renewal held up ends the create whose lease it could
// not prove before that lease could expire; halt stops it all.
func TestRenewals(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	const ttl, renew = 3 * time.Second, 500 * time.Millisecond
	s := newServiceOn(t, meta, LeaseConfig{TTL: ttl, Renew: renew})
	ctx := testCtx(t)
	conn, err := meta.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	hold := func(name string) (int64, context.Context, func() error) {
		t.Helper()
		lease := metadb.Lease{Owner: randomHex(16), TTL: ttl}
		id, err := s.Store().Reserve(ctx, metadb.Record{Name: name, Backend: backend.KindPGCluster, Token: randomHex(32)}, lease)
		if err != nil {
			t.Fatal(err)
		}
		lctx, halt := s.keepLease(ctx, id, lease)
		t.Cleanup(func() { _ = halt() })
		return id, lctx, halt
	}
	a, actx, haltA := hold(uniq("ra"))
	b, bctx, haltB := hold(uniq("rb"))

	// Past the TTL both are still held, and their expiries are one
	// statement's now() (two statements would give two).
	time.Sleep(ttl + renew)
	if actx.Err() != nil || bctx.Err() != nil {
		t.Fatalf("a held lease ended: %v / %v", context.Cause(actx), context.Cause(bctx))
	}
	var expiries int
	var left time.Duration
	if err := conn.QueryRow(ctx, `SELECT count(DISTINCT lease_expires_at), min(lease_expires_at - now())
		FROM db_instance WHERE id IN ($1, $2)`, a, b).Scan(&expiries, &left); err != nil {
		t.Fatal(err)
	}
	if expiries != 1 || left <= 0 {
		t.Fatalf("after renewals: %d distinct expiries, %s left; want one, in the future", expiries, left)
	}

	// Another run takes b over: b's create ends, a's goes on.
	if _, err := conn.Exec(ctx, `UPDATE db_instance SET lease_owner = 'another run' WHERE id = $1`, b); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bctx.Done():
	case <-time.After(ttl):
		t.Fatal("the create whose row was taken over still runs")
	}
	if err := haltB(); !errors.Is(err, metadb.ErrLeaseLost) {
		t.Fatalf("halt after a take-over: %v, want the lost lease", err)
	}
	if actx.Err() != nil {
		t.Fatalf("the other create ended too: %v", context.Cause(actx))
	}

	// a's row locked: the renewal waits, and a's create ends when its
	// lease could no longer be proven held, before it could expire.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM db_instance WHERE id = $1 FOR UPDATE`, a); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	select {
	case <-actx.Done():
	case <-time.After(2 * ttl):
		t.Fatal("a create whose lease could not be renewed still runs")
	}
	if took := time.Since(locked); took >= ttl {
		t.Errorf("the create ended %s after its renewals stopped, at or after the lease's %s", took, ttl)
	}
	if cause := context.Cause(actx); cause == nil || !strings.Contains(cause.Error(), "could not be renewed") {
		t.Errorf("why the create ended: %v", cause)
	}
	if err := haltA(); err == nil {
		t.Error("halt after a failed renewal reported nothing")
	}
	_ = tx.Rollback(ctx)

	// Nothing held: the loop stops.
	deadline := time.Now().Add(2 * ttl)
	for {
		s.renewals.mu.Lock()
		running := s.renewals.running
		s.renewals.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the renewal loop still runs with no lease held")
		}
		time.Sleep(renew / 2)
	}

	// A halted lease is not renewed: its row expires.
	c, cctx, haltC := hold(uniq("rc"))
	if err := haltC(); err != nil {
		t.Fatalf("halt of a held lease: %v", err)
	}
	if cctx.Err() == nil {
		t.Error("the context of a halted lease is still alive")
	}
	time.Sleep(ttl + renew)
	if err := conn.QueryRow(ctx, `SELECT lease_expires_at - now() FROM db_instance WHERE id = $1`, c).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left > 0 {
		t.Errorf("a halted lease was renewed: %s left", left)
	}
}
