package metadb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// warmPool records pool "p" of image "img" with n idle members whose
// containers are "c1".."cn".
func warmPool(t *testing.T, s *Store, n int) []Member {
	t.Helper()
	c := ctx(t)
	if err := s.EnsurePool(c, "p", "img", n); err != nil {
		t.Fatal(err)
	}
	var ms []Member
	for i := 1; i <= n; i++ {
		m, err := s.AddMember(c, "p", fmt.Sprintf("member-token-%d", i), testLease)
		if err != nil {
			t.Fatal(err)
		}
		if m.State != MemberWarming {
			t.Fatalf("new member: %+v", m)
		}
		if err := s.MemberStarted(c, m.ID, fmt.Sprintf("c%d", i)); err != nil {
			t.Fatal(err)
		}
		m.ContainerID, m.State = fmt.Sprintf("c%d", i), MemberIdle
		ms = append(ms, m)
	}
	return ms
}

func reserveN(t *testing.T, s *Store, n int) []int64 {
	t.Helper()
	var ids []int64
	for i := range n {
		id, err := s.Reserve(ctx(t), Record{Name: fmt.Sprintf("inst%d", i), DBName: "d", Username: "u", Backend: "docker",
			Image: "img", Token: fmt.Sprintf("tok%d", i)}, testLease)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// Four creates claiming at once from a pool of two: two get distinct
// members, two go cold, and each claim adds one warming replacement.
func TestPoolClaimConcurrent(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	warm := warmPool(t, s, 2)
	ids := reserveN(t, s, 4)
	var wg sync.WaitGroup
	start := make(chan struct{})
	got := make([]*Claimed, 4)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			cl, err := newStore(t, s.Pool().Target()).ClaimMember(c, id, fmt.Sprintf("tok%d", i), "img", fmt.Sprintf("repl%d", i), testLease)
			if err != nil {
				t.Error(err)
			}
			got[i] = cl
		}()
	}
	close(start)
	wg.Wait()
	seen := map[int64]bool{}
	for i, cl := range got {
		r, err := s.Get(c, ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if cl == nil {
			if r.PoolMember != 0 || r.ContainerID != "" || r.PoolProof != "" {
				t.Fatalf("cold row %d records a claim: %+v", i, r)
			}
			continue
		}
		if seen[cl.Member.ID] {
			t.Fatalf("member %d claimed twice", cl.Member.ID)
		}
		seen[cl.Member.ID] = true
		var want Member
		for _, m := range warm {
			if m.ID == cl.Member.ID {
				want = m
			}
		}
		if r.PoolMember != want.ID || r.ContainerID != want.ContainerID || r.PoolProof != want.Proof() || r.PoolProof == "" {
			t.Fatalf("claiming row %d: %+v, member %+v", i, r, want)
		}
		if cl.Replacement == nil || cl.Replacement.State != MemberWarming || cl.Replacement.Pool != "p" || cl.Replacement.Image != "img" {
			t.Fatalf("replacement: %+v", cl.Replacement)
		}
	}
	if len(seen) != 2 {
		t.Fatalf("%d members claimed, want 2", len(seen))
	}
	ms, err := s.Members(c, "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].State != MemberWarming || ms[1].State != MemberWarming {
		t.Fatalf("members after the claims: %+v", ms)
	}
}

// A claim skips a member another claim has locked instead of waiting for
// it, and finds none when all are locked.
func TestPoolClaimSkipsLocked(t *testing.T) {
	t.Parallel()
	target := freshDB(t)
	s := newStore(t, target)
	c := ctx(t)
	warm := warmPool(t, s, 2)
	ids := reserveN(t, s, 2)
	conn, err := target.Connect(c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(c, `SELECT 1 FROM postgraas_pool_member WHERE id = $1 FOR UPDATE`, warm[0].ID); err != nil {
		t.Fatal(err)
	}
	quick, cancel := context.WithTimeout(c, 10*time.Second)
	defer cancel()
	cl, err := s.ClaimMember(quick, ids[0], "tok0", "img", "r0", testLease)
	if err != nil || cl == nil || cl.Member.ID != warm[1].ID {
		t.Fatalf("claim beside a locked member: %+v %v", cl, err)
	}
	if _, err := tx.Exec(c, `SELECT 1 FROM postgraas_pool_member WHERE state = 'idle' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	cl, err = s.ClaimMember(quick, ids[1], "tok1", "img", "r1", testLease)
	if err != nil || cl != nil {
		t.Fatalf("claim with every idle member locked: %+v %v", cl, err)
	}
}

// Only the lease holder with the row's current token claims; Respec (a new
// attempt) forgets the claimed container.
func TestPoolClaimNeedsLeaseAndToken(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	warm := warmPool(t, s, 1)
	id := reserveN(t, s, 1)[0]
	if _, err := s.ClaimMember(c, id, "tok0", "img", "r", Lease{Owner: "other", TTL: time.Minute}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("claim by another owner: %v", err)
	}
	if _, err := s.ClaimMember(c, id, "old-token", "img", "r", testLease); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("claim with another token: %v", err)
	}
	ms, _ := s.Members(c, "p")
	if len(ms) != 1 || ms[0].ID != warm[0].ID || ms[0].State != MemberIdle {
		t.Fatalf("members after refused claims: %+v", ms)
	}
	if cl, err := s.ClaimMember(c, id, "tok0", "other-image", "r", testLease); err != nil || cl != nil {
		t.Fatalf("claim of an image without a pool: %+v %v", cl, err)
	}
	cl, err := s.ClaimMember(c, id, "tok0", "img", "r", testLease)
	if err != nil || cl == nil {
		t.Fatalf("claim: %+v %v", cl, err)
	}
	if err := s.Respec(c, id, Record{DBName: "d", Username: "u", Backend: "docker", Token: "tok-new"}, testLease); err != nil {
		t.Fatal(err)
	}
	r, _ := s.Get(c, id)
	if r.PoolMember != 0 || r.PoolProof != "" || r.ContainerID != "" {
		t.Fatalf("respecced row keeps the claim: %+v", r)
	}
}

// A pool being removed hands out no member and adds none; claimed rows are
// not its members any more, so its removal lists only the unclaimed ones.
func TestPoolRemoval(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	warm := warmPool(t, s, 2)
	ids := reserveN(t, s, 2)
	cl, err := s.ClaimMember(c, ids[0], "tok0", "img", "r0", testLease)
	if err != nil || cl == nil {
		t.Fatalf("claim: %+v %v", cl, err)
	}
	ms, err := s.StartPoolRemoval(c, "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 {
		t.Fatalf("members to remove: %+v", ms)
	}
	for _, m := range ms {
		if m.ID == cl.Member.ID {
			t.Fatalf("the claimed member is listed for removal: %+v", m)
		}
		if m.State != MemberRemoving {
			t.Fatalf("member not marked: %+v", m)
		}
	}
	if got, err := s.ClaimMember(c, ids[1], "tok1", "img", "r1", testLease); err != nil || got != nil {
		t.Fatalf("claim from a pool being removed: %+v %v", got, err)
	}
	if _, err := s.AddMember(c, "p", "x", testLease); !errors.Is(err, ErrPoolGone) {
		t.Fatalf("adding to a pool being removed: %v", err)
	}
	if err := s.EnsurePool(c, "p", "img", 2); !errors.Is(err, ErrPoolGone) {
		t.Fatalf("reviving a pool being removed: %v", err)
	}
	if err := s.MemberStarted(c, cl.Replacement.ID, "late"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a warming member started after the removal began: %v", err)
	}
	if done, err := s.DeletePool(c, "p"); err != nil || done {
		t.Fatalf("pool deleted with members left: %v %v", done, err)
	}
	for _, m := range ms {
		if err := s.DeleteMember(c, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	if done, err := s.DeletePool(c, "p"); err != nil || !done {
		t.Fatalf("pool left after its members: %v %v", done, err)
	}
	r, _ := s.Get(c, ids[0])
	if r.PoolMember != cl.Member.ID || r.ContainerID != warm[cl.Member.ID-warm[0].ID].ContainerID {
		t.Fatalf("the claiming row changed: %+v", r)
	}
}

// WarmPool counts members by state; TakeIdle takes the newest idle
// members, never one a claim holds, and never more than asked.
func TestWarmPoolAndTakeIdle(t *testing.T) {
	t.Parallel()
	s := newStore(t, freshDB(t))
	c := ctx(t)
	if _, err := s.WarmPool(c, "p"); !errors.Is(err, ErrPoolGone) {
		t.Fatalf("no pool: %v", err)
	}
	warm := warmPool(t, s, 3)
	if _, err := s.AddMember(c, "p", "warming-token", testLease); err != nil {
		t.Fatal(err)
	}
	p, err := s.WarmPool(c, "p")
	if err != nil {
		t.Fatal(err)
	}
	if p.Image != "img" || p.Size != 3 || p.State != "active" || p.Idle != 3 || p.Warming != 1 {
		t.Fatalf("pool: %+v", p)
	}

	// A claim in progress holds the oldest idle member.
	conn, err := s.Pool().Acquire(c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(c) }()
	if _, err := tx.Exec(c, `SELECT 1 FROM postgraas_pool_member WHERE id = $1 FOR UPDATE`, warm[0].ID); err != nil {
		t.Fatal(err)
	}

	took, err := s.TakeIdle(c, "p", 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(took) != 2 || took[0].ID != warm[2].ID || took[1].ID != warm[1].ID {
		t.Fatalf("took %+v, want members %d and %d", took, warm[2].ID, warm[1].ID)
	}
	for _, m := range took {
		if m.State != MemberRemoving || m.ContainerID == "" {
			t.Fatalf("taken member: %+v", m)
		}
	}
	if p, err = s.WarmPool(c, "p"); err != nil || p.Idle != 1 || p.Warming != 1 {
		t.Fatalf("after TakeIdle: %+v %v", p, err)
	}
	if took, err = s.TakeIdle(c, "p", 0); err != nil || len(took) != 0 {
		t.Fatalf("TakeIdle 0: %+v %v", took, err)
	}
}
