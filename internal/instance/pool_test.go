package instance

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// poolService is a docker-only service on a meta DB database of its own
// (the pool tables stay out of the shared meta DB).
func poolService(t *testing.T) (*Service, *docker.Backend) {
	t.Helper()
	return poolServiceLease(t, LeaseConfig{})
}

func poolServiceLease(t *testing.T, lease LeaseConfig) (*Service, *docker.Backend) {
	t.Helper()
	host, img := os.Getenv("DOCKER_HOST"), os.Getenv("POSTGRAAS_TEST_IMAGE")
	if host == "" || img == "" {
		t.Fatal("DOCKER_HOST and POSTGRAAS_TEST_IMAGE must be set: run the tests with `make test`")
	}
	name := uniq("pooltest")
	admin(t, "CREATE DATABASE "+pgsql.QuoteIdent(name))
	t.Cleanup(func() { admin(t, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(name)+" WITH (FORCE)") })
	tg := target(t, "POSTGRAAS_PG_CLUSTER", "_DATABASE")
	tg.Database = name
	d, err := docker.New(docker.Config{Host: host, Image: img, BindAddress: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	s := New(metadb.New(tg, 8), backend.KindDocker, lease, d)
	t.Cleanup(s.Close)
	return s, d
}

func fillPool(t *testing.T, s *Service, pool string, n int) {
	t.Helper()
	if err := s.EnsurePool(testCtx(t), backend.KindDocker, pool, "", n); err != nil {
		t.Fatal(err)
	}
}

func destroyPool(ctx context.Context, s *Service, pool string) error {
	return s.DestroyPool(ctx, backend.KindDocker, pool)
}

// A pool apply finishes what a killed maker left: a warming member whose
// lease ran out keeps its container when it exists (found by name and
// pool proof) and is dropped otherwise, and the pool is topped up.
func TestPoolRecoversWarmingMembers(t *testing.T) {
	t.Parallel()
	s, d := poolService(t)
	pool := uniq("p")
	ctx := testCtx(t)
	fillPool(t, s, pool, 0)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := destroyPool(cctx, s, pool); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	short := metadb.Lease{TTL: time.Second}
	started, err := s.Store().AddMember(ctx, pool, randomHex(32), short)
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.StartPoolMember(ctx, poolMember(started)) // then killed before recording it
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Store().AddMember(ctx, pool, randomHex(32), short); err != nil { // killed before docker run
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := s.EnsurePool(ctx, backend.KindDocker, pool, "", 2); err != nil {
		t.Fatal(err)
	}
	ms, err := s.Store().Members(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != started.ID || ms[0].ContainerID != id || ms[0].State != metadb.MemberIdle ||
		ms[1].State != metadb.MemberIdle || ms[1].ContainerID == "" {
		t.Fatalf("members after the apply: %+v", ms)
	}
	if err := destroyPool(ctx, s, pool); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if got, err := d.PoolContainer(ctx, poolMember(m)); err != nil || got != "" {
			t.Fatalf("container of member %d after the destroy: %q %v", m.ID, got, err)
		}
	}
}

// A claimed instance whose row was deleted out of band is written back
// with its claim (kept in private state), and not without it: the claim
// is what proves its container.
func TestPoolRerecord(t *testing.T) {
	t.Parallel()
	s, _ := poolService(t)
	pool := uniq("p")
	ctx := testCtx(t)
	fillPool(t, s, pool, 1)
	rec, _, err := s.Create(ctx, Request{Name: uniq("pr"), DBName: "app", Username: "app", Password: "pw", Backend: backend.KindDocker})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = s.Delete(cctx, strconv.FormatInt(rec.ID, 10), backend.Auth{Password: "pw"}, true)
		_ = destroyPool(cctx, s, pool)
	})
	if rec.PoolMember == 0 {
		t.Fatal("the create did not claim the warm container")
	}
	if err := s.Store().Delete(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	unclaimed := rec
	unclaimed.PoolMember, unclaimed.PoolProof = 0, ""
	if _, _, adopted, err := s.Rerecord(ctx, unclaimed); err != nil || adopted {
		t.Fatalf("written back without its claim: %v %v", adopted, err)
	}
	back, _, adopted, err := s.Rerecord(ctx, rec)
	if err != nil || !adopted || back.PoolMember != rec.PoolMember || back.PoolProof != rec.PoolProof {
		t.Fatalf("written back with its claim: %v %v %+v", adopted, err, back)
	}
	if err := s.Delete(ctx, strconv.FormatInt(rec.ID, 10), backend.Auth{Password: "pw"}, false); err != nil {
		t.Fatalf("destroy after the write-back: %v", err)
	}
}

// A pool apply with a smaller size removes the newest idle members and
// their containers; one left half removed by a killed shrink (its row
// marked, its container still there) is removed by the next apply.
func TestPoolShrinks(t *testing.T) {
	t.Parallel()
	s, d := poolService(t)
	pool := uniq("p")
	ctx := testCtx(t)
	fillPool(t, s, pool, 3)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := destroyPool(cctx, s, pool); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	before, err := s.Store().Members(ctx, pool)
	if err != nil || len(before) != 3 {
		t.Fatalf("members: %+v %v", before, err)
	}
	// A shrink killed after marking the newest member: its container lives.
	killed, err := s.Store().TakeIdle(ctx, pool, 1)
	if err != nil || len(killed) != 1 || killed[0].ID != before[2].ID {
		t.Fatalf("TakeIdle: %+v %v", killed, err)
	}
	if err := s.EnsurePool(ctx, backend.KindDocker, pool, "", 1); err != nil {
		t.Fatal(err)
	}
	after, err := s.Store().Members(ctx, pool)
	if err != nil || len(after) != 1 || after[0].ID != before[0].ID || after[0].State != metadb.MemberIdle {
		t.Fatalf("members after shrinking to 1: %+v %v", after, err)
	}
	for i, m := range before {
		got, err := d.PoolContainer(ctx, poolMember(m))
		if err != nil {
			t.Fatal(err)
		}
		if kept := i == 0; (got != "") != kept {
			t.Fatalf("container of member %d: %q, want kept=%v", m.ID, got, kept)
		}
	}
	p, err := s.PoolStatus(ctx, pool)
	if err != nil || p.Size != 1 || p.Idle != 1 || p.Warming != 0 {
		t.Fatalf("pool status: %+v %v", p, err)
	}
}

// A warm container removed or stopped outside the provider is not a dead
// end: the create that claims it removes it (by the claim's proof), forgets
// the claim and creates cold; the claim's replacement keeps the pool full.
func TestPoolUnusableContainerGoesCold(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"removed", "stopped"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			s, d := poolService(t)
			pool := uniq("p")
			ctx := testCtx(t)
			fillPool(t, s, pool, 1)
			ms, err := s.Store().Members(ctx, pool)
			if err != nil || len(ms) != 1 {
				t.Fatalf("members: %+v %v", ms, err)
			}
			spoilt := ms[0].ContainerID
			if how == "removed" {
				err = d.RemovePoolContainer(ctx, spoilt, poolMember(ms[0]))
			} else {
				err = stopContainer(ctx, spoilt)
			}
			if err != nil {
				t.Fatal(err)
			}
			rec, _, err := s.Create(ctx, Request{Name: uniq("pu"), DBName: "app", Username: "app", Password: "pw", Backend: backend.KindDocker})
			t.Cleanup(func() {
				cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if rec.ID != 0 {
					_ = s.Delete(cctx, strconv.FormatInt(rec.ID, 10), backend.Auth{Password: "pw"}, true)
				}
				_ = destroyPool(cctx, s, pool)
			})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if rec.PoolMember != 0 || rec.ContainerID == spoilt || rec.ContainerID == "" {
				t.Fatalf("row after the create: container %s, pool member %d", rec.ContainerID, rec.PoolMember)
			}
			row, err := s.Store().Get(ctx, rec.ID)
			if err != nil || row.PoolMember != 0 || row.PoolProof != "" || row.ContainerID != rec.ContainerID {
				t.Fatalf("stored row: %+v %v", row, err)
			}
			if got, err := d.PoolContainer(ctx, poolMember(ms[0])); err != nil || got != "" {
				t.Fatalf("the spoilt container after the create: %q %v", got, err)
			}
			tg := pgsql.Target{Host: "127.0.0.1", Port: rec.Port, Database: "app", User: "app", Password: "pw", SSLMode: "disable"}
			c, err := tg.ConnectOnce(ctx)
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			c.Close(ctx)
			p, err := s.PoolStatus(ctx, pool)
			if err != nil || p.Idle != 1 {
				t.Fatalf("pool after the create: %+v %v", p, err)
			}
		})
	}
}

// stopContainer stops a container as someone outside the provider would.
func stopContainer(ctx context.Context, id string) error {
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	return cli.ContainerStop(ctx, id, container.StopOptions{})
}
