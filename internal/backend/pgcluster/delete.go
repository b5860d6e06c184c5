package pgcluster

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// Delete implements backend.Backend. Every step tolerates objects already
// gone, so a delete that stopped half-way (or lost a race with another one)
// is finished by calling it again (postgraas_server bug 4). Only the role
// that carries the instance's proof, and the database that role owns, are
// dropped; same-named objects of anyone else are left as they are.
func (b *Backend) Delete(ctx context.Context, inst backend.Instance, auth backend.Auth, force bool) error {
	role, o, secret, err := b.inspectForAuth(ctx, inst)
	if err != nil {
		return err
	}
	// The instance's database is owned by its role, so without a role of
	// ours nothing of ours is left: whatever has the names now is someone
	// else's (a DBA who kept the data, another tenant).
	if !o.ours() {
		return nil
	}
	if err := b.authenticate(ctx, role, inst.DBName, auth, o, secret); err != nil {
		return err
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if secret == nil {
		// A login took time: prove ownership again right before the drop.
		if o, err = b.deleteCheck(ctx, conn, role, inst, false); err != nil {
			return err
		}
		if !o.ours() {
			return nil
		}
	}
	return b.drop(ctx, conn.Conn(), inst, role, o, force)
}

// drop removes what o proved to be the instance's: its database, its
// temporary logins (which would otherwise be left as roles of nobody's),
// then its role.
func (b *Backend) drop(ctx context.Context, conn *pgx.Conn, inst backend.Instance, role string, o ownership, force bool) error {
	if o.oursDB() {
		if err := dropDatabase(ctx, conn, inst.DBName, force); err != nil {
			return err
		}
	}
	if err := b.dropTempRoles(ctx, conn, inst, o.temps); err != nil {
		return err
	}
	return b.dropRole(ctx, conn, role)
}

// Purge implements backend.Backend.
func (b *Backend) Purge(ctx context.Context, inst backend.Instance) error {
	if inst.Proof.Legacy() {
		return fmt.Errorf("purging instance %q: %w", inst.Name, backend.ErrLegacy)
	}
	role, err := RoleName(inst.Username, b.server)
	if err != nil {
		return err
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	o, err := b.deleteCheck(ctx, conn, role, inst, false)
	if err != nil || !o.ours() {
		return err
	}
	return b.drop(ctx, conn.Conn(), inst, role, o, true)
}

// inspectForAuth reads, in one round trip and without holding a connection
// (with Terraform destroying 10 instances at once, a small pool would
// otherwise spend its time waiting for tenant logins), what exists of the
// instance, what of it is proven, and the role's secret where readable.
func (b *Backend) inspectForAuth(ctx context.Context, inst backend.Instance) (string, ownership, *string, error) {
	role, err := RoleName(inst.Username, b.server)
	if err != nil {
		return "", ownership{}, nil, err
	}
	p, err := b.adminPool()
	if err != nil {
		return "", ownership{}, nil, err
	}
	if !b.authidDenied.Load() {
		o, err := b.deleteCheck(ctx, p, role, inst, true)
		if pgsql.Code(err) != pgsql.CodeInsufficientPrivilege {
			return role, o, o.secret, err
		}
		// Not a superuser: authenticate by logging in, from now on.
		b.authidDenied.Store(true)
	}
	o, err := b.deleteCheck(ctx, p, role, inst, false)
	return role, o, nil, err
}

// deleteCheckSQL is ownershipSQL plus the instance's temporary logins, in
// one round trip: a delete needs both, and most instances have no
// temporary login, so listing them apart would cost every delete a round
// trip for nothing. A legacy instance's marker is NULL and matches none.
var deleteCheckSQL = `SELECT f.role_exists, f.role_proven, f.db_exists, f.db_owned, f.login_ok,
       ARRAY(` + tempRolesSQL + `)
FROM (SELECT $1::text AS r, $2::text AS d, $3::text AS m, $4::text AS tm, $5::text AS tp) u, LATERAL (` + ownershipSQL + `) f`

// deleteCheckSecretSQL adds the role's stored secret when the role may log
// in now (LOGIN, password not expired); pg_authid is readable by
// superusers only.
var deleteCheckSecretSQL = `SELECT c.*, (SELECT rolpassword FROM pg_authid WHERE rolname = $1)
FROM (` + deleteCheckSQL + `) c`

// deleteCheck finds out what is left of an instance, what of it is proven
// and its temporary logins, and with withSecret the role's stored secret
// (the query then fails with insufficient_privilege for a non-superuser).
func (b *Backend) deleteCheck(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, role string, inst backend.Instance, withSecret bool) (o ownership, err error) {
	var tm, tp *string
	if _, marker, prefix, err := b.tempParams(inst); err == nil {
		tm, tp = &marker, &prefix
	}
	dest := []any{&o.roleExists, &o.roleProven, &o.dbExists, &o.dbOwned, &o.loginOK, &o.temps}
	sql := deleteCheckSQL
	if withSecret {
		sql, dest = deleteCheckSecretSQL, append(dest, &o.secret)
	}
	if err := q.QueryRow(ctx, sql, role, inst.DBName, markerOf(inst.Proof), tm, tp).Scan(dest...); err != nil {
		return o, fmt.Errorf("checking role %q and database %q: %w", role, inst.DBName, err)
	}
	return o, nil
}

// authenticate checks password as the tenant's, as postgraas_server did by
// logging in: the meta DB does not store passwords.
//
// When the admin could read the role's SCRAM verifier (secret), the
// password is checked against it locally, exactly as the server checks a
// login, so destroying an instance opens no connection of its own. Without
// one (a non-superuser admin, an md5 secret, a role that may not log in
// now), it logs in. PostgreSQL authenticates before it looks up the
// database or checks CONNECT, so "database does not exist" or "permission
// denied for database" can only come after the password was accepted; a
// retried delete whose database is already gone still authenticates.
func (b *Backend) authenticate(ctx context.Context, role, db string, auth backend.Auth, o ownership, secret *string) error {
	if !o.loginOK {
		// Reported as what it is: no password would get in.
		return &backend.LoginDisabledError{Role: role, Reason: "NOLOGIN, or its VALID UNTIL has passed"}
	}
	if secret != nil {
		if auth.Password == "" {
			// Write-only mode: the verifier this provider stored last
			// must still be the one the server holds.
			if auth.Verifier == "" || *secret != auth.Verifier {
				return backend.ErrWrongPassword
			}
			return nil
		}
		ok, err := pgsql.ScramMatches(*secret, auth.Password)
		if err == nil {
			if !ok {
				return backend.ErrWrongPassword
			}
			return nil
		}
	}
	if auth.Password == "" {
		return backend.ErrCannotVerify
	}
	t := b.admin
	t.Database = db
	t.User = StoredUsername(role, b.server)
	t.Password = auth.Password
	t.Component = reach.Instance
	select {
	case b.logins <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting to log in as %q to authenticate the delete: %w", t.User, context.Cause(ctx))
	}
	defer func() { <-b.logins }()
	conn, err := t.Connect(ctx)
	switch {
	case err == nil:
		// Gone before the drop, where it would count as a session: DROP
		// DATABASE would wait for it in 100 ms steps.
		pgsql.CloseAndWait(ctx, conn, authCloseWait)
		return nil
	case pgsql.IsAuthFailure(err):
		return backend.ErrWrongPassword
	case pgsql.Code(err) == pgsql.CodeInvalidCatalogName, pgsql.Code(err) == pgsql.CodeInsufficientPrivilege:
		return nil
	default:
		return fmt.Errorf("logging in as %q to authenticate: %w", t.User, err)
	}
}

// authCloseWait bounds the wait for the authenticating session to end.
const authCloseWait = 2 * time.Second

// codeDependentObjects is dependent_objects_still_exist.
const codeDependentObjects = "2BP01"

// dropAttempts bounds the drops tried while no client session is connected.
const dropAttempts = 4

// dropDatabase drops db. Without force it refuses when other sessions are
// connected; with force it ends them first.
//
// Sessions are not counted beforehand: one that has just been closed (the
// authenticating login, a client that disconnected before the retry) stays
// visible in pg_stat_activity until its process exits, while DROP DATABASE
// waits up to 5 s for that. So the count is only taken when the drop says
// the database is in use.
//
// force does not use DROP DATABASE ... WITH (FORCE): for a non-superuser it
// fails (42501 "must be a member of the role whose process is being
// terminated") whenever an autovacuum worker, which has no role, happens to
// be in the database, as seen on PostgreSQL 15. A plain DROP DATABASE stops
// autovacuum by itself, so only client sessions are ended here.
func dropDatabase(ctx context.Context, conn *pgx.Conn, db string, force bool) error {
	for attempt := 1; ; attempt++ {
		if force {
			_, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()`, db)
			if err != nil {
				return fmt.Errorf("ending sessions on database %q: %w", db, err)
			}
		}
		_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(db))
		if err == nil {
			return nil
		}
		if pgsql.Code(err) != pgsql.CodeObjectInUse {
			return fmt.Errorf("dropping database %q: %w", db, err)
		}
		if force {
			if attempt < 3 {
				continue // someone connected between the two statements
			}
			return fmt.Errorf("dropping database %q: %w", db, err)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = $1 AND backend_type = 'client backend'`, db).Scan(&n); err != nil {
			return fmt.Errorf("counting sessions on database %q: %w", db, err)
		}
		if n > 0 || attempt >= dropAttempts {
			return &backend.SessionsError{DBName: db, Count: max(n, 1)}
		}
		// No client session: what held the database was an autovacuum
		// worker or a backend still exiting, which on a loaded server can
		// outlast the drop's own 5 s wait. Try again.
	}
}

// dropRole drops role, whose proof the caller has just checked.
func (b *Backend) dropRole(ctx context.Context, conn *pgx.Conn, role string) error {
	r := pgsql.QuoteIdent(role)
	_, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+r)
	if pgsql.Code(err) == codeDependentObjects {
		// The role still owns objects or holds privileges outside its
		// database (a table in the maintenance database on PG <= 14, a
		// GRANT from another tenant). DROP OWNED removes those in the
		// current database and on shared objects; both run in one
		// transaction so a failure changes nothing.
		_, err = conn.Exec(ctx, "DROP OWNED BY "+r+"; DROP ROLE "+r)
		if pgsql.Code(err) == codeDependentObjects && conn.Config().Database != b.admin.Database {
			// A pool shared with the meta DB is connected to the meta
			// DB's database: the maintenance database is another one.
			err = b.dropOwnedInMaintenanceDB(ctx, r)
		}
		if pgsql.Code(err) == pgsql.CodeUndefinedObject {
			return nil // dropped concurrently
		}
	}
	if err != nil {
		return fmt.Errorf("dropping role %q: %w", role, err)
	}
	return nil
}

// dropOwnedInMaintenanceDB runs DROP OWNED and DROP ROLE for the quoted
// role r on a connection of its own to the maintenance database.
func (b *Backend) dropOwnedInMaintenanceDB(ctx context.Context, r string) error {
	conn, err := b.admin.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "DROP OWNED BY "+r+"; DROP ROLE "+r)
	return err
}
