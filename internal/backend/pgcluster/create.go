package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/faultinject"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// cleanupTimeout bounds the undo of a failed create, which runs even when
// the caller's context is already cancelled.
const cleanupTimeout = 30 * time.Second

// outcome is what a create statement did on the server.
type outcome int

const (
	notMade outcome = iota
	made
	// unknown: the connection broke after the statement was sent (usually a
	// cancelled context). pgx then closes the socket without cancelling the
	// query, so the server has most likely finished it.
	unknown
)

func outcomeOf(err error) outcome {
	switch {
	case err == nil:
		return made
	case pgsql.Code(err) != "", pgconn.SafeToRetry(err):
		// The server refused it (and rolled it back), or it never left.
		return notMade
	default:
		return unknown
	}
}

// creation records what one Create call made, so that a failure undoes
// exactly that.
type creation struct {
	role, db string
	// marker is stored as the role's comment, in the same transaction as
	// CREATE ROLE, to recognise our role when the outcome is unknown.
	marker string
	// pid is the server process of the create's connection.
	pid uint32
	ssl string // the server's ssl setting
	// tmpl, when set, is the instance whose database is copied.
	tmpl     *template
	roleDone outcome
	dbDone   outcome
}

// Create implements backend.Backend.
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Created, error) {
	role, err := RoleName(spec.Username, b.server)
	if err != nil {
		return backend.Created{}, err
	}
	if err := checkName("database name", spec.DBName); err != nil {
		return backend.Created{}, err
	}
	if spec.Password == "" {
		// Clients refuse to send an empty password: nobody could log in.
		return backend.Created{}, errors.New("password must not be empty")
	}
	verifier := spec.Verifier
	if verifier == "" {
		var err error
		if verifier, err = pgsql.ScramVerifier(spec.Password); err != nil {
			return backend.Created{}, err
		}
	}
	if spec.Proof.Legacy() {
		return backend.Created{}, errors.New("a create needs an ownership proof")
	}
	c := &creation{role: role, db: spec.DBName, marker: marker(spec.Proof)}
	if spec.Template != nil {
		if c.tmpl, err = newTemplate(*spec.Template, spec.TemplateWait, b.server); err != nil {
			return backend.Created{}, err
		}
	}

	conn, err := b.acquire(ctx)
	if err != nil {
		return backend.Created{}, err
	}
	c.pid = conn.Conn().PgConn().PID()
	err = b.create(ctx, conn.Conn(), c, verifier)
	conn.Release()
	if err != nil {
		if uerr := b.undo(ctx, c); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return backend.Created{}, err
	}
	return backend.Created{
		Host:     b.admin.Host,
		Port:     b.admin.Port,
		Username: StoredUsername(role, b.server),
		SSLMode:  backend.SSLModeFor(c.ssl),
	}, nil
}

func (b *Backend) create(ctx context.Context, conn *pgx.Conn, c *creation, verifier string) error {
	var roleExists, dbExists, super, inherit bool
	err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
       EXISTS (SELECT 1 FROM pg_database WHERE datname = $2),
       rolsuper, rolinherit, current_setting('ssl')
FROM pg_roles WHERE rolname = current_user`, c.role, c.db).Scan(&roleExists, &dbExists, &super, &inherit, &c.ssl)
	if err != nil {
		return fmt.Errorf("checking for role %q and database %q: %w", c.role, c.db, err)
	}
	if roleExists {
		return roleConflict(c.role)
	}
	if dbExists {
		return dbConflict(c.db)
	}

	// A non-superuser admin (CREATEDB CREATEROLE) must be a member of the
	// new role: CREATE DATABASE ... OWNER needs membership (PG <= 15) or the
	// SET option (PG 16+), and dropping the database, revoking PUBLIC's
	// access "as the owner" and terminating the tenant's sessions on a
	// forced delete need the role's privileges, i.e. INHERIT.
	//
	// PG 16 gives the creator of a role only ADMIN OPTION (INHERIT and SET
	// follow createrole_self_grant, empty by default). ADMIN OPTION is
	// enough to grant the role to oneself, so the GRANT spells out
	// INHERIT TRUE, SET TRUE rather than depend on that setting or on the
	// admin's own INHERIT attribute (the default for a GRANT in 16).
	// PG <= 15 has no WITH INHERIT/SET: membership confers the privileges
	// only when the admin role itself has INHERIT. Without it REVOKE would
	// merely warn "no privileges could be revoked" and leave the database
	// open to every tenant, so such an admin is refused up front.
	major := serverMajor(conn.PgConn().ParameterStatus("server_version"))
	if !super && !inherit && major < 16 {
		return fmt.Errorf("admin role %s is NOINHERIT: on PostgreSQL %d it cannot act as owner of the databases it creates; use an INHERIT role", conn.Config().User, major)
	}

	r := pgsql.QuoteIdent(c.role)
	// One implicit transaction: the role never exists without its marker
	// or, for a non-superuser admin, without the admin's membership.
	stmt := "CREATE ROLE " + r + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS" +
		" PASSWORD " + pgsql.QuoteLiteral(verifier) +
		"; COMMENT ON ROLE " + r + " IS " + pgsql.QuoteLiteral(c.marker)
	if !super {
		stmt += "; GRANT " + r + " TO CURRENT_USER"
		if major >= 16 {
			stmt += " WITH INHERIT TRUE, SET TRUE"
		}
	}
	_, err = conn.Exec(ctx, stmt)
	if c.roleDone = outcomeOf(err); err != nil {
		// Created concurrently by someone else (42710, or 23505 on
		// pg_authid's name index when both inserts race): not ours to drop.
		if code := pgsql.Code(err); code == pgsql.CodeDuplicateObject || code == pgsql.CodeUniqueViolation {
			return roleConflict(c.role)
		}
		return fmt.Errorf("creating role %q: %w", c.role, err)
	}
	faultinject.Pause(ctx, "pgcluster.role_created")

	// CREATE DATABASE cannot run in a transaction block, so it gets a
	// round trip of its own. The database is born closed to connections:
	// until PUBLIC's rights are revoked below, any tenant could otherwise
	// connect to it, and a create killed in between would leave it so.
	d := pgsql.QuoteIdent(c.db)
	if c.tmpl != nil {
		if err := b.copyTemplate(ctx, conn, c); err != nil {
			return err
		}
	} else {
		_, err = conn.Exec(ctx, "CREATE DATABASE "+d+" OWNER "+r+" ALLOW_CONNECTIONS false")
		if c.dbDone = outcomeOf(err); err != nil {
			if code := pgsql.Code(err); code == pgsql.CodeDuplicateDatabase || code == pgsql.CodeUniqueViolation {
				return dbConflict(c.db)
			}
			return fmt.Errorf("creating database %q: %w", c.db, err)
		}
	}
	faultinject.Pause(ctx, "pgcluster.database_created")

	// By default PUBLIC may connect to (and create temporary tables in)
	// every database: without this, any tenant could connect to any other
	// tenant's database (postgraas_server issue #20). The owner keeps its
	// own rights. One implicit transaction: connections are allowed only
	// together with the revoke.
	if _, err := conn.Exec(ctx, "REVOKE ALL ON DATABASE "+d+" FROM PUBLIC; ALTER DATABASE "+d+" ALLOW_CONNECTIONS true"); err != nil {
		return fmt.Errorf("opening database %q to its owner only: %w", c.db, err)
	}
	if c.tmpl != nil {
		// Open to its owner only (and admins), so the template's tenant
		// cannot connect while what it owns in the copy is moved.
		return b.adoptCopyLocked(ctx, conn, c)
	}
	return nil
}

func roleConflict(role string) error {
	return &backend.ConflictError{Kind: "role", Name: role, Attribute: "db_username"}
}

func dbConflict(db string) error {
	return &backend.ConflictError{Kind: "database", Name: db, Attribute: "db_name"}
}

// undo drops what c made, database first, on a fresh connection and
// context: the create may have failed because its context was cancelled,
// which also closes the connection it was using.
func (b *Backend) undo(ctx context.Context, c *creation) error {
	if c.roleDone == notMade {
		// The database is created only after the role, and owned by it.
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	conn, err := b.acquire(ctx)
	if err != nil {
		return fmt.Errorf("cleaning up after failed create: %w", err)
	}
	defer conn.Release()

	if c.roleDone == unknown || c.dbDone == unknown {
		if err := settle(ctx, conn.Conn(), c.pid); err != nil {
			return fmt.Errorf("cleaning up after failed create: %w", err)
		}
		var ours, dbOurs bool
		err := conn.QueryRow(ctx, `
SELECT COALESCE((`+pgsql.RoleCommentSQL("r.oid")+`) = $3, false),
       EXISTS (SELECT 1 FROM pg_database WHERE datname = $2 AND datdba = r.oid)
FROM pg_roles r WHERE r.rolname = $1`, c.role, c.db, c.marker).Scan(&ours, &dbOurs)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // the role was never made, so neither was the database
		}
		if err != nil {
			return fmt.Errorf("cleaning up after failed create: checking role %q: %w", c.role, err)
		}
		if !ours {
			return nil // someone else's role; a database it owns is theirs too
		}
		c.roleDone = made
		if c.dbDone == unknown && dbOurs {
			// Owned by the role this call made: nobody else created it.
			c.dbDone = made
		}
	}

	if c.dbDone == made {
		if err := dropDatabase(ctx, conn.Conn(), c.db, true); err != nil {
			return fmt.Errorf("cleaning up after failed create: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(c.role)); err != nil {
		return fmt.Errorf("cleaning up after failed create: dropping role %q: %w", c.role, err)
	}
	return nil
}

// settle ends the server process of a broken connection and waits until it
// is gone. Until then it may still be running (e.g. blocked on a lock) the
// statement whose outcome is unknown, and whatever we found could change.
func settle(ctx context.Context, conn *pgx.Conn, pid uint32) error {
	// An admin may always signal its own sessions.
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pid)); err != nil {
		return fmt.Errorf("ending server process %d: %w", pid, err)
	}
	for {
		var alive bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", int32(pid)).Scan(&alive); err != nil {
			return fmt.Errorf("waiting for server process %d to end: %w", pid, err)
		}
		if !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for server process %d to end: %w", pid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serverMajor parses the major version from the server_version parameter
// ("15.18 (Debian 15.18-0+deb12u1)", "16.2", "9.6.24"); 0 when unknown.
func serverMajor(v string) int {
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(v)
	}
	n, _ := strconv.Atoi(v[:end])
	return n
}
