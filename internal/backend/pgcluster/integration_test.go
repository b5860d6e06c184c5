package pgcluster

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// forEachAdmin runs f as the superuser and as the CREATEDB CREATEROLE admin.
func forEachAdmin(t *testing.T, f func(t *testing.T, env testEnv, b *Backend)) {
	env := requireEnv(t)
	t.Parallel()
	for name, admin := range map[string]pgsql.Target{"superuser": env.super, "limited": env.limited} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, env, newBackend(t, admin))
		})
	}
}

// noSecret fails when err's text shows the password or a SCRAM verifier.
func noSecret(t *testing.T, err error, password string) {
	t.Helper()
	if err == nil {
		return
	}
	if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), "SCRAM-SHA-256$") {
		t.Errorf("error shows a secret: %v", err)
	}
}

func TestCreateLoginAndIsolation(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		other := create(t, b, newSpec(t, env))

		if a.inst.Username != a.spec.Username || a.inst.Host != env.super.Host || a.inst.Port != env.super.Port {
			t.Errorf("Created = %+v", a.inst)
		}

		// The tenant logs in, owns its database and can use it.
		tenant := connect(t, tenantTarget(env, a.inst, a.spec.Password))
		var got string
		if _, err := tenant.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('hello')"); err != nil {
			t.Fatal(err)
		}
		if err := tenant.QueryRow(ctx, "SELECT v FROM t").Scan(&got); err != nil || got != "hello" {
			t.Fatalf("reading back: %q, %v", got, err)
		}

		// No privileges beyond its own database.
		var super_, createdb, createrole, replication, bypassrls bool
		var owner, secret string
		err := super.QueryRow(ctx, `SELECT a.rolsuper, a.rolcreatedb, a.rolcreaterole, a.rolreplication, a.rolbypassrls, a.rolpassword,
	pg_get_userbyid(d.datdba)
FROM pg_authid a, pg_database d WHERE a.rolname = $1 AND d.datname = $2`, a.spec.Username, a.spec.DBName).
			Scan(&super_, &createdb, &createrole, &replication, &bypassrls, &secret, &owner)
		if err != nil {
			t.Fatal(err)
		}
		if super_ || createdb || createrole || replication || bypassrls {
			t.Errorf("role attributes: super %v createdb %v createrole %v replication %v bypassrls %v",
				super_, createdb, createrole, replication, bypassrls)
		}
		if owner != a.spec.Username {
			t.Errorf("database owner = %q", owner)
		}
		if !strings.HasPrefix(secret, "SCRAM-SHA-256$") {
			t.Errorf("stored password is not a SCRAM verifier")
		}

		// PUBLIC has nothing on the database: another tenant cannot connect
		// (postgraas_server issue #20).
		var publicGrants int
		if err := super.QueryRow(ctx, `SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a
WHERE d.datname = $1 AND a.grantee = 0`, a.spec.DBName).Scan(&publicGrants); err != nil {
			t.Fatal(err)
		}
		if publicGrants != 0 {
			t.Errorf("PUBLIC still holds %d privilege(s) on the database", publicGrants)
		}
		intruder := tenantTarget(env, other.inst, other.spec.Password)
		intruder.Database = a.spec.DBName
		if c, err := intruder.Connect(ctx); err == nil {
			c.Close(ctx)
			t.Error("another tenant connected to the database")
		} else if pgsql.Code(err) != pgsql.CodeInsufficientPrivilege {
			t.Errorf("another tenant: got %v, want SQLSTATE 42501", err)
		}

		st, err := b.Inspect(ctx, a.inst)
		if err != nil || !reflect.DeepEqual(st, backend.Status{Exists: true, State: "ready"}) {
			t.Errorf("Inspect = %+v, %v", st, err)
		}

		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err == nil {
			t.Error("Delete with the tenant connected succeeded")
		}
		tenant.Close(ctx)
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if r, d := exists(t, super, a.spec.Username, a.spec.DBName); r || d {
			t.Errorf("after Delete: role %v, database %v", r, d)
		}
		st, err = b.Inspect(ctx, a.inst)
		if err != nil || !reflect.DeepEqual(st, backend.Status{Exists: false, State: "missing"}) {
			t.Errorf("Inspect after Delete = %+v, %v", st, err)
		}
	})
}

func TestCreateConflictRole(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		spec := newSpec(t, env)
		_, err := super.Exec(ctx, "CREATE ROLE "+pgsql.QuoteIdent(spec.Username)+
			" LOGIN CREATEDB CONNECTION LIMIT 3 PASSWORD 'theirs'")
		if err != nil {
			t.Fatal(err)
		}
		before := roleSnapshot(t, super, spec.Username)

		_, err = b.Create(ctx, spec)
		var conflict *backend.ConflictError
		if !errors.As(err, &conflict) || conflict.Kind != "role" || conflict.Name != spec.Username {
			t.Fatalf("Create = %v, want role conflict", err)
		}
		noSecret(t, err, spec.Password)
		if after := roleSnapshot(t, super, spec.Username); after != before {
			t.Errorf("existing role changed:\n before %s\n after  %s", before, after)
		}
		if _, d := exists(t, super, spec.Username, spec.DBName); d {
			t.Error("database created despite the conflict")
		}
		// Their password still works.
		theirs := env.super
		theirs.User, theirs.Password = spec.Username, "theirs"
		connect(t, theirs)
	})
}

// roleSnapshot is everything about a role a create could have changed.
func roleSnapshot(t *testing.T, conn *pgx.Conn, role string) string {
	t.Helper()
	var s string
	err := conn.QueryRow(testCtx(t), `SELECT row(a.*)::text || ' ' || coalesce(shobj_description(a.oid, 'pg_authid'), '') || ' ' ||
	coalesce((SELECT string_agg(m.member::regrole::text, ',' ORDER BY m.member) FROM pg_auth_members m WHERE m.roleid = a.oid), '')
FROM pg_authid a WHERE rolname = $1`, role).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCreateConflictDatabase(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		spec := newSpec(t, env)
		if _, err := super.Exec(ctx, "CREATE DATABASE "+pgsql.QuoteIdent(spec.DBName)); err != nil {
			t.Fatal(err)
		}
		snapshot := func() string {
			var s string
			if err := super.QueryRow(ctx, "SELECT row(d.*)::text FROM pg_database d WHERE datname = $1", spec.DBName).Scan(&s); err != nil {
				t.Fatal(err)
			}
			return s
		}
		before := snapshot()

		_, err := b.Create(ctx, spec)
		var conflict *backend.ConflictError
		if !errors.As(err, &conflict) || conflict.Kind != "database" || conflict.Name != spec.DBName {
			t.Fatalf("Create = %v, want database conflict", err)
		}
		if after := snapshot(); after != before {
			t.Errorf("existing database changed:\n before %s\n after  %s", before, after)
		}
		if r, _ := exists(t, super, spec.Username, spec.DBName); r {
			t.Error("role created despite the conflict")
		}
	})
}

// TestCreateDatabaseFailureLeavesNoRole uses an admin that may create roles
// but not databases, so the create fails after its role was made.
func TestCreateDatabaseFailureLeavesNoRole(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	ctx := testCtx(t)
	super := connect(t, env.super)
	admin := env.super
	admin.User, admin.Password = uniqueName(t, "adm"), randomPassword()
	dropLater(t, env.super, admin.User, "")
	if _, err := super.Exec(ctx, "CREATE ROLE "+pgsql.QuoteIdent(admin.User)+" LOGIN CREATEROLE NOCREATEDB PASSWORD "+
		pgsql.QuoteLiteral(admin.Password)); err != nil {
		t.Fatal(err)
	}
	b := newBackend(t, admin)
	spec := newSpec(t, env)

	_, err := b.Create(ctx, spec)
	if pgsql.Code(err) != pgsql.CodeInsufficientPrivilege || !strings.Contains(err.Error(), "creating database") {
		t.Fatalf("Create = %v, want permission denied creating the database", err)
	}
	noSecret(t, err, spec.Password)
	if r, d := exists(t, super, spec.Username, spec.DBName); r || d {
		t.Errorf("left behind: role %v, database %v", r, d)
	}
}

// TestCreateCancelledWhileRoleBlocked cancels a create whose CREATE ROLE is
// stuck on a lock: the server would finish it after the client gave up, so
// the undo must stop it before looking. Not parallel: the lock blocks every
// role creation on the cluster.
func TestCreateCancelledWhileRoleBlocked(t *testing.T) {
	env := requireEnv(t)
	b := newBackend(t, env.limited)
	super := connect(t, env.super)
	spec := newSpec(t, env)

	locker := connect(t, env.super)
	ctx := testCtx(t)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE pg_authid IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = b.Create(cctx, spec)
	_ = tx.Rollback(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Create = %v, want deadline exceeded", err)
	}
	time.Sleep(200 * time.Millisecond) // a surviving CREATE ROLE would commit now
	if r, d := exists(t, super, spec.Username, spec.DBName); r || d {
		t.Errorf("left behind: role %v, database %v", r, d)
	}
}

// TestCreateCancelledWhileDatabaseBlocked: CREATE DATABASE waits while
// someone is connected to its template; the create is cancelled meanwhile
// and must drop the role it made. Not parallel: it blocks every create.
func TestCreateCancelledWhileDatabaseBlocked(t *testing.T) {
	env := requireEnv(t)
	b := newBackend(t, env.limited)
	super := connect(t, env.super)
	spec := newSpec(t, env)
	tmpl := env.super
	tmpl.Database = "template1"
	connect(t, tmpl)

	ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
	defer cancel()
	_, err := b.Create(ctx, spec)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "creating database") {
		t.Fatalf("Create = %v, want deadline exceeded while creating the database", err)
	}
	if r, d := exists(t, super, spec.Username, spec.DBName); r || d {
		t.Errorf("left behind: role %v, database %v", r, d)
	}
}

func TestDeleteWrongPassword(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))

		err := b.Delete(ctx, a.inst, backend.Auth{Password: "wrong" + a.spec.Password}, true)
		if !errors.Is(err, backend.ErrWrongPassword) {
			t.Fatalf("Delete = %v, want ErrWrongPassword", err)
		}
		if r, d := exists(t, super, a.spec.Username, a.spec.DBName); !r || !d {
			t.Fatalf("after refused delete: role %v, database %v", r, d)
		}
		connect(t, tenantTarget(env, a.inst, a.spec.Password))
	})
}

func TestDeleteWithSessions(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		s1 := connect(t, tenantTarget(env, a.inst, a.spec.Password))
		connect(t, tenantTarget(env, a.inst, a.spec.Password))

		err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false)
		var sessions *backend.SessionsError
		if !errors.As(err, &sessions) || sessions.Count != 2 || sessions.DBName != a.spec.DBName {
			t.Fatalf("Delete = %v, want 2 sessions", err)
		}
		if r, d := exists(t, super, a.spec.Username, a.spec.DBName); !r || !d {
			t.Fatalf("after refused delete: role %v, database %v", r, d)
		}
		if err := s1.Ping(ctx); err != nil {
			t.Fatalf("session broken by a refused delete: %v", err)
		}

		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, true); err != nil {
			t.Fatalf("forced Delete: %v", err)
		}
		if r, d := exists(t, super, a.spec.Username, a.spec.DBName); r || d {
			t.Errorf("after forced delete: role %v, database %v", r, d)
		}
	})
}

func TestDeleteRetry(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)

		// Database gone, role left: the password is still checked (the
		// login fails only after authentication) and the role dropped.
		a := create(t, b, newSpec(t, env))
		if _, err := super.Exec(ctx, "DROP DATABASE "+pgsql.QuoteIdent(a.spec.DBName)); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: "wrong"}, false); !errors.Is(err, backend.ErrWrongPassword) {
			t.Errorf("Delete with wrong password = %v, want ErrWrongPassword", err)
		}
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if r, _ := exists(t, super, a.spec.Username, a.spec.DBName); r {
			t.Error("role left")
		}

		// Role gone, database left (only possible once someone gave the
		// database to another owner, here the admin, who kept the data):
		// the database is no longer the instance's, so it is left alone.
		c := create(t, b, newSpec(t, env))
		if _, err := super.Exec(ctx, "ALTER DATABASE "+pgsql.QuoteIdent(c.spec.DBName)+" OWNER TO "+pgsql.QuoteIdent(b.admin.User)+"; DROP ROLE "+
			pgsql.QuoteIdent(c.spec.Username)); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, c.inst, backend.Auth{Password: ""}, false); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, d := exists(t, super, c.spec.Username, c.spec.DBName); !d {
			t.Error("a database the instance no longer owns was dropped")
		}

		// Everything gone: nothing to do.
		if err := b.Delete(ctx, c.inst, backend.Auth{Password: ""}, false); err != nil {
			t.Errorf("Delete of nothing: %v", err)
		}
	})
}

// TestDeleteRoleWithOutsideGrants: a grant from another tenant makes a
// plain DROP ROLE fail; Delete must still finish.
func TestDeleteRoleWithOutsideGrants(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		other := create(t, b, newSpec(t, env))
		grantor := connect(t, tenantTarget(env, other.inst, other.spec.Password))
		if _, err := grantor.Exec(ctx, "GRANT CONNECT ON DATABASE "+pgsql.QuoteIdent(other.spec.DBName)+" TO "+
			pgsql.QuoteIdent(a.spec.Username)); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if r, d := exists(t, super, a.spec.Username, a.spec.DBName); r || d {
			t.Errorf("after Delete: role %v, database %v", r, d)
		}
	})
}

func TestPurge(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		connect(t, tenantTarget(env, a.inst, a.spec.Password)) // terminated by the purge
		if err := b.Purge(ctx, a.inst); err != nil {
			t.Fatalf("Purge: %v", err)
		}
		if r, d := exists(t, super, a.spec.Username, a.spec.DBName); r || d {
			t.Errorf("after Purge: role %v, database %v", r, d)
		}
		if err := b.Purge(ctx, a.inst); err != nil {
			t.Errorf("second Purge: %v", err)
		}
	})
}

func TestRotatePassword(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		a := create(t, b, newSpec(t, env))
		newPassword := randomPassword()
		v, _ := pgsql.ScramVerifier(newPassword)
		if err := b.SetPassword(ctx, a.inst, backend.Auth{}, v); err != nil {
			t.Fatalf("SetPassword: %v", err)
		}
		if c, err := tenantTarget(env, a.inst, a.spec.Password).Connect(ctx); err == nil {
			c.Close(ctx)
			t.Error("old password still accepted")
		} else if !pgsql.IsAuthFailure(err) {
			t.Errorf("old password: %v", err)
		}
		connect(t, tenantTarget(env, a.inst, newPassword))
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); !errors.Is(err, backend.ErrWrongPassword) {
			t.Errorf("Delete with the old password = %v", err)
		}

		gone := a.inst
		gone.Username = uniqueName(t, "nobody")
		err := b.SetPassword(ctx, gone, backend.Auth{}, "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5")
		if err == nil {
			t.Error("SetPassword of a missing role succeeded")
		}
		noSecret(t, err, newPassword)
	})
}

func TestInspectMany(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, env.limited)
	super := connect(t, env.super)
	a := create(t, b, newSpec(t, env))
	c := create(t, b, newSpec(t, env))
	if _, err := super.Exec(ctx, "DROP DATABASE "+pgsql.QuoteIdent(c.spec.DBName)); err != nil {
		t.Fatal(err)
	}
	never := backend.Instance{DBName: uniqueName(t, "db"), Username: uniqueName(t, "u")}
	got, err := b.InspectMany(ctx, []backend.Instance{a.inst, c.inst, never, a.inst})
	if err != nil {
		t.Fatal(err)
	}
	ready, missing := backend.Status{Exists: true, State: "ready"}, backend.Status{State: "missing"}
	want := []backend.Status{ready, missing, missing, ready}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("status %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestServerLoginNames: the test cluster has no Azure-style logins, so only
// the names are checked: the admin logs in as admin@server, the role made is
// the plain name and the stored login has the suffix.
func TestServerLoginNames(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	b := New(Config{Admin: env.super, Server: "myserver"})
	defer b.Close()
	if want := env.super.User + "@myserver"; b.admin.User != want {
		t.Errorf("admin login = %q, want %q", b.admin.User, want)
	}
	// The admin login really is sent as the user name: the server refuses
	// it as an unknown user, not for some other reason.
	_, err := b.Inspect(testCtx(t), backend.Instance{DBName: "d", Username: "u@myserver"})
	if !pgsql.IsAuthFailure(err) || !strings.Contains(err.Error(), env.super.User+"@myserver") {
		t.Errorf("Inspect with server login = %v", err)
	}
}

// TestDeleteChecksPasswordLikeALogin: whether the password is checked
// against the stored verifier (superuser admin) or by logging in (limited
// admin), a role that may not log in now refuses the delete, reported as
// what it is (not as a wrong password), and the verifier path authenticates
// the same passwords the server accepts.
func TestDeleteChecksPasswordLikeALogin(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		for _, change := range []string{"NOLOGIN", "VALID UNTIL '2000-01-01'"} {
			a := create(t, b, newSpec(t, env))
			if _, err := super.Exec(ctx, "ALTER ROLE "+pgsql.QuoteIdent(a.spec.Username)+" "+change); err != nil {
				t.Fatal(err)
			}
			var disabled *backend.LoginDisabledError
			if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); !errors.As(err, &disabled) {
				t.Errorf("Delete of a role altered %s = %v, want LoginDisabledError", change, err)
			}
			if r, d := exists(t, super, a.spec.Username, a.spec.DBName); !r || !d {
				t.Fatalf("after refused delete: role %v, database %v", r, d)
			}
			if _, err := super.Exec(ctx, "ALTER ROLE "+pgsql.QuoteIdent(a.spec.Username)+" LOGIN VALID UNTIL 'infinity'"); err != nil {
				t.Fatal(err)
			}
			if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err != nil {
				t.Fatalf("Delete after %s was undone: %v", change, err)
			}
			if r, d := exists(t, super, a.spec.Username, a.spec.DBName); r || d {
				t.Errorf("after delete: role %v, database %v", r, d)
			}
		}
	})
}

// TestSharedPoolOnAnotherDatabase: on a pool shared with a meta DB in
// another database, everything works as on the maintenance database, and a
// role that owns an object in the maintenance database is still dropped
// (DROP OWNED there, on a connection of its own).
func TestSharedPoolOnAnotherDatabase(t *testing.T) {
	env := requireEnv(t)
	ctx := testCtx(t)
	super := connect(t, env.super)
	other := uniqueName(t, "meta")
	if _, err := super.Exec(ctx, "CREATE DATABASE "+pgsql.QuoteIdent(other)); err != nil {
		t.Fatal(err)
	}
	dropLater(t, env.super, "", other)
	shared := env.super
	shared.Database = other
	pool := shared.NewPool(2)
	defer pool.Close()
	b := New(Config{Admin: env.super, Pool: pool})
	defer b.Close()

	a := create(t, b, newSpec(t, env))
	if st, err := b.Inspect(ctx, a.inst); err != nil || !st.Exists {
		t.Fatalf("Inspect: %+v, %v", st, err)
	}
	table := uniqueName(t, "t")
	if _, err := super.Exec(ctx, "CREATE TABLE "+pgsql.QuoteIdent(table)+" (); ALTER TABLE "+pgsql.QuoteIdent(table)+
		" OWNER TO "+pgsql.QuoteIdent(a.spec.Username)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = super.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgsql.QuoteIdent(table)) })
	if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if r, d := exists(t, super, a.spec.Username, a.spec.DBName); r || d {
		t.Errorf("after Delete: role %v, database %v", r, d)
	}
	var left bool
	if err := super.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgsql.QuoteIdent(table)).Scan(&left); err != nil || left {
		t.Errorf("the role's table in the maintenance database: still there %v (%v)", left, err)
	}
	b.Close()
	var one int
	if err := pool.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Errorf("the shared pool after the backend closed: %v; the backend must not close a pool it was given", err)
	}
}

// TestVerifierAuth: with a write-only password the provider holds only the
// verifier it stored; it authenticates when the server's is that one, and
// not after an out-of-band change. A limited admin cannot read verifiers
// and says so.
func TestVerifierAuth(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		spec := newSpec(t, env)
		v, err := pgsql.ScramVerifier(spec.Password)
		if err != nil {
			t.Fatal(err)
		}
		spec.Verifier = v
		a := create(t, b, spec)
		err = b.Authenticate(ctx, a.inst, backend.Auth{Verifier: v})
		if b.authidDenied.Load() {
			if !errors.Is(err, backend.ErrCannotVerify) {
				t.Fatalf("limited admin, verifier auth: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("verifier auth: %v", err)
		}
		other, _ := pgsql.ScramVerifier(spec.Password) // same password, other salt
		if err := b.Authenticate(ctx, a.inst, backend.Auth{Verifier: other}); !errors.Is(err, backend.ErrWrongPassword) {
			t.Errorf("another verifier: %v", err)
		}
		super := connect(t, env.super)
		if _, err := super.Exec(ctx, "ALTER ROLE "+pgsql.QuoteIdent(spec.Username)+" PASSWORD 'changed out of band'"); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, a.inst, backend.Auth{Verifier: v}, false); !errors.Is(err, backend.ErrWrongPassword) {
			t.Errorf("delete after an out-of-band change: %v", err)
		}
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: "changed out of band"}, false); err != nil {
			t.Errorf("delete with the password the instance accepts: %v", err)
		}
	})
}
