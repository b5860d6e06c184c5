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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
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
	// Pool, when set, is used instead of a pool of the backend's own: one
	// that logs in as Admin's user (with Server applied) to the same
	// server, such as the meta DB store's when the meta DB lives on the
	// cluster (pgsql.Target.SameLogin). Its database may be another one
	// than Admin.Database; the backend does not close it.
	Pool *pgsql.Pool
}

// Backend implements backend.Backend on a PostgreSQL cluster.
type Backend struct {
	admin    pgsql.Target
	server   string
	maxConns int32

	shared *pgsql.Pool

	mu     sync.Mutex
	pool   *pgsql.Pool
	closed bool

	// logins bounds the tenant logins that authenticate deletes at once,
	// so a destroy of many instances adds at most cap(logins) connections
	// to the pool's.
	logins chan struct{}

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
	if admin.Component == "" {
		admin.Component = reach.ClusterAdmin
	}
	maxConns := cfg.MaxConns
	if maxConns <= 0 {
		maxConns = 4
	}
	return &Backend{admin: admin, server: cfg.Server, maxConns: maxConns, shared: cfg.Pool,
		logins: make(chan struct{}, maxTenantLogins)}
}

// maxTenantLogins bounds the concurrent tenant logins of one backend.
const maxTenantLogins = 2

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return backend.KindPGCluster }

// Check implements backend.Checker: the admin logs in (pooled).
func (b *Backend) Check(ctx context.Context) error {
	p, err := b.adminPool()
	if err != nil {
		return err
	}
	conn, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	conn.Release()
	return nil
}

// StatusAfterCreate implements backend.Backend.
func (b *Backend) StatusAfterCreate() string { return "ready" }

// TakesImage implements backend.Backend: a cluster has no images.
func (b *Backend) TakesImage() bool { return false }

// CheckSpec implements backend.Backend.
func (b *Backend) CheckSpec(spec backend.Spec) error {
	if spec.Username != "" {
		if _, err := RoleName(spec.Username, b.server); err != nil {
			return &backend.SpecError{Attribute: "db_username", Err: err}
		}
	}
	if spec.DBName != "" {
		if err := checkName("database name", spec.DBName); err != nil {
			return &backend.SpecError{Attribute: "db_name", Err: err}
		}
	}
	if spec.Image != "" {
		return &backend.SpecError{Attribute: "image", Err: errors.New("the pg_cluster backend has no images")}
	}
	return nil
}

// SameLogin implements backend.Backend: with a server, "user" and
// "user@server" are one role.
func (b *Backend) SameLogin(x, y string) bool {
	if x == y {
		return true
	}
	rx, err1 := RoleName(x, b.server)
	ry, err2 := RoleName(y, b.server)
	return err1 == nil && err2 == nil && rx == ry
}

// marker is the comment on an instance's role: the row id in the clear and
// the proof. Only an admin (superuser, CREATEROLE, or ADMIN OPTION on the
// role) may comment on a role, so a tenant cannot put it on one; and the
// proof is an HMAC under the row's secret, so it differs between attempts
// and between meta DBs that happen to share row ids.
func marker(p backend.Proof) string {
	return fmt.Sprintf("postgraas instance %d proof %s", p.ID, p.Value)
}

// SharedPool is the pool given in Config.Pool, nil if none.
func (b *Backend) SharedPool() *pgsql.Pool { return b.shared }

// Close releases the admin pool (unless it is shared); the backend is
// unusable afterwards.
func (b *Backend) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pool != nil && b.pool != b.shared {
		b.pool.Close()
	}
	b.pool = nil
	b.closed = true
}

// adminPool returns the pool, made on first use; it connects lazily.
func (b *Backend) adminPool() (*pgsql.Pool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("pg_cluster backend is closed")
	}
	if b.pool == nil {
		b.pool = b.shared
		if b.pool == nil {
			b.pool = b.admin.NewPool(b.maxConns)
		}
	}
	return b.pool, nil
}

// acquire returns one admin connection; every operation runs all its
// statements on a single one. A full server is waited for (pgsql.Retry).
func (b *Backend) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	p, err := b.adminPool()
	if err != nil {
		return nil, err
	}
	return p.Acquire(ctx)
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
	markers := make([]string, len(insts))
	for i, inst := range insts {
		role, err := RoleName(inst.Username, b.server)
		if err != nil {
			return nil, fmt.Errorf("inspecting instance %q: %w", inst.Name, err)
		}
		roles[i], dbs[i], markers[i] = role, inst.DBName, markerOf(inst.Proof)
	}
	p, err := b.adminPool()
	if err != nil {
		return nil, err
	}
	rows, err := p.Query(ctx, `
SELECT f.role_exists, f.role_proven, f.db_exists, f.db_owned, f.login_ok
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(r, d, m, n),
     LATERAL (`+ownershipSQL+`) f
ORDER BY u.n`, roles, dbs, markers)
	if err != nil {
		return nil, fmt.Errorf("inspecting %d instance(s): %w", len(insts), err)
	}
	defer rows.Close()
	out := make([]backend.Status, 0, len(insts))
	for rows.Next() {
		var o ownership
		if err := rows.Scan(&o.roleExists, &o.roleProven, &o.dbExists, &o.dbOwned, &o.loginOK); err != nil {
			return nil, fmt.Errorf("inspecting instances: %w", err)
		}
		i := len(out)
		if i >= len(insts) {
			return nil, fmt.Errorf("inspecting instances: more rows than the %d instances", len(insts))
		}
		out = append(out, o.status(roles[i], dbs[i]))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inspecting instances: %w", err)
	}
	if len(out) != len(insts) {
		return nil, fmt.Errorf("inspecting instances: got %d rows for %d instances", len(out), len(insts))
	}
	return out, nil
}

// markerOf is the marker to look for; "" for a legacy record, which has
// none.
func markerOf(p backend.Proof) string {
	if p.Legacy() {
		return ""
	}
	return marker(p)
}

// ownershipSQL finds, for role u.r, database u.d and marker u.m, what
// exists and what is proven: the role is the instance's when it carries
// the marker (legacy records have none: existing is all they can show),
// and the database is when the instance's role owns it. A tenant cannot
// give its database away (it has no CREATEDB), so ownership cannot be
// faked from inside the cluster.
var ownershipSQL = `
SELECT r.oid IS NOT NULL AS role_exists,
       COALESCE(u.m = '' OR (` + pgsql.RoleCommentSQL("r.oid") + `) = u.m, false) AS role_proven,
       d.oid IS NOT NULL AS db_exists,
       COALESCE(d.datdba = r.oid, false) AS db_owned,
       COALESCE(r.rolcanlogin AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now()), false) AS login_ok
FROM (SELECT 1) one
LEFT JOIN pg_roles r ON r.rolname = u.r
LEFT JOIN pg_database d ON d.datname = u.d`

// ownership is one row of ownershipSQL.
type ownership struct {
	roleExists, roleProven, dbExists, dbOwned bool
	// loginOK: the role may log in now (LOGIN, VALID UNTIL not passed).
	loginOK bool
	// temps and secret are read by deleteCheck only: the instance's
	// temporary logins, and the role's stored secret where readable.
	temps  []string
	secret *string
}

// ours: the role carries the proof; oursDB: and it owns the database.
func (o ownership) ours() bool   { return o.roleExists && o.roleProven }
func (o ownership) oursDB() bool { return o.ours() && o.dbExists && o.dbOwned }

func (o ownership) status(role, db string) backend.Status {
	st := backend.Status{Exists: o.oursDB(), State: "missing"}
	if st.Exists {
		st.State = "ready"
	}
	if o.roleExists && !o.ours() {
		st.Foreign = append(st.Foreign, fmt.Sprintf("role %q", role))
	}
	if o.dbExists && !o.oursDB() {
		st.Foreign = append(st.Foreign, fmt.Sprintf("database %q", db))
	}
	return st
}

// check reads the ownership of one instance's objects.
func check(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, role, db string, p backend.Proof) (ownership, error) {
	var o ownership
	err := q.QueryRow(ctx, `SELECT f.role_exists, f.role_proven, f.db_exists, f.db_owned, f.login_ok
FROM (SELECT $1::text AS r, $2::text AS d, $3::text AS m) u, LATERAL (`+ownershipSQL+`) f`, role, db, markerOf(p)).
		Scan(&o.roleExists, &o.roleProven, &o.dbExists, &o.dbOwned, &o.loginOK)
	if err != nil {
		return o, fmt.Errorf("checking role %q and database %q: %w", role, db, err)
	}
	return o, nil
}

// SetPassword implements backend.Backend. The admin sets the verifier
// directly; the role must carry the proof.
func (b *Backend) SetPassword(ctx context.Context, inst backend.Instance, _ backend.Auth, verifier string) error {
	role, err := RoleName(inst.Username, b.server)
	if err != nil {
		return err
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	o, err := check(ctx, conn, role, inst.DBName, inst.Proof)
	if err != nil {
		return err
	}
	if !o.oursDB() {
		return fmt.Errorf("changing password of role %q: %w", role, &NotOursError{Role: role, DB: inst.DBName, o: o})
	}
	if _, err := conn.Exec(ctx, "ALTER ROLE "+pgsql.QuoteIdent(role)+" PASSWORD "+pgsql.QuoteLiteral(verifier)); err != nil {
		return fmt.Errorf("changing password of role %q: %w", role, err)
	}
	return nil
}

// Authenticate implements backend.Backend.
func (b *Backend) Authenticate(ctx context.Context, inst backend.Instance, auth backend.Auth) error {
	role, o, secret, err := b.inspectForAuth(ctx, inst)
	if err != nil {
		return err
	}
	if !o.oursDB() {
		return &NotOursError{Role: role, DB: inst.DBName, o: o}
	}
	return b.authenticate(ctx, role, inst.DBName, auth, o, secret)
}

// NotOursError: the instance's role or database is gone or is not the one
// its record made, so nothing was changed.
type NotOursError struct {
	Role, DB string
	o        ownership
}

func (e *NotOursError) Error() string {
	switch {
	case !e.o.roleExists:
		return fmt.Sprintf("role %q does not exist", e.Role)
	case !e.o.roleProven:
		return fmt.Sprintf("role %q does not carry this instance's ownership proof", e.Role)
	case !e.o.dbExists:
		return fmt.Sprintf("database %q does not exist", e.DB)
	default:
		return fmt.Sprintf("database %q is not owned by role %q", e.DB, e.Role)
	}
}
