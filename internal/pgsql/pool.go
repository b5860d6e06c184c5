package pgsql

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// Pool is a bounded connection pool that connects lazily, on first use,
// and retries a connect that fails transiently (a full server, one
// starting up, a dropped connection) with backoff within the caller's
// context (see Retry). Statements are never retried here: only the
// caller knows whether one is safe to repeat.
//
// One Pool may serve several users of the same login, e.g. the meta DB
// store and the pg_cluster backend when both are on one server with one
// user: the server-wide statements of the backend (roles, databases,
// pg_stat_activity) work from any database.
type Pool struct {
	target   Target
	maxConns int32

	mu   sync.Mutex
	pool *pgxpool.Pool

	// connected is set while connecting works. Until then (and again
	// after a connect failed), callers share one connect attempt (gate):
	// a pool of 2 would otherwise meet a server that never answers in
	// waves of 2, each a connect timeout long.
	connected atomic.Bool
	gate      Shared
}

// NewPool returns a pool of at most maxConns connections to t; nothing
// connects until the first Acquire.
func (t Target) NewPool(maxConns int32) *Pool {
	if maxConns <= 0 {
		maxConns = 2
	}
	return &Pool{target: t, maxConns: maxConns}
}

// Target is where the pool connects.
func (p *Pool) Target() Target { return p.target }

// MaxConns is the pool's bound.
func (p *Pool) MaxConns() int32 { return p.maxConns }

func (p *Pool) get() (*pgxpool.Pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pool == nil {
		cfg, err := p.target.PoolConfig(p.maxConns)
		if err != nil {
			return nil, err
		}
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", p.target, err)
		}
		p.pool = pool
	}
	return p.pool, nil
}

// Acquire returns a connection, waiting for a free one or connecting, and
// retrying a connect that fails transiently.
func (p *Pool) Acquire(ctx context.Context) (*pgxpool.Conn, error) {
	pool, err := p.get()
	if err != nil {
		return nil, err
	}
	if !p.connected.Load() {
		err := p.gate.Do(ctx, func(ctx context.Context) error {
			conn, err := p.acquire(ctx, pool)
			if err == nil {
				conn.Release()
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return p.acquire(ctx, pool)
}

// acquire takes a connection from pool, retrying a connect that fails
// transiently, and keeps p.connected up to date.
func (p *Pool) acquire(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Conn, error) {
	var conn *pgxpool.Conn
	err := Retry(ctx, func(ctx context.Context) error {
		ctx = watchAnswers(ctx)
		var err error
		conn, err = pool.Acquire(ctx)
		return p.target.connectFailure(ctx, err)
	})
	if err != nil {
		if reach.As(err) != nil {
			p.connected.Store(false)
			return nil, err
		}
		return nil, fmt.Errorf("connecting to %s: %w", p.target, err)
	}
	p.connected.Store(true)
	return conn, nil
}

// Exec runs sql on a pooled connection.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	conn, err := p.Acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer conn.Release()
	return conn.Exec(ctx, sql, args...)
}

// Query runs sql on a pooled connection, which goes back to the pool when
// the rows are closed (as pgx.CollectRows and friends do).
func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	conn, err := p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		conn.Release()
		return nil, err
	}
	return &releasingRows{Rows: rows, conn: conn}, nil
}

// QueryRow runs sql on a pooled connection, released after Scan.
func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	conn, err := p.Acquire(ctx)
	if err != nil {
		return errRow{err}
	}
	return &releasingRow{row: conn.QueryRow(ctx, sql, args...), conn: conn}
}

// Close closes every connection; a later Acquire starts a new pool.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pool != nil {
		p.pool.Close()
		p.pool = nil
	}
}

type releasingRows struct {
	pgx.Rows
	conn *pgxpool.Conn
	once sync.Once
}

func (r *releasingRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *releasingRows) Close() {
	r.Rows.Close()
	r.once.Do(r.conn.Release)
}

type releasingRow struct {
	row  pgx.Row
	conn *pgxpool.Conn
}

func (r *releasingRow) Scan(dest ...any) error {
	defer r.conn.Release()
	return r.row.Scan(dest...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
