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

// TakesTemplate implements backend.Cloner: an instance can start as a
// copy of another instance's database (CREATE DATABASE ... TEMPLATE).
func (b *Backend) TakesTemplate() {}

var _ backend.Cloner = (*Backend)(nil)

// template is what a clone copies: the template instance's role, database
// and the marker its role must carry, and the database's oid as proven
// right before the copy.
type template struct {
	inst   backend.Instance
	role   string
	marker string
	oid    uint32
	wait   time.Duration
}

func newTemplate(inst backend.Instance, wait time.Duration, server string) (*template, error) {
	if inst.Proof.Legacy() {
		return nil, &backend.SpecError{Attribute: "template_instance", Err: fmt.Errorf("template instance %q (id %d): %w", inst.Name, inst.ID, backend.ErrLegacy)}
	}
	role, err := RoleName(inst.Username, server)
	if err != nil {
		return nil, err
	}
	return &template{inst: inst, role: role, marker: marker(inst.Proof), wait: wait}, nil
}

// proveTemplateSQL is ownershipSQL for the template plus its database's oid.
var proveTemplateSQL = `SELECT f.role_exists, f.role_proven, f.db_exists, f.db_owned, f.login_ok,
       COALESCE((SELECT oid FROM pg_database WHERE datname = u.d), 0)
FROM (SELECT $1::text AS r, $2::text AS d, $3::text AS m) u, LATERAL (` + ownershipSQL + `) f`

// prove checks that the template's database is the template instance's
// own (owned by the role that carries its row's proof) and returns its oid.
func (t *template) prove(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (uint32, error) {
	var o ownership
	var oid uint32
	if err := q.QueryRow(ctx, proveTemplateSQL, t.role, t.inst.DBName, t.marker).
		Scan(&o.roleExists, &o.roleProven, &o.dbExists, &o.dbOwned, &o.loginOK, &oid); err != nil {
		return 0, fmt.Errorf("checking template instance %q: %w", t.inst.Name, err)
	}
	if !o.oursDB() {
		return 0, &backend.SpecError{Attribute: "template_instance", Err: fmt.Errorf("template instance %q (id %d): %w; nothing was copied",
			t.inst.Name, t.inst.ID, &NotOursError{Role: t.role, DB: t.inst.DBName, o: o})}
	}
	return oid, nil
}

// copyTemplate makes c.db as a copy of the template's database, born
// closed to connections and owned by c.role, proving the template right
// before each try. While other sessions are connected to the template the
// server refuses the copy (after waiting 5 s itself); it is tried again
// until the template's wait has passed.
func (b *Backend) copyTemplate(ctx context.Context, conn *pgx.Conn, c *creation) error {
	t := c.tmpl
	start := time.Now()
	stmt := "CREATE DATABASE " + pgsql.QuoteIdent(c.db) + " OWNER " + pgsql.QuoteIdent(c.role) +
		" TEMPLATE " + pgsql.QuoteIdent(t.inst.DBName) + " ALLOW_CONNECTIONS false"
	for {
		oid, err := t.prove(ctx, conn)
		if err != nil {
			return err
		}
		t.oid = oid
		_, err = conn.Exec(ctx, stmt)
		if c.dbDone = outcomeOf(err); err == nil {
			return nil
		}
		switch pgsql.Code(err) {
		case pgsql.CodeDuplicateDatabase, pgsql.CodeUniqueViolation:
			return dbConflict(c.db)
		case pgsql.CodeObjectInUse:
			if time.Since(start) < t.wait && ctx.Err() == nil {
				continue // the server itself waited 5 s before refusing
			}
			var n int
			if cerr := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = $1 AND backend_type = 'client backend'`, t.inst.DBName).Scan(&n); cerr != nil {
				return fmt.Errorf("creating database %q as a copy of %q: %w", c.db, t.inst.DBName, err)
			}
			return &backend.TemplateBusyError{Name: t.inst.Name, ID: t.inst.ID, DBName: t.inst.DBName,
				Count: max(n, 1), Waited: time.Since(start).Round(time.Second)}
		}
		return fmt.Errorf("creating database %q as a copy of %q: %w", c.db, t.inst.DBName, err)
	}
}

// adoptCopyLocked runs adoptCopy under a session advisory lock on conn
// keyed by the template's database: two clones of one template adopting at
// once would both rewrite the template's pg_database row (see adoptCopy),
// and the second would fail with "tuple concurrently updated". Advisory
// locks are per database, so the lock is taken on the create's connection
// (the maintenance database, the same for every clone made with these
// settings), not on the connections to the copies.
func (b *Backend) adoptCopyLocked(ctx context.Context, conn *pgx.Conn, c *creation) error {
	key := fmt.Sprintf("postgraas template %d", c.tmpl.oid)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", key); err != nil {
		return fmt.Errorf("waiting for other clones of template instance %q: %w", c.tmpl.inst.Name, err)
	}
	err := b.adoptCopy(ctx, c)
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock(hashtext($1))", key); uerr != nil {
		// The lock ends with the session at the latest; the pool must not
		// hand out a connection that still holds it.
		conn.Close(context.WithoutCancel(ctx))
	}
	return err
}

// adoptCopy makes the copy the new instance's alone, in one transaction on
// a connection to the copy: what the template's role owns in it goes to the
// new role (REASSIGN OWNED), and its privileges and default privileges
// there are revoked (DROP OWNED), so the template's tenant keeps nothing in
// the copy. Both commands also act on shared objects: REASSIGN OWNED would
// hand the template's own database to the new role. So the template must be
// proven again (the same database that was copied), may hold nothing
// shared but its databases, and gets those back in the same transaction;
// nobody ever sees them change hands.
func (b *Backend) adoptCopy(ctx context.Context, c *creation) error {
	t := c.tmpl
	target := b.admin
	target.Database = c.db
	conn, err := target.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connecting to the copy %q: %w", c.db, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		oid, err := t.prove(ctx, tx)
		if err != nil {
			return err
		}
		if oid != t.oid {
			return fmt.Errorf("template instance %q: database %q was replaced while it was copied; the copy is removed", t.inst.Name, t.inst.DBName)
		}
		// The database this connection reached by name must be the copy
		// this create made: owned by the new role, which carries the new
		// row's proof.
		var copyProven bool
		if err := tx.QueryRow(ctx, `SELECT f.role_proven AND f.db_owned AND u.d = current_database()
FROM (SELECT $1::text AS r, $2::text AS d, $3::text AS m) u, LATERAL (`+ownershipSQL+`) f`,
			c.role, c.db, c.marker).Scan(&copyProven); err != nil {
			return fmt.Errorf("proving the copy %q: %w", c.db, err)
		}
		if !copyProven {
			return fmt.Errorf("database %q is not the copy this create made (not owned by role %q with this instance's proof): %w",
				c.db, c.role, backend.ErrNotOurs)
		}
		var shared int
		var owned []string
		if err := tx.QueryRow(ctx, `
SELECT (SELECT count(*) FROM pg_shdepend s WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid
          AND s.dbid = 0 AND NOT (s.classid = 'pg_database'::regclass AND s.deptype = 'o')),
       ARRAY(SELECT datname FROM pg_database WHERE datdba = r.oid ORDER BY datname)
FROM pg_roles r WHERE r.rolname = $1`, t.role).Scan(&shared, &owned); err != nil {
			return fmt.Errorf("checking what role %q holds: %w", t.role, err)
		}
		if shared > 0 {
			return fmt.Errorf("template instance %q: its role %q holds %d privilege(s) or object(s) outside its database "+
				"(granted by an admin), which moving ownership in the copy would change; nothing was copied", t.inst.Name, t.role, shared)
		}
		tr, nr := pgsql.QuoteIdent(t.role), pgsql.QuoteIdent(c.role)
		stmt := "REASSIGN OWNED BY " + tr + " TO " + nr + "; DROP OWNED BY " + tr
		for _, db := range owned {
			stmt += "; ALTER DATABASE " + pgsql.QuoteIdent(db) + " OWNER TO " + tr
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("moving what role %q owns in the copy %q to role %q: %w", t.role, c.db, c.role, err)
		}
		var left int
		var still bool
		if err := tx.QueryRow(ctx, `
SELECT (SELECT count(*) FROM pg_shdepend s, pg_roles r WHERE r.rolname = $1 AND s.refclassid = 'pg_authid'::regclass
          AND s.refobjid = r.oid AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())),
       EXISTS (SELECT 1 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.oid = $2 AND r.rolname = $1)`,
			t.role, t.oid).Scan(&left, &still); err != nil {
			return fmt.Errorf("checking the copy %q: %w", c.db, err)
		}
		if left > 0 || !still {
			return errors.New("moving ownership in the copy left the template's role with objects in it, or its database without it")
		}
		return nil
	})
}
