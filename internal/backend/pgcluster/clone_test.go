package pgcluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// golden makes an instance whose tenant made a table with rows, a default
// privilege and a sequence in it, all its own; no session is left open.
func golden(t *testing.T, env testEnv, b *Backend) instance {
	t.Helper()
	g := create(t, b, newSpec(t, env))
	ctx := testCtx(t)
	c, err := tenantTarget(env, g.inst, g.spec.Password).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, `CREATE TABLE migrated (id serial PRIMARY KEY, v text);
INSERT INTO migrated (v) VALUES ('one'), ('two');
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC`)
	pgsql.CloseAndWait(ctx, c, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func cloneSpec(t *testing.T, env testEnv, g instance, wait time.Duration) backend.Spec {
	spec := newSpec(t, env)
	tmpl := g.inst
	spec.Template, spec.TemplateWait = &tmpl, wait
	return spec
}

func TestTemplateCloneOwnershipAndIsolation(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		g := golden(t, env, b)
		c := create(t, b, cloneSpec(t, env, g, 0))
		super := connect(t, env.super)

		// The clone's tenant has the rows and owns every object.
		tenant := connect(t, tenantTarget(env, c.inst, c.spec.Password))
		var n int
		if err := tenant.QueryRow(ctx, "SELECT count(*) FROM migrated").Scan(&n); err != nil || n != 2 {
			t.Fatalf("rows in the clone: %d, %v", n, err)
		}
		if _, err := tenant.Exec(ctx, "INSERT INTO migrated (v) VALUES ('three'); DROP TABLE migrated"); err != nil {
			t.Fatalf("the clone's tenant cannot use its objects: %v", err)
		}
		cc := connect(t, pgsql.Target{Host: env.super.Host, Port: env.super.Port, Database: c.spec.DBName,
			User: env.super.User, Password: env.super.Password, SSLMode: env.super.SSLMode})
		var left int
		if err := cc.QueryRow(ctx, `SELECT count(*) FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid
WHERE r.rolname = $1 AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`, g.spec.Username).Scan(&left); err != nil || left != 0 {
			t.Errorf("the template's role keeps %d things in the clone (%v)", left, err)
		}

		// The golden instance is as it was: its database is its own.
		var owner string
		if err := super.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, g.spec.DBName).Scan(&owner); err != nil || owner != g.spec.Username {
			t.Fatalf("golden database owned by %q (%v), want %q", owner, err, g.spec.Username)
		}
		if st, err := b.Inspect(ctx, g.inst); err != nil || !st.Exists {
			t.Fatalf("golden after the clone: %+v, %v", st, err)
		}

		// Neither tenant reaches the other's database.
		for _, l := range []pgsql.Target{
			tenantTarget(env, backend.Instance{Host: c.inst.Host, Port: c.inst.Port, DBName: c.spec.DBName, Username: g.inst.Username}, g.spec.Password),
			tenantTarget(env, backend.Instance{Host: g.inst.Host, Port: g.inst.Port, DBName: g.spec.DBName, Username: c.inst.Username}, c.spec.Password),
		} {
			conn, err := l.Connect(ctx)
			if err == nil {
				conn.Close(ctx)
				t.Errorf("%s logged in", l)
			} else if pgsql.Code(err) != pgsql.CodeInsufficientPrivilege {
				t.Errorf("%s: %v, want insufficient privilege", l, err)
			}
		}

		// Deleting the clone leaves the golden instance.
		pgsql.CloseAndWait(ctx, tenant, 2*time.Second)
		pgsql.CloseAndWait(ctx, cc, 2*time.Second)
		if err := b.Delete(ctx, c.inst, backend.Auth{Password: c.spec.Password}, false); err != nil {
			t.Fatal(err)
		}
		if st, err := b.Inspect(ctx, g.inst); err != nil || !st.Exists {
			t.Fatalf("golden after the clone's delete: %+v, %v", st, err)
		}
		if err := writeRows(ctx, tenantTarget(env, g.inst, g.spec.Password)); err != nil {
			t.Fatal(err)
		}
	})
}

func writeRows(ctx context.Context, target pgsql.Target) error {
	c, err := target.Connect(ctx)
	if err != nil {
		return err
	}
	defer pgsql.CloseAndWait(ctx, c, 2*time.Second)
	_, err = c.Exec(ctx, "INSERT INTO migrated (v) VALUES ('golden')")
	return err
}

func TestTemplateBusy(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		g := golden(t, env, b)
		super := connect(t, env.super)
		session, err := tenantTarget(env, g.inst, g.spec.Password).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer session.Close(context.Background())

		spec := cloneSpec(t, env, g, 0)
		_, err = b.Create(ctx, spec)
		var busy *backend.TemplateBusyError
		if !errors.As(err, &busy) || busy.Count != 1 || busy.Name != g.inst.Name {
			t.Fatalf("Create = %v, want a TemplateBusyError naming %s with 1 session", err, g.inst.Name)
		}
		if r, d := exists(t, super, spec.Username, spec.DBName); r || d {
			t.Errorf("left behind: role %v, database %v", r, d)
		}

		// With a wait, the create succeeds once the session ends.
		spec = cloneSpec(t, env, g, time.Minute)
		go func() {
			// Past the server's own 5 s wait, so the create's retry is what succeeds.
			time.Sleep(7 * time.Second)
			session.Close(context.Background())
		}()
		start := time.Now()
		create(t, b, spec)
		t.Logf("clone with a wait took %s", time.Since(start).Round(time.Millisecond))
	})
}

// A template that is not proven (its role's comment changed) is never copied.
func TestTemplateUnproven(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	b := newBackend(t, env.super)
	g := golden(t, env, b)
	super := connect(t, env.super)
	tmpl := g.inst
	tmpl.Proof.Value = "0000"
	spec := newSpec(t, env)
	spec.Template = &tmpl
	_, err := b.Create(testCtx(t), spec)
	var se *backend.SpecError
	if !errors.As(err, &se) || se.Attribute != "template_instance" {
		t.Fatalf("Create = %v, want a SpecError on template_instance", err)
	}
	if r, d := exists(t, super, spec.Username, spec.DBName); r || d {
		t.Errorf("left behind: role %v, database %v", r, d)
	}
}

// Clones of one template made at once all succeed, and the template stays
// its role's.
func TestTemplateConcurrentClones(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	b := newBackend(t, env.limited)
	g := golden(t, env, b)
	const n = 3
	specs := make([]backend.Spec, n)
	for i := range specs {
		specs[i] = cloneSpec(t, env, g, time.Minute)
	}
	errs := make(chan error, n)
	for _, s := range specs {
		go func() {
			_, err := b.Create(testCtx(t), s)
			errs <- err
		}()
	}
	for range specs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if st, err := b.Inspect(testCtx(t), g.inst); err != nil || !st.Exists {
		t.Fatalf("golden after %d clones: %+v, %v", n, st, err)
	}
}

// A template role that holds a grant outside its database (given by a DBA)
// is refused after the copy: DROP OWNED in the copy would revoke that
// grant. The undo drops the copy and the new role only; the template and
// the grant stay as they were.
func TestTemplateRoleWithOutsideGrant(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	b := newBackend(t, env.super)
	g := golden(t, env, b)
	super := connect(t, env.super)
	ctx := testCtx(t)
	grant := "GRANT CONNECT ON DATABASE " + pgsql.QuoteIdent(env.super.Database) + " TO " + pgsql.QuoteIdent(g.spec.Username)
	if _, err := super.Exec(ctx, grant); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = super.Exec(context.Background(), "REVOKE CONNECT ON DATABASE "+pgsql.QuoteIdent(env.super.Database)+" FROM "+pgsql.QuoteIdent(g.spec.Username))
	})
	spec := cloneSpec(t, env, g, 0)
	if _, err := b.Create(ctx, spec); err == nil || !strings.Contains(err.Error(), "outside its database") {
		t.Fatalf("Create = %v, want a refusal naming the grant outside the template's database", err)
	}
	if r, d := exists(t, super, spec.Username, spec.DBName); r || d {
		t.Errorf("left behind: role %v, database %v", r, d)
	}
	if st, err := b.Inspect(ctx, g.inst); err != nil || !st.Exists {
		t.Fatalf("golden after the refused clone: %+v, %v", st, err)
	}
	var granted bool
	if err := super.QueryRow(ctx, "SELECT has_database_privilege($1, $2, 'CONNECT')", g.spec.Username, env.super.Database).Scan(&granted); err != nil || !granted {
		t.Errorf("the template role's grant is gone (%v)", err)
	}
}
