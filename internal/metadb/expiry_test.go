package metadb

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A meta DB that recorded a later migration before an earlier one (a
// provider built from another branch ran against it first) still gets the
// earlier one: every missing version is applied, in order, and the ones
// recorded are not applied again.
func TestMigrateFillsAGap(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	c := ctx(t)
	conn, err := target.Connect(c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(c)
	// Versions 1-4 and 7 only, as after a branch whose last migration is 7
	// ran on a schema at 4; 5 (sslmode) and 6 (warm pools) are missing.
	var upTo4, seven []migration
	for _, m := range migrations {
		switch {
		case m.version <= 4:
			upTo4 = append(upTo4, m)
		case m.version == 7:
			seven = append(seven, m)
		}
	}
	apply := func(ms []migration) {
		t.Helper()
		if err := pgx.BeginFunc(c, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(c, `CREATE TABLE IF NOT EXISTS postgraas_schema_migrations (
				version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				return err
			}
			for _, m := range ms {
				if err := m.apply(c, tx); err != nil {
					return err
				}
				if _, err := tx.Exec(c, `INSERT INTO postgraas_schema_migrations (version, description) VALUES ($1, $2)`,
					m.version, m.description); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	apply(upTo4)
	apply(seven)
	if ok, err := upToDate(c, conn); err != nil || ok {
		t.Fatalf("a schema without version 5 counts as up to date: %v %v", ok, err)
	}
	stamp := scalar[string](t, target, `SELECT applied_at::text FROM postgraas_schema_migrations WHERE version = 7`)
	if err := newStore(t, target).Migrate(c); err != nil {
		t.Fatal(err)
	}
	if !scalar[bool](t, target, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'db_instance' AND column_name = 'sslmode')`) {
		t.Fatal("migration 5 was not applied below the recorded 7")
	}
	if !scalar[bool](t, target, `SELECT to_regclass('postgraas_warm_pool') IS NOT NULL`) {
		t.Fatal("migration 6 was not applied below the recorded 7")
	}
	if got := scalar[string](t, target, `SELECT string_agg(version::text, ',' ORDER BY version) FROM postgraas_schema_migrations`); got != "1,2,3,4,5,6,7" {
		t.Fatalf("recorded versions %s", got)
	}
	if again := scalar[string](t, target, `SELECT applied_at::text FROM postgraas_schema_migrations WHERE version = 7`); again != stamp {
		t.Fatal("migration 7 was applied again")
	}
	if ok, err := upToDate(c, conn); err != nil || !ok {
		t.Fatalf("not up to date after migrating: %v %v", ok, err)
	}
}

// Labels and expiry are written at reserve (an expiry relative to the
// creation time, cut to the second), read back, changed by SetMeta only
// under the row's token and while nobody destroys it, filtered by List,
// and Expired lists only ready, proven, expired, unclaimed rows.
func TestLabelsAndExpiry(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	s := newStore(t, target)
	c := ctx(t)
	ready := func(r Record) Record {
		t.Helper()
		r.Backend, r.DBName, r.Username = "pg_cluster", "d", "u"
		id, err := s.Reserve(c, r, testLease)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := s.Complete(c, id, testLease.Owner, Completion{Host: "h", Port: 1, Username: "u"})
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	run := map[string]string{"run": "42", "team": "a"}
	a := ready(Record{Name: "a", Token: "ta", Labels: run, ExpiresAfter: 2 * time.Hour})
	want := a.CreatedAt.Truncate(time.Second).Add(2 * time.Hour)
	if !reflect.DeepEqual(a.Labels, run) || !a.ExpiresAt.Equal(want) || a.Expired {
		t.Fatalf("labels %v expires %v (want %v) expired %v", a.Labels, a.ExpiresAt, want, a.Expired)
	}
	past := time.Now().Add(-time.Minute).Truncate(time.Second)
	b := ready(Record{Name: "b", Token: "tb", Labels: map[string]string{"run": "42"}, ExpiresAt: past})
	if !b.Expired || !b.ExpiresAt.Equal(past) {
		t.Fatalf("b: %+v", b)
	}
	none := ready(Record{Name: "none", Token: "tn"})
	if none.Labels != nil || !none.ExpiresAt.IsZero() || none.Expired {
		t.Fatalf("a row without labels or expiry: %+v", none)
	}
	empty := ready(Record{Name: "empty", Token: "te", Labels: map[string]string{}})
	if empty.Labels == nil || len(empty.Labels) != 0 {
		t.Fatalf("an empty label set read back as %#v", empty.Labels)
	}
	// A legacy row (postgraas_server's: no state, no token) with an expiry
	// set by hand, and a tokenless row of an older provider: never listed.
	exec(t, target, `INSERT INTO db_instance (postgraas_instance_name, creation_timestamp, db_name, username, password, expires_at)
		VALUES ('legacy', '2016-07-06 23:38:38', 'l', 'l', '', now() - interval '1 day')`,
		`INSERT INTO db_instance (postgraas_instance_name, creation_timestamp, db_name, username, password, state, backend, expires_at)
		VALUES ('old', now(), 'o', 'o', '', 'ready', 'pg_cluster', now() - interval '1 day')`)
	// Being created: never listed either.
	if _, err := s.Reserve(c, Record{Name: "creating", Backend: "pg_cluster", Token: "tc", ExpiresAt: past}, testLease); err != nil {
		t.Fatal(err)
	}

	names := func(recs []Record) (out []string) {
		for _, r := range recs {
			out = append(out, r.Name)
		}
		return out
	}
	for _, tc := range []struct {
		labels map[string]string
		want   []string
	}{
		{nil, []string{"a", "b", "none", "empty", "legacy", "old", "creating"}},
		{map[string]string{"run": "42"}, []string{"a", "b"}},
		{map[string]string{"run": "42", "team": "a"}, []string{"a"}},
		{map[string]string{"run": "43"}, nil},
	} {
		recs, err := s.List(c, Filter{Labels: tc.labels})
		if err != nil || !reflect.DeepEqual(names(recs), tc.want) {
			t.Fatalf("List(%v) = %v, %v; want %v", tc.labels, names(recs), err, tc.want)
		}
	}

	pg := []string{"pg_cluster"}
	if exp, _ := s.Expired(c, 10, []string{"docker"}); len(exp) != 0 {
		t.Fatalf("rows of a backend the run does not have are listed: %v", names(exp))
	}
	exp, err := s.Expired(c, 10, pg)
	if err != nil || !reflect.DeepEqual(names(exp), []string{"b"}) {
		t.Fatalf("Expired = %v, %v; want [b]", names(exp), err)
	}
	if exp, _ := s.Expired(c, 0, pg); len(exp) != 0 {
		t.Fatalf("limit 0 listed %v", names(exp))
	}
	// Claimed by a destroy: not listed; deleted under another lease: kept.
	if _, err := s.ClaimDelete(c, b.ID, Lease{Owner: "reaper", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if exp, _ := s.Expired(c, 10, pg); len(exp) != 0 {
		t.Fatalf("a claimed row is listed: %v", names(exp))
	}
	if _, err := s.SetMeta(c, b.ID, "tb", nil, time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetMeta while a destroy holds the row: %v", err)
	}
	if ok, err := s.DeleteLeased(c, b.ID, "other"); ok || err != nil {
		t.Fatalf("DeleteLeased by a run without the lease: %v %v", ok, err)
	}
	if ok, err := s.DeleteLeased(c, b.ID, "reaper"); !ok || err != nil {
		t.Fatalf("DeleteLeased: %v %v", ok, err)
	}
	if ok, _ := s.DeleteLeased(c, b.ID, "reaper"); ok {
		t.Fatal("a row deleted twice")
	}

	// SetMeta: only with the row's token.
	if _, err := s.SetMeta(c, a.ID, "wrong", nil, time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetMeta with another token: %v", err)
	}
	at := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	got, err := s.SetMeta(c, a.ID, "ta", map[string]string{"x": "y"}, at)
	if err != nil || !reflect.DeepEqual(got.Labels, map[string]string{"x": "y"}) || !got.ExpiresAt.Equal(at) {
		t.Fatalf("SetMeta: %+v %v", got, err)
	}
	got, err = s.SetMeta(c, a.ID, "ta", nil, time.Time{})
	if err != nil || got.Labels != nil || !got.ExpiresAt.IsZero() {
		t.Fatalf("SetMeta to none: %+v %v", got, err)
	}
}

// Only one run at a time holds the reapers' lock; unlocking lets the next
// one in, and so does a connection that dies with it.
func TestLockReaping(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	s1, s2 := newStore(t, target), newStore(t, target)
	c := ctx(t)
	unlock, ok, err := s1.LockReaping(c)
	if err != nil || !ok {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok, err := s2.LockReaping(context.Background()); ok || err != nil {
				t.Errorf("second lock while the first is held: %v %v", ok, err)
			}
		}()
	}
	wg.Wait()
	unlock()
	unlock2, ok, err := s2.LockReaping(c)
	if err != nil || !ok {
		t.Fatalf("lock after unlock: %v %v", ok, err)
	}
	unlock2()
}
