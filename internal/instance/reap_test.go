package instance

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// These tests reap the whole meta DB they run against, and every provider
// run reaps the meta DB it uses: each test gets a meta DB database of its
// own (freshMeta), so that what it counts is what its own reaps did.

// freshMeta creates an empty meta DB database owned by the meta DB login.
func freshMeta(t *testing.T) pgsql.Target {
	t.Helper()
	meta := target(t, "POSTGRAAS_METADB", "_DB_NAME")
	meta.Database = uniq("postgraas_reap")
	admin(t, "CREATE DATABASE "+pgsql.QuoteIdent(meta.Database)+" OWNER "+pgsql.QuoteIdent(meta.User))
	t.Cleanup(func() { admin(t, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(meta.Database)+" WITH (FORCE)") })
	return meta
}

// waitExpired polls until every named row is expired by the meta DB's clock.
func waitExpired(t *testing.T, s *Service, names ...string) {
	t.Helper()
	ctx := testCtx(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		all := true
		for _, n := range names {
			rec, err := s.Store().GetByName(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			all = all && rec.Expired
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v not expired after 30 s", names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func reapedNames(rs []Reaped) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

func clusterObjectsExist(t *testing.T, name string) (role, db bool) {
	t.Helper()
	ctx := testCtx(t)
	c, err := target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE").Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
		EXISTS (SELECT 1 FROM pg_database WHERE datname = $2)`, name+"_u", name+"_db").Scan(&role, &db); err != nil {
		t.Fatal(err)
	}
	return role, db
}

// Several runs reaping at once remove each expired instance exactly once:
// whole Reap calls (the advisory lock lets one in), and removals of the
// same listed rows racing without the lock (the destroy claim lets one
// remove each). Instances without expiry, or expiring later, are untouched.
func TestReapConcurrently(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	var expiring, kept []string
	for range 4 {
		n := uniq("reap")
		createExpiring(ctx, t, s, n)
		expiring = append(expiring, n)
	}
	for _, later := range []time.Duration{0, time.Hour} {
		n := uniq("keep")
		cleanupName(t, s, n)
		req := clusterRequest(n, "pw")
		req.ExpiresAfter = later
		if _, _, err := s.Create(ctx, req); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, n)
	}
	waitExpired(t, s, expiring...)

	// Two of them by racing removals of the listed rows, without the lock.
	var listed []metadb.Record
	for _, n := range expiring[:2] {
		rec, err := s.Store().GetByName(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, rec)
	}
	const runs = 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	count := map[string]int{}
	for range runs {
		other := newServiceOn(t, meta, LeaseConfig{})
		for _, rec := range listed {
			wg.Add(1)
			go func() {
				defer wg.Done()
				done, err := other.reapOne(ctx, rec)
				if err != nil {
					t.Errorf("racing removal of %s: %v", rec.Name, err)
				}
				if done {
					mu.Lock()
					count[rec.Name]++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	// The other two by whole reaps at once.
	for range runs {
		other := newServiceOn(t, meta, LeaseConfig{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs, err := other.Reap(ctx, 10, time.Minute, time.Minute)
			if err != nil {
				t.Errorf("reap: %v", err)
			}
			mu.Lock()
			for _, n := range reapedNames(rs) {
				count[n]++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, n := range expiring {
		if count[n] != 1 {
			t.Errorf("%s reported removed %d times, want 1 (%v)", n, count[n], count)
		}
		if role, db := clusterObjectsExist(t, n); role || db {
			t.Errorf("%s after the reap: role %v, database %v", n, role, db)
		}
		if _, err := s.Store().GetByName(ctx, n); !errors.Is(err, metadb.ErrNotFound) {
			t.Errorf("%s's row after the reap: %v", n, err)
		}
	}
	for _, n := range kept {
		if count[n] != 0 {
			t.Errorf("%s, not expired, was reported removed", n)
		}
		if err := canLogin(t, n+"_db", n+"_u", "pw"); err != nil {
			t.Errorf("%s, not expired, was touched: %v", n, err)
		}
	}
}

// Expiry is the owner's consent: an expired instance with a live session
// is removed all the same, the session terminated, without its password.
func TestReapTerminatesSessions(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	n := uniq("reaps")
	createExpiring(ctx, t, s, n)
	tg := target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE")
	tg.Database, tg.User, tg.Password = n+"_db", n+"_u", "pw"
	conn, err := tg.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	waitExpired(t, s, n)
	rs, err := s.Reap(ctx, 10, time.Minute, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(reapedNames(rs), n) {
		t.Fatalf("reaped %v, not %s", reapedNames(rs), n)
	}
	if role, db := clusterObjectsExist(t, n); role || db {
		t.Fatalf("after the reap: role %v, database %v", role, db)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("the session on the reaped instance still answers")
	}
}

// A legacy row (postgraas_server's: no state, no token) and a row of a
// provider older than proofs are never reaped, whatever their expires_at
// says; nor is an instance whose objects do not carry its proof.
func TestReapNeverTouchesUnproven(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	legacy, old := uniq("legacy"), uniq("old")
	for _, n := range []string{legacy, old} {
		cleanupName(t, s, n)
		admin(t, "CREATE ROLE "+pgsql.QuoteIdent(n+"_u")+" LOGIN PASSWORD 'pw'",
			"CREATE DATABASE "+pgsql.QuoteIdent(n+"_db")+" OWNER "+pgsql.QuoteIdent(n+"_u"))
	}
	store := metadb.New(meta, 1)
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := meta.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, `INSERT INTO db_instance (postgraas_instance_name, creation_timestamp, db_name, username,
		password, hostname, port, expires_at) VALUES ($1::text, '2016-07-06 23:38:38', $1::text || '_db', $1::text || '_u', '', 'h', 5432,
		now() - interval '1 day')`, legacy); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, `INSERT INTO db_instance (postgraas_instance_name, creation_timestamp, db_name, username,
		password, hostname, port, backend, state, expires_at) VALUES ($1::text, now(), $1::text || '_db', $1::text || '_u', '', 'h', 5432,
		'pg_cluster', 'ready', now() - interval '1 day')`, old); err != nil {
		t.Fatal(err)
	}
	// An instance whose row is ours but whose objects were replaced by
	// someone else's under the same names: the reaper removes its row
	// (nothing of it is left) and leaves the objects.
	swapped := uniq("swap")
	createExpiring(ctx, t, s, swapped)
	admin(t, "DROP DATABASE "+pgsql.QuoteIdent(swapped+"_db"), "DROP ROLE "+pgsql.QuoteIdent(swapped+"_u"),
		"CREATE ROLE "+pgsql.QuoteIdent(swapped+"_u")+" LOGIN PASSWORD 'theirs'",
		"CREATE DATABASE "+pgsql.QuoteIdent(swapped+"_db")+" OWNER "+pgsql.QuoteIdent(swapped+"_u"))
	waitExpired(t, s, swapped)

	rs, err := s.Reap(ctx, 100, time.Minute, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := reapedNames(rs)
	if slices.Contains(got, legacy) || slices.Contains(got, old) {
		t.Fatalf("reaped %v", got)
	}
	for _, n := range []string{legacy, old} {
		if _, err := s.Store().GetByName(ctx, n); err != nil {
			t.Errorf("%s's row: %v", n, err)
		}
		if err := canLogin(t, n+"_db", n+"_u", "pw"); err != nil {
			t.Errorf("%s was touched: %v", n, err)
		}
	}
	if err := canLogin(t, swapped+"_db", swapped+"_u", "theirs"); err != nil {
		t.Errorf("the objects that replaced %s were touched: %v", swapped, err)
	}
}

// An owner that moves the expiry after the reaper listed the row wins: the
// claimed row is no longer expired and is released untouched.
func TestReapSkipsARowExtendedMeanwhile(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	n := uniq("ext")
	createExpiring(ctx, t, s, n)
	waitExpired(t, s, n)
	listed, err := s.Store().GetByName(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMeta(ctx, listed, nil, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	done, err := s.reapOne(ctx, listed)
	if done || err != nil {
		t.Fatalf("reap of a row extended since it was listed: %v %v", done, err)
	}
	if err := canLogin(t, n+"_db", n+"_u", "pw"); err != nil {
		t.Fatalf("touched: %v", err)
	}
	if rec, err := s.Store().GetByName(ctx, n); err != nil || rec.LeaseOwner != "" {
		t.Fatalf("row after the skipped reap: %+v %v", rec, err)
	}
}

// What reaping costs a run when nothing is expired, the common case: one
// query, no lock. Logged, not asserted: the suite shares its cores.
func TestReapCostWhenNothingExpired(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	ctx := testCtx(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	if err := s.Store().Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// A row expiring later: listed by nothing.
	n := uniq("cost")
	cleanupName(t, s, n)
	req := clusterRequest(n, "pw")
	req.ExpiresAfter = time.Hour
	if _, _, err := s.Create(ctx, req); err != nil {
		t.Fatal(err)
	}
	const rounds = 200
	start := time.Now()
	for range rounds {
		if rs, err := s.Reap(ctx, 5, time.Minute, time.Minute); err != nil || len(rs) != 0 {
			t.Fatalf("reap with nothing expired: %v %v", rs, err)
		}
	}
	warm := time.Since(start) / rounds
	// A new process: its first meta DB use connects and checks the schema,
	// which every run that uses the meta DB pays anyway; then the reap.
	cold := newServiceOn(t, meta, LeaseConfig{})
	start = time.Now()
	if err := cold.Store().Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	connect := time.Since(start)
	start = time.Now()
	if _, err := cold.Reap(ctx, 5, time.Minute, time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("reap with nothing expired: %s per call on a connected pool (%d calls); in a new process, %s for the "+
		"first connect and schema check (paid by any first use of the meta DB), then %s for the reap", warm, rounds,
		connect, time.Since(start))
}

// Expired rows of a backend this run does not have (a kubernetes instance
// in a meta DB shared with pg_cluster-only pipelines) are neither errors
// nor do they use up the limit: the run reaps what it can.
func TestReapSkipsBackendsItHasNot(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	lease := metadb.Lease{Owner: "k", TTL: time.Minute}
	past := time.Now().Add(-time.Hour)
	for k := range 3 {
		id, err := s.Store().Reserve(ctx, metadb.Record{Name: uniq("kube"), Backend: "kubernetes", Token: randomHex(32),
			ExpiresAt: past.Add(-time.Duration(k) * time.Minute)}, lease)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Store().Complete(ctx, id, lease.Owner, metadb.Completion{Host: "h", Port: 5432, Username: "u"}); err != nil {
			t.Fatal(err)
		}
	}
	n := uniq("mine")
	createExpiring(ctx, t, s, n)
	waitExpired(t, s, n)
	rs, err := s.Reap(ctx, 1, time.Minute, time.Minute)
	if err != nil || !slices.Equal(reapedNames(rs), []string{n}) {
		t.Fatalf("reap with limit 1: %v %v; want [%s]", reapedNames(rs), err, n)
	}
}

// A row without an ownership token (postgraas_server's, imported) may get
// labels but no expiry: the reaper could never prove its objects.
func TestSetMetaRefusesExpiryWithoutProof(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	if err := s.Store().Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := meta.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, `INSERT INTO db_instance (postgraas_instance_name, creation_timestamp, db_name, username,
		password) VALUES ('legacy', '2016-07-06 23:38:38', 'l', 'l', '')`); err != nil {
		t.Fatal(err)
	}
	rec, err := s.Store().GetByName(ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	var spec *backend.SpecError
	if _, err := s.SetMeta(ctx, rec, nil, time.Now().Add(time.Hour)); !errors.As(err, &spec) || spec.Attribute != "expires_at" {
		t.Fatalf("expiry on a legacy row: %v", err)
	}
	got, err := s.SetMeta(ctx, rec, map[string]string{"team": "a"}, time.Time{})
	if err != nil || got.Labels["team"] != "a" || !got.ExpiresAt.IsZero() || !got.Legacy {
		t.Fatalf("labels on a legacy row: %+v %v", got, err)
	}
	// Held by a destroy: a *BusyError saying so.
	if _, err := s.Store().ClaimDelete(ctx, rec.ID, metadb.Lease{Owner: "d", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	var busy *BusyError
	if _, err := s.SetMeta(ctx, rec, nil, time.Time{}); !errors.As(err, &busy) || busy.Doing == "" {
		t.Fatalf("labels while a destroy holds the row: %v", err)
	}
}

// A create that died after making its objects leaves a creating row whose
// lease runs out: once its expiry has passed too, the reaper removes what
// carries its proof and the row, as a take-over would; a dead create that
// has not expired, and a live one that has, are left alone.
func TestReapDeadCreate(t *testing.T) {
	t.Parallel()
	meta := freshMeta(t)
	s := newServiceOn(t, meta, LeaseConfig{})
	ctx := testCtx(t)
	b, _ := s.Backend(backend.KindPGCluster)
	dead := func(name string, expires time.Time, lease time.Duration) metadb.Record {
		t.Helper()
		cleanupName(t, s, name)
		rec := metadb.Record{Name: name, DBName: name + "_db", Username: name + "_u", Backend: backend.KindPGCluster,
			Token: randomHex(32), ExpiresAt: expires}
		id, err := s.Store().Reserve(ctx, rec, metadb.Lease{Owner: "dead", TTL: lease})
		if err != nil {
			t.Fatal(err)
		}
		rec.ID = id
		if _, err := b.Create(ctx, backend.Spec{InstanceID: id, Proof: ProofFor(rec), Name: name, DBName: rec.DBName,
			Username: rec.Username, Password: "pw"}); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	past := time.Now().Add(-time.Minute)
	expired := dead(uniq("dead"), past, time.Second)
	notExpired := dead(uniq("deadlater"), time.Now().Add(time.Hour), time.Second)
	live := dead(uniq("live"), past, time.Hour)
	time.Sleep(1500 * time.Millisecond) // the dead creates' leases run out
	rs, err := s.Reap(ctx, 10, time.Minute, time.Minute)
	if err != nil || !slices.Equal(reapedNames(rs), []string{expired.Name}) {
		t.Fatalf("reaped %v, %v; want [%s]", reapedNames(rs), err, expired.Name)
	}
	if role, db := clusterObjectsExist(t, expired.Name); role || db {
		t.Fatalf("the dead create's objects after the reap: role %v, database %v", role, db)
	}
	if _, err := s.Store().Get(ctx, expired.ID); !errors.Is(err, metadb.ErrNotFound) {
		t.Fatalf("the dead create's row after the reap: %v", err)
	}
	for _, r := range []metadb.Record{notExpired, live} {
		if err := canLogin(t, r.DBName, r.Username, "pw"); err != nil {
			t.Errorf("%s was touched: %v", r.Name, err)
		}
		if got, err := s.Store().Get(ctx, r.ID); err != nil || got.State != metadb.StateCreating {
			t.Errorf("%s's row: %+v %v", r.Name, got, err)
		}
	}
}

// createExpiring creates pg_cluster instance n (password "pw") expiring a
// second after its creation, removed at the test's end if still there.
func createExpiring(ctx context.Context, t *testing.T, s *Service, n string) {
	t.Helper()
	cleanupName(t, s, n)
	req := clusterRequest(n, "pw")
	req.ExpiresAfter = time.Second
	if _, _, err := s.Create(ctx, req); err != nil {
		t.Fatal(err)
	}
}
