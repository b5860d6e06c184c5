// Package metadb keeps the record of every instance in postgraas_server's
// db_instance table, so every pipeline and person sees every instance and a
// meta DB already used by postgraas_server keeps working.
package metadb

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
}

// ErrNotFound: no row with that id or name.
var ErrNotFound = errors.New("no such instance in the meta DB")

// NameTakenError: the instance name is already recorded.
type NameTakenError struct {
	Name     string
	Existing Record
}

func (e *NameTakenError) Error() string {
	return fmt.Sprintf("an instance named %q is already recorded in the meta DB (id %d)", e.Name, e.Existing.ID)
}

// Filter narrows List. Empty fields match everything.
type Filter struct {
	Backend   string
	NameRegex *regexp.Regexp
}

// Store is safe for concurrent use. It connects on first use, not when
// made, so a plan never fails because the meta DB does not exist yet.
type Store struct {
	target   pgsql.Target
	maxConns int32

	mu   sync.Mutex
	pool *pgxpool.Pool
}

// New returns a store for the meta DB at target, with at most maxConns
// connections.
func New(target pgsql.Target, maxConns int32) *Store {
	if maxConns <= 0 {
		maxConns = 4
	}
	return &Store{target: target, maxConns: maxConns}
}

// db returns the pool, creating it and migrating the schema on first use.
// A failure is not remembered, so a later call retries.
func (s *Store) db(ctx context.Context) (*pgxpool.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil {
		return s.pool, nil
	}
	pool, err := s.target.NewPool(ctx, s.maxConns)
	if err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to the meta DB %s: %w", s.target, err)
	}
	err = migrate(ctx, conn.Conn())
	conn.Release()
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("preparing the meta DB schema in %s: %w", s.target, err)
	}
	s.pool = pool
	return pool, nil
}

// Close releases the pool.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil {
		s.pool.Close()
		s.pool = nil
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
	coalesce(state, 'ready'), coalesce(image, '')`

func scanRecord(row pgx.CollectableRow) (Record, error) {
	var r Record
	var created *time.Time
	err := row.Scan(&r.ID, &r.Name, &created, &r.DBName, &r.Username, &r.Host, &r.Port,
		&r.ContainerID, &r.Backend, &r.State, &r.Image)
	if created != nil {
		r.CreatedAt = created.UTC()
	}
	return r, err
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
	return s.queryOne(ctx, `SELECT `+selectColumns+` FROM db_instance WHERE id = $1`, id)
}

// GetByName returns the row with that instance name.
func (s *Store) GetByName(ctx context.Context, name string) (Record, error) {
	return s.queryOne(ctx, `SELECT `+selectColumns+` FROM db_instance
		WHERE postgraas_instance_name = $1 ORDER BY id LIMIT 1`, name)
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
	rows, err := pool.Query(ctx, `SELECT `+selectColumns+` FROM db_instance ORDER BY id`)
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

// Reserve records a new instance in state "creating" before any backend
// object exists, so the unique index on the name decides between concurrent
// applies (postgraas_server's check-then-insert let both win, its bug 1),
// and a failed create has exactly one row to remove.
func (s *Store) Reserve(ctx context.Context, r Record) (int64, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return 0, err
	}
	var id int64
	err = pool.QueryRow(ctx, `INSERT INTO db_instance
		(postgraas_instance_name, creation_timestamp, db_name, username, password, backend, state, image)
		VALUES ($1, now() AT TIME ZONE 'UTC', $2, $3, '', $4, $5, nullif($6, ''))
		RETURNING id`,
		r.Name, r.DBName, r.Username, r.Backend, StateCreating, r.Image).Scan(&id)
	if pgsql.Code(err) == pgsql.CodeUniqueViolation {
		existing, gerr := s.GetByName(ctx, r.Name)
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

// Complete stores where a created instance lives and marks it ready.
func (s *Store) Complete(ctx context.Context, id int64, host string, port int, username, containerID, image string) (Record, error) {
	pool, err := s.db(ctx)
	if err != nil {
		return Record{}, err
	}
	rows, err := pool.Query(ctx, `UPDATE db_instance SET hostname = $2, port = $3, username = $4,
		container_id = nullif($5, ''), image = nullif($6, ''), state = $7
		WHERE id = $1 RETURNING `+selectColumns,
		id, host, port, username, containerID, image, StateReady)
	if err != nil {
		return Record{}, fmt.Errorf("completing meta DB row %d: %w", id, err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, scanRecord)
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, fmt.Errorf("completing meta DB row %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("completing meta DB row %d: %w", id, err)
	}
	return r, nil
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

// Delete removes the row; a row already gone is not an error.
func (s *Store) Delete(ctx context.Context, id int64) error {
	pool, err := s.db(ctx)
	if err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `DELETE FROM db_instance WHERE id = $1`, id); err != nil {
		return fmt.Errorf("deleting meta DB row %d: %w", id, err)
	}
	return nil
}
