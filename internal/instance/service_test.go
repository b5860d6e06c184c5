package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// These tests run the service against the real meta DB, cluster and Docker
// engine that `make test` starts. Each service made by newService stands
// for one provider process: its own pools, its own leases.

func target(t *testing.T, prefix, dbKey string) pgsql.Target {
	t.Helper()
	port, err := strconv.Atoi(os.Getenv(prefix + "_PORT"))
	if err != nil || os.Getenv(prefix+"_HOST") == "" {
		// Never a skip: a suite that skips proves nothing.
		t.Fatalf("%s_* is not set: run the tests with `make test`", prefix)
	}
	return pgsql.Target{
		Host: os.Getenv(prefix + "_HOST"), Port: port, Database: os.Getenv(prefix + dbKey),
		User: os.Getenv(prefix + "_USERNAME"), Password: os.Getenv(prefix + "_PASSWORD"), SSLMode: "disable",
	}
}

func newService(t *testing.T, lease LeaseConfig) *Service {
	t.Helper()
	return newServiceOn(t, target(t, "POSTGRAAS_METADB", "_DB_NAME"), lease)
}

// newServiceOn is newService on the meta DB at meta.
func newServiceOn(t *testing.T, meta pgsql.Target, lease LeaseConfig) *Service {
	t.Helper()
	store := metadb.New(meta, 2)
	pg := pgcluster.New(pgcluster.Config{Admin: target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE"), MaxConns: 2})
	backends := []backend.Backend{pg}
	if host, img := os.Getenv("DOCKER_HOST"), os.Getenv("POSTGRAAS_TEST_IMAGE"); host != "" && img != "" {
		d, err := docker.New(docker.Config{Host: host, Image: img, BindAddress: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		backends = append(backends, d)
	}
	s := New(store, backend.KindPGCluster, lease, backends...)
	t.Cleanup(s.Close)
	return s
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func uniq(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func admin(t *testing.T, sqls ...string) {
	t.Helper()
	ctx := testCtx(t)
	c, err := target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE").Connect(ctx)
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

func canLogin(t *testing.T, db, user, password string) error {
	tg := target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE")
	tg.Database, tg.User, tg.Password = db, user, password
	ctx := testCtx(t)
	c, err := tg.Connect(ctx)
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

func clusterRequest(name, password string) Request {
	return Request{Name: name, DBName: name + "_db", Username: name + "_u", Password: password, Backend: backend.KindPGCluster}
}

// cleanupName removes whatever a test left under name, row included.
func cleanupName(t *testing.T, s *Service, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if rec, err := s.Store().GetByName(ctx, name); err == nil {
			_ = s.Store().Delete(ctx, rec.ID)
			_ = s.Store().Release(ctx, rec.ID, rec.LeaseOwner)
		}
		c, err := target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE").Connect(ctx)
		if err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(name+"_db")+" WITH (FORCE)")
			_, _ = c.Exec(ctx, "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(name+"_u"))
			_ = c.Close(ctx)
		}
	})
}

// Two runs that both find a row whose objects were removed out of band
// must not both reclaim it: the second would drop what the first made.
func TestReclaimRace(t *testing.T) {
	t.Parallel()
	first := newService(t, LeaseConfig{})
	name := uniq("race")
	cleanupName(t, first, name)
	ctx := testCtx(t)
	if _, _, err := first.Create(ctx, clusterRequest(name, "pw-first")); err != nil {
		t.Fatal(err)
	}
	admin(t, "DROP DATABASE "+pgsql.QuoteIdent(name+"_db"), "DROP ROLE "+pgsql.QuoteIdent(name+"_u"))

	const runs = 4
	var wg sync.WaitGroup
	errs := make([]error, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = newService(t, LeaseConfig{}).Create(ctx, clusterRequest(name, "pw-"+strconv.Itoa(i)))
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		var taken *metadb.NameTakenError
		var held *LeaseHeldError
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("runs %d and %d both created %s", winner, i, name)
			}
			winner = i
		case errors.As(err, &taken), errors.As(err, &held):
		default:
			t.Errorf("run %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no run reclaimed the name: %v", errs)
	}
	if err := canLogin(t, name+"_db", name+"_u", "pw-"+strconv.Itoa(winner)); err != nil {
		t.Fatalf("the winner's instance does not work: %v", err)
	}
	rec, err := first.Store().GetByName(ctx, name)
	if err != nil || rec.State != metadb.StateReady {
		t.Fatalf("row after the race: %+v %v", rec, err)
	}
	if err := first.Delete(ctx, strconv.FormatInt(rec.ID, 10), backend.Auth{Password: "pw-" + strconv.Itoa(winner)}, false); err != nil {
		t.Fatal(err)
	}
}

// A create that died leaves a creating row and objects carrying its proof;
// the next create waits out the lease, takes the row over, removes exactly
// those objects and creates anew.
func TestTakeOverAfterDeadCreate(t *testing.T) {
	t.Parallel()
	s := newService(t, LeaseConfig{TTL: 2 * time.Second, Poll: 50 * time.Millisecond})
	name := uniq("dead")
	cleanupName(t, s, name)
	ctx := testCtx(t)
	// The dead run: a row under a lease nobody renews, and a role and a
	// database made with that row's proof.
	dead := metadb.Record{Name: name, DBName: name + "_db", Username: name + "_u", Backend: backend.KindPGCluster, Token: randomHex(32)}
	id, err := s.Store().Reserve(ctx, dead, metadb.Lease{Owner: "dead", TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dead.ID = id
	b, _ := s.Backend(backend.KindPGCluster)
	if _, err := b.Create(ctx, backend.Spec{InstanceID: id, Proof: ProofFor(dead), Name: name, DBName: dead.DBName,
		Username: dead.Username, Password: "dead-pw"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec, _, err := s.Create(ctx, clusterRequest(name, "new-pw"))
	if err != nil {
		t.Fatalf("create after a dead one: %v", err)
	}
	t.Logf("took over after %s", time.Since(start).Round(time.Millisecond))
	if rec.ID != id || rec.Token == dead.Token || rec.State != metadb.StateReady {
		t.Fatalf("row after take-over: %+v", rec)
	}
	if err := canLogin(t, dead.DBName, dead.Username, "new-pw"); err != nil {
		t.Fatalf("new instance: %v", err)
	}
	if err := canLogin(t, dead.DBName, dead.Username, "dead-pw"); err == nil {
		t.Fatal("the dead run's role is still there")
	}
	if err := s.Delete(ctx, strconv.FormatInt(id, 10), backend.Auth{Password: "new-pw"}, false); err != nil {
		t.Fatal(err)
	}
}

// A live create renews its lease: another create of the name is refused
// (quickly, not after its whole timeout) and the live one is untouched.
func TestLiveLeaseRefused(t *testing.T) {
	t.Parallel()
	live := newService(t, LeaseConfig{TTL: 3 * time.Second, Renew: 200 * time.Millisecond})
	name := uniq("live")
	cleanupName(t, live, name)
	ctx := testCtx(t)
	lease := metadb.Lease{Owner: "live", TTL: 3 * time.Second}
	id, err := live.Store().Reserve(ctx, metadb.Record{Name: name, Backend: backend.KindPGCluster, Token: randomHex(32)}, lease)
	if err != nil {
		t.Fatal(err)
	}
	lctx, stop := live.keepLease(ctx, id, lease)
	defer func() { _ = stop() }()

	other := newService(t, LeaseConfig{Poll: 50 * time.Millisecond})
	start := time.Now()
	_, _, err = other.Create(ctx, clusterRequest(name, "pw"))
	var held *LeaseHeldError
	if !errors.As(err, &held) || !held.Renewed {
		t.Fatalf("create against a live lease: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refused after %s; the renewal every 200ms should show within one", d)
	}
	if lctx.Err() != nil {
		t.Fatalf("the live create lost its lease: %v", context.Cause(lctx))
	}
	// A create whose timeout ends before the lease could expire is refused
	// at once.
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, _, err := other.Create(short, clusterRequest(name, "pw")); !errors.As(err, &held) {
		t.Fatalf("create with a short timeout: %v", err)
	}
}

// Two destroys of one docker instance at once both succeed; neither reports
// the session the other's removal cut.
func TestConcurrentDockerDestroys(t *testing.T) {
	t.Parallel()
	if os.Getenv("DOCKER_HOST") == "" || os.Getenv("POSTGRAAS_TEST_IMAGE") == "" {
		t.Fatal("DOCKER_HOST and POSTGRAAS_TEST_IMAGE must be set: run the tests with `make test`")
	}
	s := newService(t, LeaseConfig{})
	name := uniq("dd")
	ctx := testCtx(t)
	rec, _, err := s.Create(ctx, Request{Name: name, DBName: "app", Username: "app", Password: "pw", Backend: backend.KindDocker})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever a failed assertion left: a forced destroy is idempotent.
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Delete(cctx, strconv.FormatInt(rec.ID, 10), backend.Auth{Password: "pw"}, true); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = newService(t, LeaseConfig{}).Delete(ctx, strconv.FormatInt(rec.ID, 10), backend.Auth{Password: "pw"}, false)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("destroy %d: %v", i, err)
		}
	}
	if _, err := s.Store().Get(ctx, rec.ID); !errors.Is(err, metadb.ErrNotFound) {
		t.Errorf("row after both destroys: %v", err)
	}
	if _, err := s.Inspect(ctx, rec); err != nil {
		t.Error(err)
	}
}
