package pgcluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// tempTarget is the login a TempLogin hands out.
func tempTarget(env testEnv, l backend.TempLogin) pgsql.Target {
	t := env.super
	t.Host, t.Port, t.Database, t.User, t.Password = l.Host, l.Port, l.DBName, l.Username, l.Password
	return t
}

// openTemp opens a temporary login, to be dropped when the test ends
// whatever the test found.
func openTemp(t *testing.T, env testEnv, b *Backend, inst backend.Instance, ttl time.Duration) backend.TempLogin {
	t.Helper()
	l, err := b.OpenTempLogin(testCtx(t), inst, ttl)
	if err != nil {
		t.Fatalf("OpenTempLogin: %v", err)
	}
	dropLater(t, env.super, l.Role, "")
	if strings.Contains(l.Role, l.Password) || l.Password == "" {
		t.Fatalf("login %q has no password of its own", l.Role)
	}
	return l
}

func roleExists(t *testing.T, super *pgx.Conn, role string) bool {
	t.Helper()
	r, _ := exists(t, super, role, "")
	return r
}

// TestTempLogin: the login works on the instance's database as the
// instance's user and nothing more, and Close ends its sessions and drops
// it, even when it owns something of its own.
func TestTempLogin(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		other := create(t, b, newSpec(t, env))

		before := time.Now()
		l := openTemp(t, env, b, a.inst, time.Minute)
		if !pgsql.IsTempRoleOf(a.spec.Username, l.Role) || l.Username != l.Role ||
			l.Host != a.inst.Host || l.Port != a.inst.Port || l.DBName != a.spec.DBName {
			t.Errorf("TempLogin = %+v", l)
		}
		if d := l.ExpiresAt.Sub(before); d < 50*time.Second || d > 70*time.Second {
			t.Errorf("expires in %s, want about 1m", d)
		}

		// The role: no privileges of its own, the marker, an expiry.
		var super_, createdb, createrole, replication, bypassrls, inherit, login bool
		var comment string
		var until time.Time
		var config []string
		err := super.QueryRow(ctx, `SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolinherit,
	rolcanlogin, shobj_description(oid, 'pg_authid'), rolvaliduntil, rolconfig FROM pg_roles WHERE rolname = $1`, l.Role).
			Scan(&super_, &createdb, &createrole, &replication, &bypassrls, &inherit, &login, &comment, &until, &config)
		if err != nil {
			t.Fatal(err)
		}
		if super_ || createdb || createrole || replication || bypassrls || !inherit || !login {
			t.Errorf("role attributes: super %v createdb %v createrole %v replication %v bypassrls %v inherit %v login %v",
				super_, createdb, createrole, replication, bypassrls, inherit, login)
		}
		if comment != backend.TempLoginMarker(a.inst.Proof) {
			t.Errorf("comment = %q", comment)
		}
		if !until.Equal(l.ExpiresAt) {
			t.Errorf("VALID UNTIL %s, TempLogin says %s", until, l.ExpiresAt)
		}

		// It logs in, acts as the instance's user, and what it makes is the
		// user's.
		tmp := connect(t, tempTarget(env, l))
		var sessionUser, currentUser, owner string
		if _, err := tmp.Exec(ctx, "CREATE TABLE made_by_temp (v int)"); err != nil {
			t.Fatal(err)
		}
		if err := tmp.QueryRow(ctx, `SELECT session_user, current_user,
	(SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_temp')`).Scan(&sessionUser, &currentUser, &owner); err != nil {
			t.Fatal(err)
		}
		if sessionUser != l.Role || currentUser != a.spec.Username || owner != a.spec.Username {
			t.Errorf("session_user %q, current_user %q, table owner %q", sessionUser, currentUser, owner)
		}
		// A session that leaves the owner's role makes something of its own,
		// which Close must hand to the owner rather than fail on.
		if _, err := tmp.Exec(ctx, "RESET ROLE; CREATE TABLE own_table (v int)"); err != nil {
			t.Fatal(err)
		}

		// Not another tenant's database.
		intruder := tempTarget(env, l)
		intruder.Database = other.spec.DBName
		if c, err := intruder.Connect(ctx); err == nil {
			c.Close(ctx)
			t.Error("the temporary login connected to another tenant's database")
		} else if pgsql.Code(err) != pgsql.CodeInsufficientPrivilege {
			t.Errorf("another tenant's database: %v, want SQLSTATE 42501", err)
		}

		if err := b.CloseTempLogin(ctx, a.inst, l.Role); err != nil {
			t.Fatalf("CloseTempLogin: %v", err)
		}
		if roleExists(t, super, l.Role) {
			t.Error("the role is still there after Close")
		}
		if err := tmp.Ping(ctx); err == nil {
			t.Error("the login's session survived Close")
		}
		if err := loginRefused(ctx, tempTarget(env, l)); err != nil {
			t.Error(err)
		}
		tenant := connect(t, tenantTarget(env, a.inst, a.spec.Password))
		if err := tenant.QueryRow(ctx, "SELECT tableowner FROM pg_tables WHERE tablename = 'own_table'").Scan(&owner); err != nil || owner != a.spec.Username {
			t.Errorf("own_table owned by %q (%v), want the instance's user", owner, err)
		}
		// Closing again, or a name that is no login of the instance: nothing.
		if err := b.CloseTempLogin(ctx, a.inst, l.Role); err != nil {
			t.Errorf("second CloseTempLogin: %v", err)
		}
		if err := b.CloseTempLogin(ctx, a.inst, a.spec.Username); err != nil || !roleExists(t, super, a.spec.Username) {
			t.Errorf("CloseTempLogin of the instance's own role: %v", err)
		}
	})
}

func loginRefused(ctx context.Context, target pgsql.Target) error {
	c, err := target.Connect(ctx)
	if err == nil {
		c.Close(ctx)
		return errors.New("the temporary login still logs in")
	}
	if !pgsql.IsAuthFailure(err) {
		return errors.New("login: " + err.Error() + ", want SQLSTATE 28P01 or 28000")
	}
	return nil
}

// TestTempLoginExpires is a run killed before it closed its login: the
// login stops working by itself at its expiry, and the next open for the
// instance removes it.
func TestTempLoginExpires(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		dead := openTemp(t, env, b, a.inst, 3*time.Second)
		// Works now...
		connect(t, tempTarget(env, dead)).Close(ctx)
		time.Sleep(time.Until(dead.ExpiresAt) + time.Second)
		// ...and not after its expiry, though nobody closed it.
		if err := loginRefused(ctx, tempTarget(env, dead)); err != nil {
			t.Fatal(err)
		}
		if !roleExists(t, super, dead.Role) {
			t.Fatal("the expired role is already gone: the test proves nothing")
		}
		// A role spelled like a login of the instance but without its
		// marker is someone else's: the sweep leaves it.
		lookalike := pgsql.TempRolePrefix(a.spec.Username) + "_tmp_00112233aabbccdd"
		dropLater(t, env.super, lookalike, "")
		if _, err := super.Exec(ctx, "CREATE ROLE "+pgsql.QuoteIdent(lookalike)+" LOGIN VALID UNTIL '2000-01-01'"); err != nil {
			t.Fatal(err)
		}

		next := openTemp(t, env, b, a.inst, time.Minute)
		if roleExists(t, super, dead.Role) {
			t.Error("the next open left the expired login")
		}
		if !roleExists(t, super, lookalike) {
			t.Error("the sweep dropped a role without the instance's marker")
		}
		if err := b.CloseTempLogin(ctx, a.inst, lookalike); err != nil || !roleExists(t, super, lookalike) {
			t.Errorf("CloseTempLogin of a lookalike: %v", err)
		}
		if err := b.CloseTempLogin(ctx, a.inst, next.Role); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTempLoginRenew: a renewed login outlives its first expiry.
func TestTempLoginRenew(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, env.limited)
	a := create(t, b, newSpec(t, env))
	l := openTemp(t, env, b, a.inst, 3*time.Second)
	until, err := b.RenewTempLogin(ctx, a.inst, l.Role, time.Minute)
	if err != nil {
		t.Fatalf("RenewTempLogin: %v", err)
	}
	if d := time.Until(until); d < 50*time.Second {
		t.Errorf("renewed until %s, want about a minute from now", until)
	}
	time.Sleep(time.Until(l.ExpiresAt) + time.Second)
	connect(t, tempTarget(env, l))
	if err := b.CloseTempLogin(ctx, a.inst, l.Role); err != nil {
		t.Fatal(err)
	}
	var gone *backend.TempLoginGoneError
	if _, err := b.RenewTempLogin(ctx, a.inst, l.Role, time.Minute); !errors.As(err, &gone) {
		t.Errorf("RenewTempLogin after Close = %v, want *TempLoginGoneError", err)
	}
}

// TestTempLoginNeedsProof: nothing is made for a legacy record or for an
// instance whose objects are not its own.
func TestTempLoginNeedsProof(t *testing.T) {
	env := requireEnv(t)
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, env.limited)
	super := connect(t, env.super)
	a := create(t, b, newSpec(t, env))
	count := func() int {
		var n int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)",
			pgsql.TempRolePrefix(a.spec.Username)+"_tmp_").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	legacy := a.inst
	legacy.Proof.Value = ""
	if _, err := b.OpenTempLogin(ctx, legacy, time.Minute); !errors.Is(err, backend.ErrLegacy) {
		t.Errorf("OpenTempLogin of a legacy record = %v, want ErrLegacy", err)
	}
	other := a.inst
	other.Proof.Value = strings.Repeat("0", 64)
	var notOurs *NotOursError
	if _, err := b.OpenTempLogin(ctx, other, time.Minute); !errors.As(err, &notOurs) {
		t.Errorf("OpenTempLogin with another proof = %v, want *NotOursError", err)
	}
	if n := count(); n != 0 {
		t.Errorf("%d temporary roles made without a proof", n)
	}
}

// TestDeleteDropsTempLogins: destroying an instance leaves none of its
// temporary logins behind, not even one with a session.
func TestDeleteDropsTempLogins(t *testing.T) {
	forEachAdmin(t, func(t *testing.T, env testEnv, b *Backend) {
		ctx := testCtx(t)
		super := connect(t, env.super)
		a := create(t, b, newSpec(t, env))
		l := openTemp(t, env, b, a.inst, time.Minute)
		tmp := connect(t, tempTarget(env, l))
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, false); err == nil {
			t.Fatal("Delete succeeded with the temporary login's session connected")
		}
		tmp.Close(ctx)
		if err := b.Delete(ctx, a.inst, backend.Auth{Password: a.spec.Password}, true); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if roleExists(t, super, l.Role) {
			t.Error("the temporary login outlived its instance")
		}
	})
}
