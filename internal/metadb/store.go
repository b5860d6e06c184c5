// Package metadb keeps the record of every instance in postgraas_server's
// db_instance table, so every pipeline and person sees every instance and a
// meta DB already used by postgraas_server keeps working.
package metadb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Row states. Legacy rows written by postgraas_server have none and count
// as ready.
const (
	StateCreating = "creating"
	StateReady    = "ready"
)

// Record is one db_instance row.
type Record struct {
	ID          int64
	Name        string
	CreatedAt   time.Time // UTC
	DBName      string
	Username    string
	Host        string
	Port        int
	ContainerID string
	Backend     string
	State       string
	Image       string
	// Legacy: written by postgraas_server (no state). Its objects carry no
	// ownership proof, so they are never purged; only a destroy that
	// authenticates with the instance password removes them.
	Legacy bool
	// Token is the row's secret that its backend objects carry a proof of
	// (see internal/instance); empty on legacy rows and on rows written
	// before proofs existed.
	Token string
	// LeaseOwner and LeaseLeft describe the create lease of a "creating"
	// row: who holds it and how long it has left by the meta DB's clock
	// (negative once expired).
	LeaseOwner string
	LeaseLeft  time.Duration
	// SSLMode is the libpq sslmode clients should use ("require" or
	// "disable"); empty when unknown (rows written before it was recorded).
	SSLMode string
	// PoolMember and PoolProof are set on a docker row whose container was
	// claimed from a warm pool: the pool labels that container carries
	// (its instance labels are the pool's, as labels cannot change).
	PoolMember int64
	PoolProof  string
	// Labels are the instance's labels; nil when the row has none (every
	// row written before labels existed), empty but not nil when it was
	// given an empty set.
	Labels map[string]string
	// ExpiresAt is when the instance may be reaped; zero for never.
	ExpiresAt time.Time
	// Expired: ExpiresAt has passed by the meta DB's clock (read only).
	Expired bool
	// ExpiresAfter, on a write (Reserve, Respec), sets ExpiresAt to the
	// row's creation time, cut to the second as created_at shows it, plus
	// this; 0 keeps ExpiresAt as given. Never read back.
	ExpiresAfter time.Duration
}

// ErrNotFound: no row with that id or name.
var ErrNotFound = errors.New("no such instance in the meta DB")

// AmbiguousNameError: a legacy meta DB holds several rows with the name
// (postgraas_server's racy check let duplicates in).
type AmbiguousNameError struct {
	Name string
	IDs  []int64
}

func (e *AmbiguousNameError) Error() string {
	ids := make([]string, len(e.IDs))
	for i, id := range e.IDs {
		ids[i] = strconv.FormatInt(id, 10)
	}
	return fmt.Sprintf("the meta DB holds %d instances named %q (ids %s)", len(e.IDs), e.Name, strings.Join(ids, ", "))
}

// ErrLeaseLost: the row is no longer this run's to change (another run took
// it over after the lease expired, or it was removed).
var ErrLeaseLost = errors.New("the create lease on the meta DB row was lost")

// NameTakenError: the instance name is already recorded.
type NameTakenError struct {
	Name     string
	Existing Record
	// IDs lists every row holding the name when a legacy meta DB holds
	// several (Existing is the first).
	IDs []int64
}

func (e *NameTakenError) Error() string {
	return fmt.Sprintf("an instance named %q is already recorded in the meta DB (id %d)", e.Name, e.Existing.ID)
}

// Filter narrows List. Empty fields match everything.
type Filter struct {
	Backend   string
	NameRegex *regexp.Regexp
	// Labels: only rows that carry every one of these pairs.
	Labels map[string]string
}

// Store is safe for concurrent use. It connects on first use, not when
// made, so a plan never fails because the meta DB does not exist yet.
type Store struct {
	// pool is nil until a located store has found its meta DB.
	pool atomic.Pointer[pgsql.Pool]
	// locate, for a store made by NewLocated, finds the meta DB on first
	// use; check answers Check until then.
	locate   func(context.Context) (pgsql.Target, error)
	check    func(context.Context) error
	found    func(context.Context) (bool, error)
	maxConns int32

	// migrating is one migration attempt shared by every caller that
	// arrives while it runs, so they all fail together (after one connect
	// timeout) when the meta DB does not answer.
	migrating pgsql.Shared
	migrated  atomic.Bool
}

// New returns a store for the meta DB at target, with at most maxConns
// connections.
func New(target pgsql.Target, maxConns int32) *Store {
	return NewOnPool(target.NewPool(defaultMaxConns(maxConns)))
}

func defaultMaxConns(n int32) int32 {
	if n <= 0 {
		return 4
	}
	return n
}

// NewOnPool returns a store that uses pool, which may be shared with a
// backend that logs in to the same server as the same user; the pool's
// database is the meta DB.
func NewOnPool(pool *pgsql.Pool) *Store {
	s := &Store{}
	s.pool.Store(pool)
	return s
}

// NewLocated returns a store whose meta DB is found on first use by
// locate, which may make it (a container of its own), with at most
// maxConns connections. Until then, Check calls check, which must not
// make anything. found reports, without making or starting anything,
// whether the meta DB is there to use (see Exists). Several callers
// arriving at once share one locate, and a failed one is tried again by
// the next use.
func NewLocated(locate func(context.Context) (pgsql.Target, error), check func(context.Context) error,
	found func(context.Context) (bool, error), maxConns int32) *Store {
	return &Store{locate: locate, check: check, found: found, maxConns: defaultMaxConns(maxConns)}
}

// Exists reports whether the meta DB can be used without making it: always
// for a meta DB server (using it may still fail), and for a located one
// once found or when found says it is there. What only reads or cleans up
// (the reaper) asks first, so that it never makes a meta DB.
func (s *Store) Exists(ctx context.Context) (bool, error) {
	if s.pool.Load() != nil || s.found == nil {
		return true, nil
	}
	return s.found(ctx)
}

// Pool is the store's connection pool; nil while a located store has not
// found its meta DB yet.
func (s *Store) Pool() *pgsql.Pool { return s.pool.Load() }

// db returns the pool, finding the meta DB (NewLocated) and migrating the
// schema on first use. A failure is not remembered, so a later call
// retries.
func (s *Store) db(ctx context.Context) (*pgsql.Pool, error) {
	if s.migrated.Load() {
		return s.pool.Load(), nil
	}
	err := s.migrating.Do(ctx, func(ctx context.Context) error {
		if s.migrated.Load() {
			return nil
		}
		pool := s.pool.Load()
		if pool == nil {
			t, err := s.locate(ctx)
			if err != nil {
				return err
			}
			pool = t.NewPool(s.maxConns)
			s.pool.Store(pool)
		}
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		err = migrate(ctx, conn.Conn())
		conn.Release()
		if err != nil {
			return fmt.Errorf("preparing the meta DB schema in %s: %w", pool.Target(), err)
		}
		s.migrated.Store(true)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.pool.Load(), nil
}

// Check connects to the meta DB (pooled) without changing anything, so a
// plan can report a meta DB that does not answer or refuses the login. A
// located store that has not found its meta DB yet asks its check instead.
func (s *Store) Check(ctx context.Context) error {
	pool := s.pool.Load()
	if pool == nil {
		return s.check(ctx)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn.Release()
	return nil
}

// Close releases the pool's connections (a later call connects again).
func (s *Store) Close() {
	if pool := s.pool.Load(); pool != nil {
		pool.Close()
	}
}

// Migrate applies pending schema migrations now (otherwise they run on
// first use).
func (s *Store) Migrate(ctx context.Context) error {
	_, err := s.db(ctx)
	return err
}

// backendExpr infers the backend of legacy rows: postgraas_server only set
// container_id for docker instances.
const selectColumns = `id, coalesce(postgraas_instance_name, ''), creation_timestamp,
	coalesce(db_name, ''), coalesce(username, ''), coalesce(hostname, ''), coalesce(port, 0),
	coalesce(container_id, ''),
	coalesce(backend, CASE WHEN coalesce(container_id, '') <> '' THEN 'docker' ELSE 'pg_cluster' END),
	coalesce(state, 'ready'), coalesce(image, ''), state IS NULL,
	coalesce(owner_token, ''), coalesce(lease_owner, ''),
	coalesce(extract(epoch FROM lease_expires_at - now()), 0)::float8, coalesce(sslmode, ''),
	coalesce(pool_member, 0), coalesce(pool_proof, ''),
	labels::text, expires_at, coalesce(expires_at < now(), false)`

func scanRecord(row pgx.CollectableRow) (Record, error) {
	var r Record
	var created, expires *time.Time
	var left float64
	var labels *string
	err := row.Scan(&r.ID, &r.Name, &created, &r.DBName, &r.Username, &r.Host, &r.Port,
		&r.ContainerID, &r.Backend, &r.State, &r.Image, &r.Legacy, &r.Token, &r.LeaseOwner, &left, &r.SSLMode,
		&r.PoolMember, &r.PoolProof, &labels, &expires, &r.Expired)
	r.LeaseLeft = time.Duration(left * float64(time.Second))
	if created != nil {
		r.CreatedAt = created.UTC()
	}
	if expires != nil {
		r.ExpiresAt = expires.UTC()
	}
	if err == nil && labels != nil {
		if jerr := json.Unmarshal([]byte(*labels), &r.Labels); jerr != nil {
			// Written by hand as something other than an object of strings.
			err = fmt.Errorf("labels of meta DB row %d are not an object of strings: %w", r.ID, jerr)
		}
	}
	return r, err
}

// labelsArg is labels as a jsonb parameter: NULL for nil.
func labelsArg(labels map[string]string) *string {
	if labels == nil {
		return nil
	}
	b, _ := json.Marshal(labels) // a map of strings always encodes
	s := string(b)
	return &s
}

// expiresArg is an expiry time as a timestamptz parameter: NULL for zero.
func expiresArg(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (s *Store) queryOne(ctx context.Context, sql string, args ...any) (Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return Record{}, err
	}
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return Record{}, fmt.Errorf("reading the meta DB: %w", err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, scanRecord)
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("reading the meta DB: %w", err)
	}
	return r, nil
}

// Get returns the row with that id.
func (s *Store) Get(ctx context.Context, id int64) (Record, error) {
	if id < math.MinInt32 || id > math.MaxInt32 {
		// The id column is postgraas_server's serial (int4): no such row,
		// rather than an error encoding the parameter.
		return Record{}, ErrNotFound
	}
	return s.queryOne(ctx, `SELECT `+selectColumns+` FROM db_instance WHERE id = $1`, id)
}

// GetByName returns the row with that instance name; *AmbiguousNameError
// when a legacy meta DB holds several.
func (s *Store) GetByName(ctx context.Context, name string) (Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return Record{}, err
	}
	rows, err := pool.Query(ctx, `SELECT `+selectColumns+` FROM db_instance
		WHERE postgraas_instance_name = $1 ORDER BY id`, name)
	if err != nil {
		return Record{}, fmt.Errorf("reading the meta DB: %w", err)
	}
	recs, err := pgx.CollectRows(rows, scanRecord)
	if err != nil {
		return Record{}, fmt.Errorf("reading the meta DB: %w", err)
	}
	switch len(recs) {
	case 0:
		return Record{}, ErrNotFound
	case 1:
		return recs[0], nil
	}
	e := &AmbiguousNameError{Name: name}
	for _, r := range recs {
		e.IDs = append(e.IDs, r.ID)
	}
	return Record{}, e
}

// Lookup takes an id ("12") or a name, as import does.
func (s *Store) Lookup(ctx context.Context, idOrName string) (Record, error) {
	if id, err := strconv.ParseInt(idOrName, 10, 64); err == nil {
		return s.Get(ctx, id)
	}
	return s.GetByName(ctx, idOrName)
}

// List returns every row matching the filter, ordered by id.
func (s *Store) List(ctx context.Context, f Filter) ([]Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	// Labels are filtered in SQL (jsonb containment: every given pair
	// must be on the row); a row without labels matches only no filter.
	var want *string
	if len(f.Labels) > 0 {
		want = labelsArg(f.Labels)
	}
	rows, err := pool.Query(ctx, `SELECT `+selectColumns+` FROM db_instance
		WHERE $1::jsonb IS NULL OR labels @> $1::jsonb ORDER BY id`, want)
	if err != nil {
		return nil, fmt.Errorf("listing the meta DB: %w", err)
	}
	all, err := pgx.CollectRows(rows, scanRecord)
	if err != nil {
		return nil, fmt.Errorf("listing the meta DB: %w", err)
	}
	// Filtering in Go keeps Go's regexp syntax, which is what the
	// name_regex attribute documents and validates.
	out := all[:0]
	for _, r := range all {
		if f.Backend != "" && r.Backend != f.Backend {
			continue
		}
		if f.NameRegex != nil && !f.NameRegex.MatchString(r.Name) {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// Lease is a create lease: who holds it and for how long a silence it lasts.
type Lease struct {
	Owner string
	TTL   time.Duration
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// Reserve records a new instance in state "creating", holding a create
// lease, before any backend object exists, so the unique index on the name
// decides between concurrent applies (postgraas_server's check-then-insert
// let both win, its bug 1), and a failed create has exactly one row to
// remove. A legacy row with the same name also counts as taken.
func (s *Store) Reserve(ctx context.Context, r Record, lease Lease) (int64, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return 0, err
	}
	var id int64
	err = pool.QueryRow(ctx, `INSERT INTO db_instance
		(postgraas_instance_name, creation_timestamp, db_name, username, password, backend, state, image,
		 owner_token, lease_owner, lease_expires_at, labels, expires_at)
		SELECT $1::text, now() AT TIME ZONE 'UTC', $2, $3, '', $4, $5, nullif($6::text, ''),
		 $7, $8, now() + make_interval(secs => $9), $10::jsonb,
		 CASE WHEN $12::float8 > 0 THEN date_trunc('second', now()) + make_interval(secs => $12::float8) ELSE $11::timestamptz END
		WHERE NOT EXISTS (SELECT 1 FROM db_instance WHERE postgraas_instance_name = $1::text AND state IS NULL)
		RETURNING id`,
		r.Name, r.DBName, r.Username, r.Backend, StateCreating, r.Image, r.Token, lease.Owner, seconds(lease.TTL),
		labelsArg(r.Labels), expiresArg(r.ExpiresAt), seconds(r.ExpiresAfter)).Scan(&id)
	if pgsql.Code(err) == pgsql.CodeUniqueViolation || errors.Is(err, pgx.ErrNoRows) {
		existing, gerr := s.GetByName(ctx, r.Name)
		var amb *AmbiguousNameError
		if errors.As(gerr, &amb) {
			return 0, &NameTakenError{Name: r.Name, Existing: Record{ID: amb.IDs[0], Name: r.Name, Legacy: true}, IDs: amb.IDs}
		}
		if errors.Is(gerr, ErrNotFound) {
			// Removed between the insert and the look-up: try again.
			return s.Reserve(ctx, r, lease)
		}
		if gerr != nil {
			existing = Record{Name: r.Name}
		}
		return 0, &NameTakenError{Name: r.Name, Existing: existing}
	}
	if err != nil {
		return 0, fmt.Errorf("recording instance %q in the meta DB: %w", r.Name, err)
	}
	return id, nil
}

// RenewLeases extends, in one statement, the leases of the creating rows
// in owners (row id to lease owner) that their owners still hold, and
// returns the ids of those they no longer do. One statement for all of a
// process's creates means one connection at a time instead of one per
// create: on a server short of connections or slow to accept them, the
// renewals would otherwise be a large share of all logins.
func (s *Store) RenewLeases(ctx context.Context, ttl time.Duration, owners map[int64]string) (lost []int64, err error) {
	ids := make([]int64, 0, len(owners))
	names := make([]string, 0, len(owners))
	for id, owner := range owners {
		ids = append(ids, id)
		names = append(names, owner)
	}
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `UPDATE db_instance d SET lease_expires_at = now() + make_interval(secs => $3)
		FROM unnest($1::bigint[], $2::text[]) AS l(id, owner)
		WHERE d.id = l.id AND d.lease_owner = l.owner AND d.state = 'creating'
		RETURNING d.id`, ids, names, seconds(ttl))
	var renewed []int64
	if err == nil {
		renewed, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	if err != nil {
		return nil, fmt.Errorf("renewing the create leases of meta DB rows %v: %w", ids, err)
	}
	for _, id := range ids {
		if !slices.Contains(renewed, id) {
			lost = append(lost, id)
		}
	}
	return lost, nil
}

// execOwned runs an UPDATE or DELETE whose WHERE names id ($1) and the
// lease owner ($2), and reports ErrLeaseLost when it matched nothing.
func (s *Store) execOwned(ctx context.Context, id int64, owner, what, sql string, args ...any) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	tag, err := pool.Exec(ctx, sql, append([]any{id, owner}, args...)...)
	if err != nil {
		return fmt.Errorf("%s meta DB row %d: %w", what, id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s meta DB row %d: %w", what, id, ErrLeaseLost)
	}
	return nil
}

// Claim takes over the row of a create that cannot finish: a "creating"
// row whose lease has expired, or a "ready" row whose objects are gone
// (expect names which). The conditional update decides between runs that
// try at once: only one gets true. The row keeps its token, so what the
// previous attempt made can still be proven and removed.
func (s *Store) Claim(ctx context.Context, old Record, lease Lease) (bool, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return false, err
	}
	tag, err := pool.Exec(ctx, `UPDATE db_instance
		SET state = 'creating', lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4)
		WHERE id = $1 AND owner_token IS NOT DISTINCT FROM nullif($2, '') AND (
			(state = 'creating' AND lease_expires_at < now()) OR
			(state = 'ready' AND $5 AND (lease_owner IS NULL OR lease_expires_at < now())))`,
		old.ID, old.Token, lease.Owner, seconds(lease.TTL), old.State == StateReady)
	if err != nil {
		return false, fmt.Errorf("taking over meta DB row %d: %w", old.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Respec points a claimed row at a new create attempt: the new spec and a
// fresh token, so nothing the previous attempt made passes for this one's.
func (s *Store) Respec(ctx context.Context, id int64, r Record, lease Lease) error {
	return s.execOwned(ctx, id, lease.Owner, "preparing",
		`UPDATE db_instance SET db_name = $3, username = $4, backend = $5, image = nullif($6, ''),
			owner_token = $7, hostname = NULL, port = NULL, container_id = NULL, pool_member = NULL, pool_proof = NULL,
			creation_timestamp = now() AT TIME ZONE 'UTC', labels = $8::jsonb,
			expires_at = CASE WHEN $10::float8 > 0 THEN date_trunc('second', now()) + make_interval(secs => $10::float8)
				ELSE $9::timestamptz END
		WHERE id = $1 AND lease_owner = $2 AND state = 'creating'`,
		r.DBName, r.Username, r.Backend, r.Image, r.Token, labelsArg(r.Labels), expiresArg(r.ExpiresAt), seconds(r.ExpiresAfter))
}

// Completion is what a finished create stores in its row.
type Completion struct {
	Host        string
	Port        int
	Username    string
	ContainerID string
	Image       string
	SSLMode     string
}

// Complete stores where a created instance lives and marks it ready, if the
// lease is still this run's (ErrLeaseLost otherwise).
func (s *Store) Complete(ctx context.Context, id int64, owner string, c Completion) (Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return Record{}, err
	}
	rows, err := pool.Query(ctx, `UPDATE db_instance SET hostname = $3, port = $4, username = $5,
		container_id = nullif($6, ''), image = nullif($7, ''), sslmode = nullif($8, ''), state = 'ready',
		lease_owner = NULL, lease_expires_at = NULL
		WHERE id = $1 AND lease_owner = $2 AND state = 'creating' RETURNING `+selectColumns,
		id, owner, c.Host, c.Port, c.Username, c.ContainerID, c.Image, c.SSLMode)
	if err != nil {
		return Record{}, fmt.Errorf("completing meta DB row %d: %w", id, err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, scanRecord)
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, fmt.Errorf("completing meta DB row %d: %w", id, ErrLeaseLost)
	}
	if err != nil {
		return Record{}, fmt.Errorf("completing meta DB row %d: %w", id, err)
	}
	return r, nil
}

// Release removes a creating row whose create failed and was undone, if the
// lease is still this run's; a row already gone or taken over is left.
func (s *Store) Release(ctx context.Context, id int64, owner string) error {
	err := s.execOwned(ctx, id, owner, "removing",
		`DELETE FROM db_instance WHERE id = $1 AND lease_owner = $2 AND state = 'creating'`)
	if errors.Is(err, ErrLeaseLost) {
		return nil
	}
	return err
}

// ReleaseLeased is Release that reports whether it removed the row (a
// reaper counts what it removed).
func (s *Store) ReleaseLeased(ctx context.Context, id int64, owner string) (bool, error) {
	err := s.execOwned(ctx, id, owner, "removing",
		`DELETE FROM db_instance WHERE id = $1 AND lease_owner = $2 AND state = 'creating'`)
	if errors.Is(err, ErrLeaseLost) {
		return false, nil
	}
	return err == nil, err
}

// Rerecord writes a ready row back under its old id and token, for an
// instance whose row was deleted out of band while its objects, which
// carry the proof of that token, still exist. It fails with
// *NameTakenError when the name has been taken since.
func (s *Store) Rerecord(ctx context.Context, r Record) (Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return Record{}, err
	}
	rows, err := pool.Query(ctx, `INSERT INTO db_instance
		(id, postgraas_instance_name, creation_timestamp, db_name, username, password, hostname, port,
 container_id, backend, state, image, owner_token, sslmode, pool_member, pool_proof, labels, expires_at)
		SELECT $1::int, $2::text, $3, $4, $5, '', $6, $7, nullif($8::text, ''), $9, 'ready', nullif($10::text, ''), $11,
		 nullif($12::text, ''), nullif($13::int, 0), nullif($14::text, ''), $15::jsonb, $16::timestamptz
		WHERE NOT EXISTS (SELECT 1 FROM db_instance WHERE postgraas_instance_name = $2::text OR id = $1::int)
		RETURNING `+selectColumns,
		r.ID, r.Name, r.CreatedAt, r.DBName, r.Username, r.Host, r.Port, r.ContainerID, r.Backend, r.Image, r.Token, r.SSLMode,
		r.PoolMember, r.PoolProof, labelsArg(r.Labels), expiresArg(r.ExpiresAt))
	if err != nil && pgsql.Code(err) != pgsql.CodeUniqueViolation {
		return Record{}, fmt.Errorf("recording instance %q again: %w", r.Name, err)
	}
	if err == nil {
		rec, cerr := pgx.CollectExactlyOneRow(rows, scanRecord)
		if cerr == nil {
			return rec, nil
		}
		if !errors.Is(cerr, pgx.ErrNoRows) {
			return Record{}, fmt.Errorf("recording instance %q again: %w", r.Name, cerr)
		}
	}
	existing, _ := s.GetByName(ctx, r.Name)
	return Record{}, &NameTakenError{Name: r.Name, Existing: existing}
}

// SetPort records the port an instance listens on now (Docker publishes a
// new host port whenever a container starts again).
func (s *Store) SetPort(ctx context.Context, id int64, port int) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `UPDATE db_instance SET port = $2 WHERE id = $1`, id, port); err != nil {
		return fmt.Errorf("updating the port of meta DB row %d: %w", id, err)
	}
	return nil
}

// ClaimDelete marks a ready (or legacy) row as being destroyed by
// lease.Owner, so that a second destroy of the same instance waits for the
// first instead of logging in beside it (its login would count as a
// session in use), and returns the row as claimed: a destroy needs no read
// of its own. ErrNotFound when it claimed nothing: the row is gone, is
// being created, or another destroy's lease is live (Lookup tells which).
func (s *Store) ClaimDelete(ctx context.Context, id int64, lease Lease) (Record, error) {
	if id < math.MinInt32 || id > math.MaxInt32 {
		return Record{}, ErrNotFound // see Get
	}
	rec, err := s.queryOne(ctx, `UPDATE db_instance SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3)
		WHERE id = $1 AND state IS DISTINCT FROM 'creating' AND (lease_owner IS NULL OR lease_expires_at < now())
		RETURNING `+selectColumns, id, lease.Owner, seconds(lease.TTL))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return rec, fmt.Errorf("marking meta DB row %d for destroy: %w", id, err)
	}
	return rec, err
}

// ReleaseDelete ends a destroy's claim that failed, so the instance can be
// destroyed (or used) again.
func (s *Store) ReleaseDelete(ctx context.Context, id int64, owner string) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `UPDATE db_instance SET lease_owner = NULL, lease_expires_at = NULL
		WHERE id = $1 AND lease_owner = $2 AND state IS DISTINCT FROM 'creating'`, id, owner); err != nil {
		return fmt.Errorf("releasing meta DB row %d: %w", id, err)
	}
	return nil
}

// Delete removes the row of a destroyed instance; a row already gone is not
// an error. A row that another run has claimed since (state "creating")
// is left to it.
func (s *Store) Delete(ctx context.Context, id int64) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `DELETE FROM db_instance WHERE id = $1 AND state IS DISTINCT FROM 'creating'`, id); err != nil {
		return fmt.Errorf("deleting meta DB row %d: %w", id, err)
	}
	return nil
}

// SetMeta stores an instance's labels and expiry (zero: none): a change of
// the row only, no backend object is touched. It changes only the row that
// token names (the token in the caller's private state; "" for a row
// without one) while no create or destroy holds it: ErrNotFound when no
// such row is free to change (gone, taken over, being destroyed or reaped).
func (s *Store) SetMeta(ctx context.Context, id int64, token string, labels map[string]string, expiresAt time.Time) (Record, error) {
	if id < math.MinInt32 || id > math.MaxInt32 {
		return Record{}, ErrNotFound // see Get
	}
	rec, err := s.queryOne(ctx, `UPDATE db_instance SET labels = $3::jsonb, expires_at = $4::timestamptz
		WHERE id = $1 AND owner_token IS NOT DISTINCT FROM nullif($2::text, '') AND state IS DISTINCT FROM 'creating'
			AND (lease_owner IS NULL OR lease_expires_at < now())
		RETURNING `+selectColumns, id, token, labelsArg(labels), expiresArg(expiresAt))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return rec, fmt.Errorf("updating labels and expiry of meta DB row %d: %w", id, err)
	}
	return rec, err
}

// Expired lists at most limit rows the reaper may remove, the longest
// expired first: on one of the backends kinds (a run cannot remove what
// it has no backend for, and such rows must not use up its limit), with an
// ownership token (never a legacy row or one written before proofs),
// expires_at passed by the meta DB's clock, and either ready with no
// destroy holding them, or left creating by a create that died (its lease
// expired). One probe of the partial index on expires_at.
func (s *Store) Expired(ctx context.Context, limit int, kinds []string) ([]Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT `+selectColumns+` FROM db_instance
		WHERE expires_at < now() AND owner_token IS NOT NULL AND backend = ANY($2)
			AND ((state = 'ready' AND (lease_owner IS NULL OR lease_expires_at < now()))
				OR (state = 'creating' AND lease_expires_at < now()))
		ORDER BY expires_at, id LIMIT $1`, limit, kinds)
	if err != nil {
		return nil, fmt.Errorf("looking for expired instances in the meta DB: %w", err)
	}
	recs, err := pgx.CollectRows(rows, scanRecord)
	if err != nil {
		return nil, fmt.Errorf("looking for expired instances in the meta DB: %w", err)
	}
	return recs, nil
}

// DeleteLeased removes the row of a removed instance if the destroy lease
// is still owner's, and reports whether it did: of two runs that removed
// the same instance (the first one's lease ran out), one deletes the row.
func (s *Store) DeleteLeased(ctx context.Context, id int64, owner string) (bool, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return false, err
	}
	tag, err := pool.Exec(ctx, `DELETE FROM db_instance WHERE id = $1 AND lease_owner = $2 AND state IS DISTINCT FROM 'creating'`, id, owner)
	if err != nil {
		return false, fmt.Errorf("deleting meta DB row %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// reapLockKey is the session advisory lock a reaper holds while it
// removes expired instances, so that two runs never reap at once. The
// value is arbitrary but must never change.
const reapLockKey int64 = 0x706f73746765 // "postge"

// LockReaping takes the reapers' advisory lock without waiting. It holds
// one connection of the pool for as long as the lock is held (a session
// lock, since removals take seconds and run on other connections), until
// unlock is called; a run that dies loses its connection and with it the
// lock. ok is false when another run holds it.
func (s *Store) LockReaping(ctx context.Context) (unlock func(), ok bool, err error) {
	pool, err := s.db(ctx)
	if err != nil {
		return nil, false, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, false, err
	}
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, reapLockKey).Scan(&ok); err != nil || !ok {
		conn.Release()
		if err != nil {
			err = fmt.Errorf("taking the reapers' lock: %w", err)
		}
		return nil, false, err
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, reapLockKey); err != nil {
			// Not knowing whether it was released, the connection goes,
			// and the server releases the lock with it.
			_ = conn.Conn().Close(uctx)
		}
		conn.Release()
	}, true, nil
}
