package selfhosted

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Temporary logins inside an instance's own server: the SQL runs as psql
// inside, as the instance's user (the server's superuser), with the SCRAM
// verifier of the new password on stdin. The password itself never leaves
// the provider.

// expiresTag starts the line of psql output that carries the login's
// expiry.
const expiresTag = "postgraas-expires-at "

// expiresSQL selects the expiry (a timestamptz SQL expression) as a tagged
// line in UTC, to the microsecond.
func expiresSQL(expr string) string {
	return `SELECT '` + expiresTag + `' || to_char((` + expr + `) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`
}

const expiresLayout = "2006-01-02T15:04:05.000000Z"

// tempRoleFrom is the FROM and WHERE of the instance's temporary login
// roles as t, with literal values; more narrows them down further.
func tempRoleFrom(inst backend.Instance, more string) string {
	return ` FROM pg_roles t, (SELECT ` + pgsql.QuoteLiteral(backend.TempLoginMarker(inst.Proof)) + `::text AS tm, ` +
		pgsql.QuoteLiteral(pgsql.TempRolePrefix(inst.Username)) + `::text AS tp) u
WHERE ` + pgsql.TempRolesWhere("t", "u.tm", "u.tp") + more
}

// dropTempRolesScript ends the sessions of the instance's temporary login
// roles that match more, gives what they own in this database to the
// instance's user, and drops them. \gexec runs every generated statement
// on its own, so one that fails (a role that still owns something in
// another database) does not keep the others from going.
func dropTempRolesScript(inst backend.Instance, more string) string {
	return `SELECT format('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %L AND pid <> pg_backend_pid()', t.rolname),
       format('REASSIGN OWNED BY %I TO %I', t.rolname, ` + pgsql.QuoteLiteral(inst.Username) + `),
       format('DROP OWNED BY %I', t.rolname),
       format('DROP ROLE %I', t.rolname)` + tempRoleFrom(inst, more) + `
\gexec
`
}

// OpenTempLogin makes a temporary login role of inst through psql, after
// sweeping its expired ones. The caller has proven inst's objects and
// fills in where the login connects.
func OpenTempLogin(ctx context.Context, psql Psql, inst backend.Instance, ttl time.Duration) (backend.TempLogin, error) {
	if inst.Proof.Legacy() {
		return backend.TempLogin{}, backend.ErrLegacy
	}
	if ttl <= 0 {
		return backend.TempLogin{}, fmt.Errorf("the ttl must be positive")
	}
	role := pgsql.NewTempRoleName(inst.Username)
	password := pgsql.NewTempPassword()
	verifier, err := pgsql.ScramVerifier(password)
	if err != nil {
		return backend.TempLogin{}, err
	}
	r, owner := pgsql.QuoteIdent(role), pgsql.QuoteIdent(inst.Username)
	// The sweep of expired logins is best effort (ON_ERROR_STOP off): they
	// cannot log in any more, and the next open tries again. The create is
	// one transaction, timed by the server's clock. PostgreSQL 16 grants
	// follow explicit options, as in the pg_cluster backend.
	script := `\set ON_ERROR_STOP 0
` + dropTempRolesScript(inst, ` AND t.rolvaliduntil < now()`) + `\set ON_ERROR_STOP 1
SELECT now() + make_interval(secs => ` + strconv.FormatFloat(ttl.Seconds(), 'f', -1, 64) + `) AS postgraas_until,
       CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'WITH INHERIT TRUE, SET TRUE' ELSE '' END AS postgraas_grant_options
\gset
BEGIN;
CREATE ROLE ` + r + ` ` + pgsql.TempRoleOptions + ` PASSWORD ` + pgsql.QuoteLiteral(verifier) + ` VALID UNTIL :'postgraas_until';
COMMENT ON ROLE ` + r + ` IS ` + pgsql.QuoteLiteral(backend.TempLoginMarker(inst.Proof)) + `;
GRANT ` + owner + ` TO ` + r + ` :postgraas_grant_options;
ALTER ROLE ` + r + ` SET role = ` + pgsql.QuoteLiteral(inst.Username) + `;
COMMIT;
` + expiresSQL(`:'postgraas_until'::timestamptz`) + `;
\q
`
	out, err := psql(ctx, script, password, verifier)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("creating temporary login role %q: %w", role, err)
	}
	until, ok := parseExpires(out)
	if !ok {
		return backend.TempLogin{}, fmt.Errorf("creating temporary login role %q: psql did not report its expiry", role)
	}
	return backend.TempLogin{Role: role, Username: role, Password: password, DBName: inst.DBName, ExpiresAt: until}, nil
}

// RenewTempLogin moves the expiry of inst's temporary login role to ttl
// from now, through psql.
func RenewTempLogin(ctx context.Context, psql Psql, inst backend.Instance, role string, ttl time.Duration) (time.Time, error) {
	which := tempRoleFrom(inst, ` AND t.rolname = `+pgsql.QuoteLiteral(role))
	script := `\set ON_ERROR_STOP 1
SELECT format('ALTER ROLE %I VALID UNTIL %L', t.rolname, now() + make_interval(secs => ` +
		strconv.FormatFloat(ttl.Seconds(), 'f', -1, 64) + `))` + which + `
\gexec
` + expiresSQL(`t.rolvaliduntil`) + which + `;
\q
`
	out, err := psql(ctx, script)
	if err != nil {
		return time.Time{}, err
	}
	until, ok := parseExpires(out)
	if !ok {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	return until, nil
}

// CloseTempLogin ends the sessions of inst's temporary login role and
// drops it, through psql.
func CloseTempLogin(ctx context.Context, psql Psql, inst backend.Instance, role string) error {
	_, err := psql(ctx, `\set ON_ERROR_STOP 1
`+dropTempRolesScript(inst, ` AND t.rolname = `+pgsql.QuoteLiteral(role))+`\q
`)
	return err
}

// parseExpires finds the tagged expiry line in psql's output.
func parseExpires(out string) (time.Time, bool) {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, expiresTag); ok {
			t, err := time.Parse(expiresLayout, strings.TrimSpace(v))
			return t, err == nil
		}
	}
	return time.Time{}, false
}
