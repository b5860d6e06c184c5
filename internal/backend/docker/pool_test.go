package docker

import (
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
)

// startPoolMember makes a pool container for a random member and removes
// it (whatever its name by then) when the test ends.
func (e env) startPoolMember(t *testing.T) (PoolMember, string) {
	t.Helper()
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<40))
	m := PoolMember{ID: n.Int64() + 1, Pool: "pooltest-" + randHex(4), Image: e.image, Proof: randHex(32)}
	id, err := e.b.StartPoolMember(ctxFor(t, 2*time.Minute), m)
	if err != nil {
		t.Fatalf("StartPoolMember: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.b.remove(ctx, id); err != nil {
			t.Errorf("cleanup of %s: %v", id, err)
		}
	})
	return m, id
}

// A claimed pool container becomes what a cold create makes: the
// instance's name, its user as the server's bootstrap superuser with the
// password's verifier, its database, no trace of the pool's; it is proven
// by its pool labels and the recorded ID, and rotate, the write-only
// verifier check and destroy work on it as on a cold one.
func TestPoolClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	m, id := e.startPoolMember(t)
	pc, ok := e.inspect(t, id)
	if !ok || pc.Name != "/"+PoolContainerName(m.Pool, m.ID) {
		t.Fatalf("pool container: %v %q", ok, pc.Name)
	}
	if _, has := pc.Config.Labels[LabelInstance]; has {
		t.Fatal("a pool container carries the instance label, so listings would show it")
	}
	spec := e.spec(t)
	ctx := ctxFor(t, 2*time.Minute)
	// Another member's proof: refused before the rename, nothing changed.
	other := m
	other.Proof = strings.Repeat("0", len(m.Proof))
	if _, err := e.b.ClaimPool(ctx, id, other, spec); !errors.Is(err, backend.ErrNotOurs) {
		t.Fatalf("ClaimPool with another member's proof: %v", err)
	}
	if pc, ok := e.inspect(t, id); !ok || pc.Name != "/"+PoolContainerName(m.Pool, m.ID) {
		t.Fatalf("after a refused claim the pool container is %v %q", ok, pc.Name)
	}
	c, err := e.b.ClaimPool(ctx, id, m, spec)
	if err != nil {
		t.Fatalf("ClaimPool: %v", err)
	}
	if c.ContainerID != id || c.Username != spec.Username || c.Port == 0 || c.Image != e.image {
		t.Fatalf("created: %+v", c)
	}
	inst := instanceOf(spec, c)
	inst.PoolMember, inst.PoolProof = m.ID, m.Proof

	cc, ok := e.inspect(t, spec.Name)
	if !ok || cc.ID != id {
		t.Fatalf("container not found by the instance name")
	}
	conn, err := connect(ctx, c, spec.DBName, spec.Password)
	if err != nil {
		t.Fatalf("login after the claim: %v", err)
	}
	var super bool
	var oid int64
	var pooled int
	if err := conn.QueryRow(ctx, `SELECT rolsuper, oid::int8 FROM pg_roles WHERE rolname = current_user`).Scan(&super, &oid); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'postgraas_pool%')
		+ (SELECT count(*) FROM pg_database WHERE datname LIKE 'postgraas_pool%')`).Scan(&pooled); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if !super || oid != 10 || pooled != 0 {
		t.Fatalf("after the claim: superuser %v, oid %d, %d pool roles and databases left", super, oid, pooled)
	}
	e.assertNoSecretInConfig(t, id, spec.Password)

	// Proven by the chain, not by a name or a lookalike.
	if _, found, ours, err := e.b.find(ctx, inst); err != nil || !found || !ours {
		t.Fatalf("find of the claimed container: found %v ours %v %v", found, ours, err)
	}
	for name, other := range map[string]backend.Instance{
		"another pool proof": func() backend.Instance { i := inst; i.PoolProof = randHex(32); return i }(),
		"another member":     func() backend.Instance { i := inst; i.PoolMember++; return i }(),
		"no pool record":     func() backend.Instance { i := inst; i.PoolMember, i.PoolProof = 0, ""; return i }(),
	} {
		if _, _, ours, err := e.b.find(ctx, other); err != nil || ours {
			t.Errorf("%s: ours %v %v", name, ours, err)
		}
	}
	if st := e.status(t, inst); st.Port != c.Port {
		t.Errorf("Inspect: %+v", st)
	}
	if secret, _, err := e.b.storedVerifier(ctx, id, inst); err != nil || secret == "" {
		t.Fatalf("psql as the instance user inside the container: %q %v", secret, err)
	}
	newPW := "rotated'" + randHex(4)
	if err := rotate(ctx, e.b, inst, spec.Password, newPW); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: newPW}, false); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, ok := e.inspect(t, id); ok {
		t.Error("Delete left the claimed container")
	}
}

// Purge under a proof that is not the claim's leaves the container: a
// row's claim is the only thing that makes a pool container its own.
func TestPoolPurgeNeedsTheClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	m, id := e.startPoolMember(t)
	spec := e.spec(t)
	ctx := ctxFor(t, time.Minute)
	inst := backend.Instance{ID: spec.InstanceID, Name: spec.Name, DBName: spec.DBName, Username: spec.Username,
		ContainerID: id, Proof: spec.Proof, PoolMember: m.ID, PoolProof: randHex(32)}
	_ = e.b.Purge(ctx, inst)
	if _, ok := e.inspect(t, id); !ok {
		t.Fatal("Purge removed a pool container the row did not claim")
	}
	inst.PoolProof = m.Proof
	if err := e.b.Purge(ctx, inst); err != nil {
		t.Fatalf("Purge of the claimed container: %v", err)
	}
	if _, ok := e.inspect(t, id); ok {
		t.Fatal("Purge left the claimed container")
	}
}
