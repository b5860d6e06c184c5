package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// tempRoles selects, for the values u.tm (marker) and u.tp (name prefix),
// the names of the instance's temporary login roles.
var tempRolesSQL = `SELECT t.rolname FROM pg_roles t WHERE ` + pgsql.TempRolesWhere("t", "u.tm", "u.tp")

// openCheckSQL is, in one round trip: the ownership of the instance's
// role and database (ownershipSQL), whether the admin is a superuser, the
// cluster's clock plus the ttl (VALID UNTIL goes by the server's clock),
// and the instance's temporary logins that have expired.
var openCheckSQL = `SELECT f.role_exists, f.role_proven, f.db_exists, f.db_owned,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       now() + make_interval(secs => $6),
       ARRAY(` + tempRolesSQL + ` AND t.rolvaliduntil < now())
FROM (SELECT $1::text AS r, $2::text AS d, $3::text AS m, $4::text AS tm, $5::text AS tp) u,
     LATERAL (` + ownershipSQL + `) f`

// tempParams are the instance's owner role, its temporary logins' marker
// and their name prefix.
func (b *Backend) tempParams(inst backend.Instance) (owner, marker, prefix string, err error) {
	if inst.Proof.Legacy() {
		return "", "", "", backend.ErrLegacy
	}
	owner, err = RoleName(inst.Username, b.server)
	if err != nil {
		return "", "", "", err
	}
	return owner, backend.TempLoginMarker(inst.Proof), pgsql.TempRolePrefix(owner), nil
}

// OpenTempLogin implements backend.Backend: a role that is a member of
// the instance's role (INHERIT, so it has the CONNECT the owner has on the
// database) and starts its sessions as that role.
func (b *Backend) OpenTempLogin(ctx context.Context, inst backend.Instance, ttl time.Duration) (backend.TempLogin, error) {
	owner, marker, prefix, err := b.tempParams(inst)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login: %w", err)
	}
	if ttl <= 0 {
		return backend.TempLogin{}, errors.New("opening a temporary login: the ttl must be positive")
	}
	password := pgsql.NewTempPassword()
	verifier, err := pgsql.ScramVerifier(password)
	if err != nil {
		return backend.TempLogin{}, err
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return backend.TempLogin{}, err
	}
	defer conn.Release()

	var o ownership
	var super bool
	var until time.Time
	var expired []string
	err = conn.QueryRow(ctx, openCheckSQL, owner, inst.DBName, markerOf(inst.Proof), marker, prefix, ttl.Seconds()).
		Scan(&o.roleExists, &o.roleProven, &o.dbExists, &o.dbOwned, &super, &until, &expired)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("checking role %q and database %q: %w", owner, inst.DBName, err)
	}
	if !o.oursDB() {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login: %w", &NotOursError{Role: owner, DB: inst.DBName, o: o})
	}
	// Expired logins of runs that died: best effort, they cannot log in
	// any more, and the next open tries again.
	for _, role := range expired {
		_ = b.dropTempRole(ctx, conn.Conn(), inst, owner, role, marker, prefix)
	}

	role := pgsql.NewTempRoleName(owner)
	r, o16 := pgsql.QuoteIdent(role), ""
	major := serverMajor(conn.Conn().PgConn().ParameterStatus("server_version"))
	if major >= 16 {
		// See create.go: PG 16 grants follow explicit options, not the
		// member's INHERIT attribute alone.
		o16 = " WITH INHERIT TRUE, SET TRUE"
	}
	// One implicit transaction: the role never exists without its marker,
	// its membership or its default role.
	stmt := "CREATE ROLE " + r + " " + pgsql.TempRoleOptions +
		" PASSWORD " + pgsql.QuoteLiteral(verifier) +
		" VALID UNTIL " + pgsql.QuoteLiteral(until.UTC().Format(validUntilLayout)) +
		"; COMMENT ON ROLE " + r + " IS " + pgsql.QuoteLiteral(marker) +
		"; GRANT " + pgsql.QuoteIdent(owner) + " TO " + r + o16 +
		"; ALTER ROLE " + r + " SET role = " + pgsql.QuoteLiteral(owner)
	if !super {
		// A non-superuser admin ends the login's sessions and, should it
		// own something in the tenant's database, reassigns that to the
		// owner at close: both need the login's privileges.
		stmt += "; GRANT " + r + " TO CURRENT_USER" + o16
	}
	if _, err := conn.Exec(ctx, stmt); err != nil {
		// Whatever happened, a role made here cannot log in past until,
		// and the next open removes it after that.
		return backend.TempLogin{}, fmt.Errorf("creating temporary login role %q: %w", role, err)
	}
	host, port := inst.Host, inst.Port
	if host == "" {
		host, port = b.admin.Host, b.admin.Port
	}
	return backend.TempLogin{
		Role:      role,
		Username:  StoredUsername(role, b.server),
		Password:  password,
		Host:      host,
		Port:      port,
		DBName:    inst.DBName,
		ExpiresAt: until,
	}, nil
}

// validUntilLayout writes a VALID UNTIL time: ISO 8601 in UTC, to the
// microsecond the server keeps.
const validUntilLayout = "2006-01-02T15:04:05.999999Z07:00"

// provenTempRole reports whether role is a temporary login of the
// instance: spelled like one and carrying the marker.
func provenTempRole(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, role, owner, marker, prefix string) (bool, error) {
	if !pgsql.IsTempRoleOf(owner, role) {
		return false, nil
	}
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM (SELECT $2::text AS tm, $3::text AS tp) u, pg_roles t
WHERE t.rolname = $1 AND `+pgsql.TempRolesWhere("t", "u.tm", "u.tp")+`)`, role, marker, prefix).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("checking temporary login role %q: %w", role, err)
	}
	return ok, nil
}

// RenewTempLogin implements backend.Backend.
func (b *Backend) RenewTempLogin(ctx context.Context, inst backend.Instance, role string, ttl time.Duration) (time.Time, error) {
	owner, marker, prefix, err := b.tempParams(inst)
	if err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q: %w", role, err)
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Release()
	ok, err := provenTempRole(ctx, conn, role, owner, marker, prefix)
	if err != nil {
		return time.Time{}, err
	}
	if !ok {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	var until time.Time
	if err := conn.QueryRow(ctx, "SELECT now() + make_interval(secs => $1)", ttl.Seconds()).Scan(&until); err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q: %w", role, err)
	}
	_, err = conn.Exec(ctx, "ALTER ROLE "+pgsql.QuoteIdent(role)+" VALID UNTIL "+pgsql.QuoteLiteral(until.UTC().Format(validUntilLayout)))
	if pgsql.Code(err) == pgsql.CodeUndefinedObject {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q: %w", role, err)
	}
	return until, nil
}

// CloseTempLogin implements backend.Backend.
func (b *Backend) CloseTempLogin(ctx context.Context, inst backend.Instance, role string) error {
	owner, marker, prefix, err := b.tempParams(inst)
	if err != nil {
		return fmt.Errorf("closing temporary login %q: %w", role, err)
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	return b.dropTempRole(ctx, conn.Conn(), inst, owner, role, marker, prefix)
}

// dropTempRoles removes the instance's temporary logins, as listed by
// deleteCheck, before the instance's own role goes (which would leave them
// behind as roles of nobody's). Each is proven again right before its drop.
func (b *Backend) dropTempRoles(ctx context.Context, conn *pgx.Conn, inst backend.Instance, roles []string) error {
	if len(roles) == 0 {
		return nil
	}
	owner, marker, prefix, err := b.tempParams(inst)
	if errors.Is(err, backend.ErrLegacy) {
		return nil // never given any
	}
	if err != nil {
		return err
	}
	for _, role := range roles {
		if err := b.dropTempRole(ctx, conn, inst, owner, role, marker, prefix); err != nil {
			return err
		}
	}
	return nil
}

// dropTempRole ends the sessions of a temporary login and drops it, once
// proven to be one of the instance's. A role that owns objects (a session
// that left its default role, RESET ROLE, and created something) or holds
// privileges in the tenant's database gives those to the owner first.
func (b *Backend) dropTempRole(ctx context.Context, conn *pgx.Conn, inst backend.Instance, owner, role, marker, prefix string) error {
	ok, err := provenTempRole(ctx, conn, role, owner, marker, prefix)
	if err != nil || !ok {
		return err // gone, or not ours to drop
	}
	// The login's own sessions: proven by its name and comment above.
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE usename = $1 AND pid <> pg_backend_pid()`, role); err != nil {
		return fmt.Errorf("ending the sessions of temporary login %q: %w", role, err)
	}
	r := pgsql.QuoteIdent(role)
	_, err = conn.Exec(ctx, "DROP ROLE IF EXISTS "+r)
	if pgsql.Code(err) == codeDependentObjects {
		// A database already dropped (a delete) took its objects along.
		if err := b.disown(ctx, inst.DBName, role, owner); err != nil && pgsql.Code(err) != pgsql.CodeInvalidCatalogName {
			return err
		}
		return b.dropRole(ctx, conn, role)
	}
	if err != nil {
		return fmt.Errorf("dropping temporary login %q: %w", role, err)
	}
	return nil
}

// disown gives what role owns in the instance's database to owner and
// drops its privileges there, on a connection to that database.
func (b *Backend) disown(ctx context.Context, db, role, owner string) error {
	t := b.admin
	t.Database = db
	conn, err := t.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connecting to database %q to reassign what temporary login %q owns: %w", db, role, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r := pgsql.QuoteIdent(role)
	if _, err := conn.Exec(ctx, "REASSIGN OWNED BY "+r+" TO "+pgsql.QuoteIdent(owner)+"; DROP OWNED BY "+r); err != nil {
		return fmt.Errorf("reassigning what temporary login %q owns in database %q to %q: %w", role, db, owner, err)
	}
	return nil
}
