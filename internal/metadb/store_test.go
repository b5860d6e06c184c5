package metadb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// adminTarget is a superuser login on the test server (`make test` exports
// it). Missing in CI or with TF_ACC it is a failure, never a skip.
func adminTarget(t *testing.T) pgsql.Target {
	t.Helper()
	host := os.Getenv("POSTGRAAS_PG_CLUSTER_HOST")
	if host == "" {
		if os.Getenv("CI") != "" || os.Getenv("TF_ACC") != "" {
			t.Fatal("POSTGRAAS_PG_CLUSTER_HOST is not set: run the tests with `make test`")
		}
		t.Skip("no test server: run with `make test`")
	}
	port, _ := strconv.Atoi(os.Getenv("POSTGRAAS_PG_CLUSTER_PORT"))
	return pgsql.Target{Host: host, Port: port, Database: os.Getenv("POSTGRAAS_PG_CLUSTER_DATABASE"),
		User: os.Getenv("POSTGRAAS_PG_CLUSTER_USERNAME"), Password: os.Getenv("POSTGRAAS_PG_CLUSTER_PASSWORD"), SSLMode: "disable"}
}

func exec(t *testing.T, target pgsql.Target, sqls ...string) {
	t.Helper()
	ctx := context.Background()
	c, err := target.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	for _, s := range sqls {
		if _, err := c.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// freshDB creates an empty database for one test and returns a login to it.
func freshDB(t *testing.T) pgsql.Target {
	t.Helper()
	admin := adminTarget(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "metadb_test_" + hex.EncodeToString(b)
	exec(t, admin, "CREATE DATABASE "+pgsql.QuoteIdent(name))
	t.Cleanup(func() { exec(t, admin, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(name)+" WITH (FORCE)") })
	target := admin
	target.Database = name
	return target
}

func newStore(t *testing.T, target pgsql.Target) *Store {
	s := New(target, 4)
	t.Cleanup(s.Close)
	return s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// legacyDDL is the table exactly as postgraas_server's SQLAlchemy model
// creates it.
const legacyDDL = `CREATE TABLE db_instance (
	id SERIAL NOT NULL,
	postgraas_instance_name VARCHAR(100),
	creation_timestamp TIMESTAMP WITHOUT TIME ZONE,
	db_name VARCHAR(100),
	username VARCHAR(500),
	password VARCHAR(100),
	hostname VARCHAR(500),
	port INTEGER,
	container_id VARCHAR(100),
	PRIMARY KEY (id))`

func scalar[T any](t *testing.T, target pgsql.Target, sql string) T {
	t.Helper()
	var v T
	c, err := target.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if err := c.QueryRow(context.Background(), sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func TestMigrateFromNothing(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	s := newStore(t, target)
	if err := s.Migrate(ctx(t)); err != nil {
		t.Fatal(err)
	}
	cols := scalar[string](t, target, `SELECT string_agg(column_name, ',' ORDER BY ordinal_position)
		FROM information_schema.columns WHERE table_name = 'db_instance'`)
	want := "id,postgraas_instance_name,creation_timestamp,db_name,username,password,hostname,port,container_id,backend,state,image,owner_token,lease_owner,lease_expires_at,sslmode,pool_member,pool_proof,labels,expires_at"
	if cols != want {
		t.Fatalf("columns %s, want %s", cols, want)
	}
	if n := scalar[int64](t, target, `SELECT count(*) FROM postgraas_schema_migrations`); n != int64(len(migrations)) {
		t.Fatalf("%d migrations recorded, want %d", n, len(migrations))
	}
	if !scalar[bool](t, target, `SELECT indisunique FROM pg_index WHERE indexrelid = 'db_instance_postgraas_instance_name_key'::regclass`) {
		t.Fatal("name index is not unique")
	}
	// A second store (another Terraform run) finds nothing to do.
	if err := newStore(t, target).Migrate(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestMigrateKeepsLegacyRows(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	exec(t, target, legacyDDL, `INSERT INTO db_instance
		(postgraas_instance_name, creation_timestamp, db_name, username, password, hostname, port, container_id) VALUES
		('my_postgraas', '2016-07-06 23:38:38.367493', 'my_db', 'db_user', '', 'not implemented yet', 54648, '193f0d94'),
		('on_cluster', '2019-01-02 03:04:05', 'c_db', 'c_user@srv', '', 'pg.example.com', 5432, NULL)`)
	before := scalar[string](t, target, `SELECT string_agg(t::text, ';' ORDER BY id) FROM db_instance t`)
	s := newStore(t, target)
	recs, err := s.List(ctx(t), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	after := scalar[string](t, target, `SELECT string_agg((id, postgraas_instance_name, creation_timestamp, db_name, username,
		password, hostname, port, container_id)::text, ';' ORDER BY id) FROM db_instance t`)
	if before != after {
		t.Fatalf("legacy rows changed:\n%s\n%s", before, after)
	}
	if len(recs) != 2 || recs[0].Backend != "docker" || recs[1].Backend != "pg_cluster" || recs[0].State != StateReady ||
		recs[0].Port != 54648 || recs[1].Username != "c_user@srv" || !recs[0].CreatedAt.Equal(time.Date(2016, 7, 6, 23, 38, 38, 367493000, time.UTC)) {
		t.Fatalf("legacy records read as %+v", recs)
	}
	got, err := s.Lookup(ctx(t), "on_cluster")
	if err != nil || got.ID != recs[1].ID {
		t.Fatalf("lookup by name: %+v, %v", got, err)
	}
	got, err = s.Lookup(ctx(t), strconv.FormatInt(recs[0].ID, 10))
	if err != nil || got.Name != "my_postgraas" {
		t.Fatalf("lookup by id: %+v, %v", got, err)
	}
	if _, err := s.Lookup(ctx(t), "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup of a missing name: %v", err)
	}
}

// postgraas_server's racy name check let duplicates in. The migration keeps
// every row; uniqueness then holds for every row written from now on,
// legacy names included, and a lookup of a duplicated name is ambiguous.
func TestMigrateKeepsDuplicateLegacyNames(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	exec(t, target, legacyDDL, `INSERT INTO db_instance (postgraas_instance_name, password) VALUES ('twice', ''), ('twice', ''), ('once', '')`)
	s := newStore(t, target)
	c := ctx(t)
	if err := s.Migrate(c); err != nil {
		t.Fatal(err)
	}
	if n := scalar[int64](t, target, `SELECT count(*) FROM db_instance`); n != 3 {
		t.Fatalf("%d rows left, want 3", n)
	}
	_, err := s.GetByName(c, "twice")
	var amb *AmbiguousNameError
	if !errors.As(err, &amb) || len(amb.IDs) != 2 || !strings.Contains(err.Error(), "ids 1, 2") {
		t.Fatalf("lookup of a duplicated name: %v", err)
	}
	var nt *NameTakenError
	for _, name := range []string{"once"} {
		if _, err := s.Reserve(c, Record{Name: name, Backend: "pg_cluster"}, testLease); !errors.As(err, &nt) || nt.Existing.ID != 3 || !nt.Existing.Legacy {
			t.Fatalf("reserving legacy name %q: %v", name, err)
		}
	}
	if _, err := s.Reserve(c, Record{Name: "twice", Backend: "pg_cluster"}, testLease); !errors.As(err, &nt) || len(nt.IDs) != 2 {
		t.Fatalf("reserving a duplicated legacy name: %v", err)
	}
	if _, err := s.Reserve(c, Record{Name: "new", Backend: "pg_cluster"}, testLease); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reserve(c, Record{Name: "new", Backend: "pg_cluster"}, testLease); !errors.As(err, &nt) {
		t.Fatalf("second reservation of a new name: %v", err)
	}
}

var testLease = Lease{Owner: "test-run", TTL: time.Minute}

// A lease is renewed only by its owner; an expired one is claimed by
// exactly one of the runs that try at once.
// shortTTL is a lease a test waits out.
const shortTTL = 2 * time.Second

func TestLeaseRenewClaimRespec(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	// Long enough that a loaded CI machine reads the lease before it ends.
	short := Lease{Owner: "dead-run", TTL: shortTTL}
	id, err := s.Reserve(c, Record{Name: "leased", DBName: "d", Username: "u", Backend: "docker", Token: "t1"}, short)
	if err != nil {
		t.Fatal(err)
	}
	// One statement renews many rows, each only for its owner.
	mine, err := s.Reserve(c, Record{Name: "mine", DBName: "d", Username: "u", Backend: "docker", Token: "t0"}, short)
	if err != nil {
		t.Fatal(err)
	}
	if lost, err := s.RenewLeases(c, time.Minute, map[int64]string{id: "someone", mine: "dead-run"}); err != nil || !slices.Equal(lost, []int64{id}) {
		t.Fatalf("renew of a row by a non-owner and one by its owner: lost %v, %v", lost, err)
	}
	if m, _ := s.Get(c, mine); m.LeaseLeft < time.Minute-10*time.Second {
		t.Fatalf("the owner's renewal did not extend the lease to a minute: %v left", m.LeaseLeft)
	}
	r, _ := s.Get(c, id)
	if r.LeaseLeft <= 0 || r.LeaseLeft > shortTTL || r.LeaseOwner != "dead-run" {
		t.Fatalf("fresh lease, not extended by a non-owner: %+v", r)
	}
	if ok, err := s.Claim(c, r, testLease); ok || err != nil {
		t.Fatalf("claim of a live lease: %v %v", ok, err)
	}
	time.Sleep(r.LeaseLeft + 50*time.Millisecond)
	r, _ = s.Get(c, id)
	if r.LeaseLeft > 0 {
		t.Fatalf("lease left after expiry: %v", r.LeaseLeft)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := newStore(t, s.Pool().Target()).Claim(c, r, Lease{Owner: "run" + strconv.Itoa(i), TTL: time.Minute})
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				won++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d runs claimed the expired row, want 1", won)
	}
	r2, _ := s.Get(c, id)
	if err := s.Respec(c, id, Record{DBName: "d2", Username: "u2", Backend: "docker", Token: "t2"}, Lease{Owner: r2.LeaseOwner}); err != nil {
		t.Fatal(err)
	}
	if lost, err := s.RenewLeases(c, short.TTL, map[int64]string{id: short.Owner}); err != nil || !slices.Equal(lost, []int64{id}) {
		t.Fatalf("the dead run renewing after the take-over: lost %v, %v", lost, err)
	}
	if err := s.Release(c, id, "dead-run"); err != nil {
		t.Fatal(err)
	}
	r3, err := s.Get(c, id)
	if err != nil || r3.Token != "t2" || r3.DBName != "d2" {
		t.Fatalf("after respec and a stale release: %+v %v", r3, err)
	}
	// A ready row is claimed only while its token is unchanged.
	if _, err := s.Complete(c, id, r2.LeaseOwner, Completion{Host: "h", Port: 1, Username: "u2"}); err != nil {
		t.Fatal(err)
	}
	ready, _ := s.Get(c, id)
	stale := ready
	stale.Token = "t1"
	if ok, _ := s.Claim(c, stale, testLease); ok {
		t.Fatal("claimed a ready row with a stale token")
	}
	if ok, _ := s.Claim(c, ready, testLease); !ok {
		t.Fatal("could not claim a ready row")
	}
	// Rerecord writes a deleted row back under its id and token, once.
	if err := s.Release(c, id, testLease.Owner); err != nil {
		t.Fatal(err)
	}
	ready.SSLMode = "disable"
	back, err := s.Rerecord(c, ready)
	if err != nil || back.ID != id || back.Token != "t2" || back.State != StateReady || back.SSLMode != "disable" {
		t.Fatalf("rerecord: %+v %v", back, err)
	}
	var nt *NameTakenError
	if _, err := s.Rerecord(c, ready); !errors.As(err, &nt) {
		t.Fatalf("second rerecord: %v", err)
	}
}

// Several Terraform runs starting at once on a new meta DB.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = newStore(t, target).Migrate(ctx(t))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("run %d: %v", i, err)
		}
	}
	if n := scalar[int64](t, target, `SELECT count(*) FROM postgraas_schema_migrations`); n != int64(len(migrations)) {
		t.Fatalf("%d migrations recorded, want %d", n, len(migrations))
	}
}

// Uniqueness is the database's: of concurrent reservations of one name from
// separate processes exactly one wins.
func TestReserveIsUniqueUnderConcurrency(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	const n = 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, taken := 0, 0
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := newStore(t, target).Reserve(ctx(t), Record{Name: "contested", DBName: "d", Username: "u", Backend: "pg_cluster"}, testLease)
			var nt *NameTakenError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.As(err, &nt):
				taken++
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	if won != 1 || taken != n-1 {
		t.Fatalf("%d won, %d refused; want 1 and %d", won, taken, n-1)
	}
}

func TestReserveCompleteDelete(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	id, err := s.Reserve(c, Record{Name: "x", DBName: "d", Username: "u", Backend: "docker", Image: "postgres:17", Token: "tok"}, testLease)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(c, id)
	if err != nil || r.State != StateCreating || r.Image != "postgres:17" || time.Since(r.CreatedAt) > time.Minute || time.Since(r.CreatedAt) < -time.Minute {
		t.Fatalf("reserved row %+v, %v", r, err)
	}
	_, err = s.Reserve(c, Record{Name: "x", DBName: "d2", Username: "u2", Backend: "docker"}, Lease{Owner: "other", TTL: time.Minute})
	var nt *NameTakenError
	if !errors.As(err, &nt) || nt.Existing.ID != id || nt.Existing.State != StateCreating {
		t.Fatalf("second reserve: %v", err)
	}
	if _, err := s.Complete(c, id, "other", Completion{Host: "h", Port: 1234, Username: "u", ContainerID: "cid", Image: "postgres:17"}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("complete by a run without the lease: %v", err)
	}
	r, err = s.Complete(c, id, testLease.Owner, Completion{Host: "h", Port: 1234, Username: "u", ContainerID: "cid", Image: "postgres:17", SSLMode: "require"})
	if err != nil || r.State != StateReady || r.Host != "h" || r.Port != 1234 || r.ContainerID != "cid" || r.Token != "tok" || r.LeaseOwner != "" || r.SSLMode != "require" {
		t.Fatalf("completed row %+v, %v", r, err)
	}
	list, err := s.List(c, Filter{Backend: "pg_cluster"})
	if err != nil || len(list) != 0 {
		t.Fatalf("backend filter: %v %v", list, err)
	}
	list, err = s.List(c, Filter{NameRegex: regexp.MustCompile("^x$")})
	if err != nil || len(list) != 1 {
		t.Fatalf("name filter: %v %v", list, err)
	}
	if err := s.Delete(c, id); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(c, id); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
	if _, err := s.Get(c, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// The meta DB login may be an Azure-style "user@server" name, and any
// password survives: no URI is ever built from them (postgraas bug 8).
func TestLoginWithAtSignAndSpecialPassword(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	user := "meta_" + hex.EncodeToString(b) + "@srv"
	password := `p@ss:w/rd'"\ é`
	verifier, err := pgsql.ScramVerifier(password)
	if err != nil {
		t.Fatal(err)
	}
	admin := adminTarget(t)
	exec(t, admin, "CREATE ROLE "+pgsql.QuoteIdent(user)+" LOGIN PASSWORD "+pgsql.QuoteLiteral(verifier),
		"GRANT ALL ON DATABASE "+pgsql.QuoteIdent(target.Database)+" TO "+pgsql.QuoteIdent(user))
	exec(t, target, "GRANT ALL ON SCHEMA public TO "+pgsql.QuoteIdent(user))
	t.Cleanup(func() {
		exec(t, target, "DROP OWNED BY "+pgsql.QuoteIdent(user))
		exec(t, admin, "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(user))
	})
	login := target
	login.User, login.Password = user, password
	s := newStore(t, login)
	if _, err := s.Reserve(ctx(t), Record{Name: "a", Backend: "pg_cluster"}, testLease); err != nil {
		t.Fatal(err)
	}
	login.Password = "wrong"
	err = New(login, 1).Migrate(ctx(t))
	if pgsql.Code(err) != pgsql.CodeInvalidPassword || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v", err)
	}
}

// TestGetIDOutOfRange: the id column is an int4 (postgraas_server's
// serial), so a larger id is no such instance, not an encoding error.
func TestGetIDOutOfRange(t *testing.T) {
	s := newStore(t, freshDB(t))
	for _, id := range []string{"999999999999", "2147483648", "-2147483649"} {
		if _, err := s.Lookup(ctx(t), id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%s) = %v, want ErrNotFound", id, err)
		}
	}
}

// A destroy claims a ready row in one statement and gets the row back; a
// row being created, one another destroy holds, and one gone are not
// claimed; an expired destroy lease is claimed again.
func TestClaimDelete(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	id, err := s.Reserve(c, Record{Name: "cd", DBName: "d", Username: "u", Backend: "pg_cluster", Token: "tok"}, testLease)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimDelete(c, id, Lease{Owner: "destroyer", TTL: time.Minute}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claiming a row being created: %v", err)
	}
	if _, err := s.Complete(c, id, testLease.Owner, Completion{Host: "h", Port: 5432, Username: "u"}); err != nil {
		t.Fatal(err)
	}
	first := Lease{Owner: "first", TTL: shortTTL}
	r, err := s.ClaimDelete(c, id, first)
	if err != nil || r.ID != id || r.Name != "cd" || r.Token != "tok" || r.State != StateReady || r.LeaseOwner != "first" || r.LeaseLeft <= 0 {
		t.Fatalf("claim of a ready row: %+v %v", r, err)
	}
	if _, err := s.ClaimDelete(c, id, Lease{Owner: "second", TTL: time.Minute}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim while another destroy's lease is live: %v", err)
	}
	time.Sleep(r.LeaseLeft + 50*time.Millisecond)
	if r, err = s.ClaimDelete(c, id, Lease{Owner: "second", TTL: time.Minute}); err != nil || r.LeaseOwner != "second" {
		t.Fatalf("claim after the first destroy's lease expired: %+v %v", r, err)
	}
	if err := s.ReleaseDelete(c, id, "first"); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Get(c, id); r.LeaseOwner != "second" {
		t.Fatalf("a stale release ended the live claim: %+v", r)
	}
	if err := s.Delete(c, id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimDelete(c, id, testLease); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim of a deleted row: %v", err)
	}
	if _, err := s.ClaimDelete(c, 1<<40, testLease); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim of an id out of the serial's range: %v", err)
	}
}
