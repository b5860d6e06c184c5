// Package pgcluster hands out instances as a role plus a database owned by it
// on a shared PostgreSQL cluster, as postgraas_server's pg_cluster backend
// did, without its bugs: passwords travel only as SCRAM verifiers, PUBLIC
// loses CONNECT on every tenant database, a failed create undoes exactly what
// it made, and a half-done delete can be finished by calling it again.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// maxIdentLen is NAMEDATALEN-1: PostgreSQL silently truncates longer names
// (postgraas_server bug 3), so they are refused instead.
const maxIdentLen = 63

// Config is the cluster to create instances on.
type Config struct {
	// Admin is the admin login; Database is the maintenance database
	// (e.g. "postgres"). User is the plain admin name: with Server set the
	// login becomes "user@server".
	Admin pgsql.Target
	// Server is the Azure single-server style suffix; "" for none.
	Server string
	// MaxConns bounds the admin pool; 0 means 4.
	MaxConns int32
}

// Backend implements backend.Backend on a PostgreSQL cluster.
type Backend struct {
	admin    pgsql.Target
	server   string
	maxConns int32

	mu     sync.Mutex
	pool   *pgxpool.Pool
	closed bool

	// authidDenied is set once the admin turned out unable to read
	// pg_authid (not a superuser): deletes then authenticate by logging in.
	authidDenied atomic.Bool
}

var _ backend.Backend = (*Backend)(nil)

// New returns a backend that has not connected yet: the server may not exist
// until later in the same apply, so a plan must not need it.
func New(cfg Config) *Backend {
	admin := cfg.Admin
	admin.User = StoredUsername(admin.User, cfg.Server)
	maxConns := cfg.MaxConns
	if maxConns <= 0 {
		maxConns = 4
	}
	return &Backend{admin: admin, server: cfg.Server, maxConns: maxConns}
}

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return backend.KindPGCluster }

// Close releases the admin pool; the backend is unusable afterwards.
func (b *Backend) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pool != nil {
		b.pool.Close()
		b.pool = nil
	}
	b.closed = true
}

// adminPool creates the pool on first use. Creation only fails on bad
// settings, and is retried by the next call rather than remembered.
func (b *Backend) adminPool(ctx context.Context) (*pgxpool.Pool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("pg_cluster backend is closed")
	}
	if b.pool == nil {
		p, err := b.admin.NewPool(ctx, b.maxConns)
		if err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", b.admin, err)
		}
		b.pool = p
	}
	return b.pool, nil
}

// acquire returns one admin connection; every operation runs all its
// statements on a single one.
func (b *Backend) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	p, err := b.adminPool(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := p.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", b.admin, err)
	}
	return conn, nil
}

// RoleName returns the role to create for a configured username. With a
// server, "user" and "user@server" both mean role "user"; without one, an
// '@' is refused, since delete could never tell the parts apart
// (postgraas_server bug 10).
func RoleName(username, server string) (string, error) {
	role := username
	if server != "" {
		role = strings.TrimSuffix(username, "@"+server)
	}
	if strings.Contains(role, "@") {
		if server == "" {
			return "", fmt.Errorf("username %q: '@' is only allowed with a server configured", username)
		}
		return "", fmt.Errorf("username %q: only the suffix @%s is allowed", username, server)
	}
	if err := checkName("username", role); err != nil {
		return "", err
	}
	return role, nil
}

// StoredUsername is the login name for a role: "role@server" with a server.
func StoredUsername(role, server string) string {
	if server == "" {
		return role
	}
	return role + "@" + server
}

func checkName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s must not be empty", what)
	case len(name) > maxIdentLen:
		return fmt.Errorf("%s %q is %d bytes long; PostgreSQL allows at most %d", what, name, len(name), maxIdentLen)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%s %q contains a NUL byte", what, name)
	}
	return nil
}

// Inspect implements backend.Backend.
func (b *Backend) Inspect(ctx context.Context, inst backend.Instance) (backend.Status, error) {
	st, err := b.InspectMany(ctx, []backend.Instance{inst})
	if err != nil {
		return backend.Status{}, err
	}
	return st[0], nil
}

// InspectMany inspects many instances with one query, so refreshing a large
// configuration costs one round trip instead of one per instance.
func (b *Backend) InspectMany(ctx context.Context, insts []backend.Instance) ([]backend.Status, error) {
	if len(insts) == 0 {
		return nil, nil
	}
	roles := make([]string, len(insts))
	dbs := make([]string, len(insts))
	for i, inst := range insts {
		role, err := RoleName(inst.Username, b.server)
		if err != nil {
			return nil, fmt.Errorf("inspecting instance %q: %w", inst.Name, err)
		}
		roles[i], dbs[i] = role, inst.DBName
	}
	p, err := b.adminPool(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := p.Query(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = u.r),
       EXISTS (SELECT 1 FROM pg_database WHERE datname = u.d)
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(r, d, n)
ORDER BY u.n`, roles, dbs)
	if err != nil {
		return nil, fmt.Errorf("inspecting %d instance(s): %w", len(insts), err)
	}
	defer rows.Close()
	out := make([]backend.Status, 0, len(insts))
	for rows.Next() {
		var roleOK, dbOK bool
		if err := rows.Scan(&roleOK, &dbOK); err != nil {
			return nil, fmt.Errorf("inspecting instances: %w", err)
		}
		st := backend.Status{Exists: roleOK && dbOK, State: "missing"}
		if st.Exists {
			st.State = "ready"
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inspecting instances: %w", err)
	}
	if len(out) != len(insts) {
		return nil, fmt.Errorf("inspecting instances: got %d rows for %d instances", len(out), len(insts))
	}
	return out, nil
}

// RotatePassword implements backend.Backend. The admin sets the new password
// directly, so the old one is not needed.
func (b *Backend) RotatePassword(ctx context.Context, inst backend.Instance, _, newPassword string) error {
	role, err := RoleName(inst.Username, b.server)
	if err != nil {
		return err
	}
	if newPassword == "" {
		return errors.New("password must not be empty")
	}
	verifier, err := pgsql.ScramVerifier(newPassword)
	if err != nil {
		return err
	}
	p, err := b.adminPool(ctx)
	if err != nil {
		return err
	}
	if _, err := p.Exec(ctx, "ALTER ROLE "+pgsql.QuoteIdent(role)+" PASSWORD "+pgsql.QuoteLiteral(verifier)); err != nil {
		return fmt.Errorf("changing password of role %q: %w", role, err)
	}
	return nil
}
