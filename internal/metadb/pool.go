package metadb

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// inTx runs fn in a transaction on one of pool's connections.
func inTx(ctx context.Context, pool *pgsql.Pool, fn func(pgx.Tx) error) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	return pgx.BeginFunc(ctx, conn, fn)
}

// Pool member states (DESIGN.md, "Warm pools").
const (
	// MemberWarming: the row exists, its container may not yet; the row's
	// lease says whether the run making it is still alive.
	MemberWarming = "warming"
	// MemberIdle: its container exists (its initdb may still be running
	// inside Docker) and may be claimed.
	MemberIdle = "idle"
	// MemberRemoving: a pool destroy is removing it.
	MemberRemoving = "removing"
)

// Member is one postgraas_pool_member row.
type Member struct {
	ID          int64
	Pool        string
	Image       string
	State       string
	Token       string
	ContainerID string
	// LeaseLeft is what is left of a warming member's lease (negative once
	// expired: the run making its container died or stalled).
	LeaseLeft time.Duration
}

// Proof is the value of the label postgraas.pool.proof that the member's
// container carries: an HMAC of the member's identity under its token.
func (m Member) Proof() string { return PoolProof(m.Token, m.ID, m.Pool) }

// PoolProof is the pool proof of member id of pool under token.
func PoolProof(token string, id int64, pool string) string {
	h := hmac.New(sha256.New, []byte(token))
	fmt.Fprintf(h, "postgraas/docker-pool/%d/%s", id, pool)
	return hex.EncodeToString(h.Sum(nil))
}

// Pool states.
const (
	PoolActive   = "active"
	PoolRemoving = "removing"
)

// ErrPoolGone: the pool does not exist or is being destroyed.
var ErrPoolGone = errors.New("the warm pool does not exist or is being destroyed")

// Claimed is what ClaimMember took: the member as it was (its container is
// now the instance's) and the replacement member row it added (warming,
// for the caller to start a container for), if the pool is still active.
type Claimed struct {
	Member      Member
	Replacement *Member
}

// EnsurePool records a pool, or updates its image and size; a pool being
// destroyed is not revived (ErrPoolGone).
func (s *Store) EnsurePool(ctx context.Context, name, image string, size int) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	var state string
	err = pool.QueryRow(ctx, `INSERT INTO postgraas_warm_pool (name, image, size) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET image = excluded.image, size = excluded.size
		WHERE postgraas_warm_pool.state = 'active'
		RETURNING state`, name, image, size).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrPoolGone
	}
	if err != nil {
		return fmt.Errorf("recording warm pool %q: %w", name, err)
	}
	return nil
}

const memberColumns = `id, pool, image, state, owner_token, coalesce(container_id, ''),
	coalesce(extract(epoch FROM lease_expires_at - now()), 0)::float8`

func scanMember(row pgx.CollectableRow) (Member, error) {
	var m Member
	var left float64
	err := row.Scan(&m.ID, &m.Pool, &m.Image, &m.State, &m.Token, &m.ContainerID, &left)
	m.LeaseLeft = time.Duration(left * float64(time.Second))
	return m, err
}

// addMember inserts a warming member of an active pool, under a lease of
// ttl; q is the pool or a transaction.
func addMember(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, poolName, token string, lease Lease) (*Member, error) {
	rows, err := q.Query(ctx, `INSERT INTO postgraas_pool_member (pool, image, state, owner_token, lease_expires_at)
		SELECT name, image, 'warming', $2, now() + make_interval(secs => $3)
		FROM (SELECT name, image FROM postgraas_warm_pool WHERE name = $1 AND state = 'active' FOR SHARE) p
		RETURNING `+memberColumns, poolName, token, seconds(lease.TTL))
	if err != nil {
		return nil, err
	}
	m, err := pgx.CollectExactlyOneRow(rows, scanMember)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// AddMember adds a warming member to an active pool (ErrPoolGone
// otherwise); its container is to be made by the caller, who then calls
// MemberStarted before the lease runs out.
func (s *Store) AddMember(ctx context.Context, poolName, token string, lease Lease) (Member, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return Member{}, err
	}
	m, err := addMember(ctx, pool, poolName, token, lease)
	if err != nil {
		return Member{}, fmt.Errorf("adding a member to warm pool %q: %w", poolName, err)
	}
	if m == nil {
		return Member{}, ErrPoolGone
	}
	return *m, nil
}

// MemberStarted records the container of a warming member and makes it
// claimable; repeating it (a run that took over the member's expired lease
// found the container first) is not an error. ErrNotFound when the member
// is gone or being removed: the container is then nobody's member.
func (s *Store) MemberStarted(ctx context.Context, id int64, containerID string) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	tag, err := pool.Exec(ctx, `UPDATE postgraas_pool_member SET container_id = $2, state = 'idle', lease_expires_at = NULL
		WHERE id = $1 AND (state = 'warming' OR (state = 'idle' AND container_id = $2))`, id, containerID)
	if err != nil {
		return fmt.Errorf("recording the container of pool member %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// Members lists a pool's member rows, ordered by id.
func (s *Store) Members(ctx context.Context, poolName string) ([]Member, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT `+memberColumns+` FROM postgraas_pool_member WHERE pool = $1 ORDER BY id`, poolName)
	if err != nil {
		return nil, fmt.Errorf("listing warm pool %q: %w", poolName, err)
	}
	ms, err := pgx.CollectRows(rows, scanMember)
	if err != nil {
		return nil, fmt.Errorf("listing warm pool %q: %w", poolName, err)
	}
	return ms, nil
}

// ClaimMember moves an idle member of a docker pool of image to the
// creating row id, which lease.Owner must hold with token: in one
// transaction the member is locked (FOR UPDATE SKIP LOCKED, so concurrent
// claims take different members), the row records its container and pool
// proof, the member row is deleted, and a warming replacement (with
// replacementToken, under lease) is added while the pool is active. nil
// when no idle member was free: the create goes cold. ErrLeaseLost when
// the row is no longer this run's (nothing changed).
func (s *Store) ClaimMember(ctx context.Context, id int64, token, image, replacementToken string, lease Lease) (*Claimed, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	var out *Claimed
	err = inTx(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+memberColumns+` FROM postgraas_pool_member
			WHERE image = $1 AND state = 'idle' AND container_id IS NOT NULL
			ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`, image)
		if err != nil {
			return err
		}
		m, err := pgx.CollectExactlyOneRow(rows, scanMember)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE db_instance SET container_id = $4, pool_member = $5, pool_proof = $6
			WHERE id = $1 AND lease_owner = $2 AND owner_token = $3 AND state = 'creating'`,
			id, lease.Owner, token, m.ContainerID, m.ID, m.Proof())
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrLeaseLost
		}
		if _, err := tx.Exec(ctx, `DELETE FROM postgraas_pool_member WHERE id = $1`, m.ID); err != nil {
			return err
		}
		repl, err := addMember(ctx, tx, m.Pool, replacementToken, lease)
		if err != nil {
			return err
		}
		out = &Claimed{Member: m, Replacement: repl}
		return nil
	})
	if errors.Is(err, ErrLeaseLost) {
		return nil, fmt.Errorf("claiming a warm container for meta DB row %d: %w", id, ErrLeaseLost)
	}
	if err != nil {
		return nil, fmt.Errorf("claiming a warm container for meta DB row %d: %w", id, err)
	}
	return out, nil
}

// Unclaim forgets the claim of the creating row id, which lease.Owner
// holds with token, after its claimed container turned out unusable and
// was removed: the create goes on cold. ErrLeaseLost when the row is no
// longer this run's.
func (s *Store) Unclaim(ctx context.Context, id int64, token string, lease Lease) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	tag, err := pool.Exec(ctx, `UPDATE db_instance SET container_id = NULL, pool_member = NULL, pool_proof = NULL
		WHERE id = $1 AND lease_owner = $2 AND owner_token = $3 AND state = 'creating'`, id, lease.Owner, token)
	if err != nil {
		return fmt.Errorf("forgetting the warm container claim of meta DB row %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("forgetting the warm container claim of meta DB row %d: %w", id, ErrLeaseLost)
	}
	return nil
}

// StartPoolRemoval marks a pool and all its members as being removed and
// returns the members, whose containers the caller removes by their pool
// proof before DeleteMember and finally DeletePool. Claims that hold the
// pool row (a replacement being added) finish first; none adds one after.
// A warming member's maker finds MemberStarted refused and removes its
// container itself. Repeating it after a killed destroy is harmless.
func (s *Store) StartPoolRemoval(ctx context.Context, name string) ([]Member, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	var ms []Member
	err = inTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE postgraas_warm_pool SET state = 'removing' WHERE name = $1`, name); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `UPDATE postgraas_pool_member SET state = 'removing', lease_expires_at = NULL
			WHERE pool = $1 RETURNING `+memberColumns, name)
		if err != nil {
			return err
		}
		ms, err = pgx.CollectRows(rows, scanMember)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("marking warm pool %q for removal: %w", name, err)
	}
	return ms, nil
}

// DeleteMember removes a member row whose container is gone.
func (s *Store) DeleteMember(ctx context.Context, id int64) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `DELETE FROM postgraas_pool_member WHERE id = $1`, id); err != nil {
		return fmt.Errorf("deleting pool member %d: %w", id, err)
	}
	return nil
}

// DeletePool removes a pool's row once it has no members left; false while
// some remain.
func (s *Store) DeletePool(ctx context.Context, name string) (bool, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return false, err
	}
	_, err = pool.Exec(ctx, `DELETE FROM postgraas_warm_pool WHERE name = $1
		AND NOT EXISTS (SELECT 1 FROM postgraas_pool_member WHERE pool = $1)`, name)
	if err != nil {
		return false, fmt.Errorf("deleting warm pool %q: %w", name, err)
	}
	var left bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM postgraas_warm_pool WHERE name = $1)`, name).Scan(&left); err != nil {
		return false, fmt.Errorf("deleting warm pool %q: %w", name, err)
	}
	return !left, nil
}

// TakeOverMember extends the expired lease of a warming member to this
// run; false when it is not expired or not warming any more (another run
// was first).
func (s *Store) TakeOverMember(ctx context.Context, id int64, lease Lease) (bool, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return false, err
	}
	tag, err := pool.Exec(ctx, `UPDATE postgraas_pool_member SET lease_expires_at = now() + make_interval(secs => $2)
		WHERE id = $1 AND state = 'warming' AND lease_expires_at < now()`, id, seconds(lease.TTL))
	if err != nil {
		return false, fmt.Errorf("taking over pool member %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// PoolInfo is a pool's row and a count of its members by state.
type PoolInfo struct {
	Name, Image, State string
	Size               int
	// Idle members have a container that can be claimed; Warming ones are
	// still being made, Stale ones of them by a run that died (their lease
	// ran out: the pool's next apply finishes or drops them).
	Idle, Warming, Stale int
}

// Ready is how many members the pool has or will have without another
// apply of it.
func (p PoolInfo) Ready() int { return p.Idle + p.Warming - p.Stale }

// WarmPool reads the pool name; ErrPoolGone when there is none.
func (s *Store) WarmPool(ctx context.Context, name string) (PoolInfo, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return PoolInfo{}, err
	}
	p := PoolInfo{Name: name}
	err = pool.QueryRow(ctx, `SELECT p.image, p.state, p.size,
			count(*) FILTER (WHERE m.state = 'idle'), count(*) FILTER (WHERE m.state = 'warming'),
			count(*) FILTER (WHERE m.state = 'warming' AND m.lease_expires_at < now())
		FROM postgraas_warm_pool p LEFT JOIN postgraas_pool_member m ON m.pool = p.name
		WHERE p.name = $1 GROUP BY p.name`, name).Scan(&p.Image, &p.State, &p.Size, &p.Idle, &p.Warming, &p.Stale)
	if errors.Is(err, pgx.ErrNoRows) {
		return PoolInfo{}, ErrPoolGone
	}
	if err != nil {
		return PoolInfo{}, fmt.Errorf("reading warm pool %q: %w", name, err)
	}
	return p, nil
}

// TakeIdle marks up to n idle members of the pool name as being removed,
// newest first, skipping members a claim holds, and returns them: the
// caller removes their containers by pool proof and then their rows, as a
// pool destroy does. It is how a pool shrinks.
func (s *Store) TakeIdle(ctx context.Context, name string, n int) ([]Member, error) {
	if n <= 0 {
		return nil, nil
	}
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `UPDATE postgraas_pool_member SET state = 'removing'
		WHERE id IN (SELECT id FROM postgraas_pool_member WHERE pool = $1 AND state = 'idle'
			ORDER BY id DESC LIMIT $2 FOR UPDATE SKIP LOCKED)
		RETURNING `+memberColumns, name, n)
	if err != nil {
		return nil, fmt.Errorf("taking idle members of warm pool %q: %w", name, err)
	}
	ms, err := pgx.CollectRows(rows, scanMember)
	if err != nil {
		return nil, fmt.Errorf("taking idle members of warm pool %q: %w", name, err)
	}
	// RETURNING follows no order.
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Compare(b.ID, a.ID) })
	return ms, nil
}
