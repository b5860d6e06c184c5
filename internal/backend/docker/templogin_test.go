package docker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// tempLogin connects with a temporary login over the published port.
func tempLogin(ctx context.Context, l backend.TempLogin) (*pgx.Conn, error) {
	return pgsql.Target{Host: l.Host, Port: l.Port, Database: l.DBName, User: l.Username, Password: l.Password,
		SSLMode: "disable", ConnectTimeout: 5 * time.Second}.Connect(ctx)
}

// asOwner runs a query as the instance's user and scans its one value.
func asOwner[T any](t *testing.T, c backend.Created, spec backend.Spec, sql string, args ...any) T {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	conn, err := connect(ctx, c, spec.DBName, spec.Password)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v T
	if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func roleExists(t *testing.T, c backend.Created, spec backend.Spec, role string) bool {
	t.Helper()
	return asOwner[bool](t, c, spec, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role)
}

// roleCount counts the temporary logins of the instance's user.
func roleCount(t *testing.T, c backend.Created, spec backend.Spec) int {
	t.Helper()
	return asOwner[int](t, c, spec, "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1", spec.Username+`\_tmp\_%`)
}

// running makes an instance for a test.
func (e env) running(t *testing.T) (backend.Spec, backend.Created, backend.Instance) {
	t.Helper()
	spec := e.spec(t)
	c := e.create(t, spec)
	return spec, c, instanceOf(spec, c)
}

func loginRefused(ctx context.Context, l backend.TempLogin) error {
	c, err := tempLogin(ctx, l)
	if err == nil {
		c.Close(ctx)
		return errors.New("the temporary login still logs in")
	}
	if !pgsql.IsAuthFailure(err) {
		return errors.New("login: " + err.Error() + ", want SQLSTATE 28P01 or 28000")
	}
	return nil
}

// TestTempLogin: the login works as the instance's user, without being a
// superuser role itself; its secrets never reach an exec's command line or
// environment; Close ends its session and drops it.
func TestTempLogin(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var mu sync.Mutex
	var execs []container.ExecOptions
	e.b.execed = func(o container.ExecOptions) {
		mu.Lock()
		defer mu.Unlock()
		execs = append(execs, o)
	}
	spec, c, inst := e.running(t)
	ctx := ctxFor(t, 2*time.Minute)

	before := time.Now()
	l, err := e.b.OpenTempLogin(ctx, inst, time.Minute)
	if err != nil {
		t.Fatalf("OpenTempLogin: %v", err)
	}
	if !pgsql.IsTempRoleOf(spec.Username, l.Role) || l.Username != l.Role || l.Host != c.Host || l.Port != c.Port ||
		l.DBName != spec.DBName || len(l.Password) < 32 {
		t.Errorf("TempLogin = %+v", l)
	}
	if d := l.ExpiresAt.Sub(before); d < 50*time.Second || d > 70*time.Second {
		t.Errorf("expires in %s, want about 1m", d)
	}
	execSeen := false
	mu.Lock()
	for _, o := range execs {
		all := strings.Join(append(append([]string{}, o.Cmd...), o.Env...), " ")
		if strings.Contains(all, l.Password) || strings.Contains(all, "SCRAM") {
			t.Errorf("exec shows a secret: %q", all)
		}
		execSeen = true
	}
	mu.Unlock()
	if !execSeen {
		t.Error("no exec was seen: the test proves nothing")
	}

	tmp, err := tempLogin(ctx, l)
	if err != nil {
		t.Fatalf("logging in with the temporary login: %v", err)
	}
	defer tmp.Close(ctx)
	var sessionUser, currentUser, owner string
	var rolsuper bool
	if _, err := tmp.Exec(ctx, "CREATE TABLE made_by_temp (v int)"); err != nil {
		t.Fatal(err)
	}
	if err := tmp.QueryRow(ctx, `SELECT session_user, current_user, (SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_temp'),
	(SELECT rolsuper FROM pg_roles WHERE rolname = session_user)`).Scan(&sessionUser, &currentUser, &owner, &rolsuper); err != nil {
		t.Fatal(err)
	}
	if sessionUser != l.Role || currentUser != spec.Username || owner != spec.Username || rolsuper {
		t.Errorf("session_user %q, current_user %q, table owner %q, rolsuper %v", sessionUser, currentUser, owner, rolsuper)
	}
	if _, err := tmp.Exec(ctx, "RESET ROLE; CREATE TABLE own_table (v int)"); err != nil {
		t.Fatal(err)
	}

	if err := e.b.CloseTempLogin(ctx, inst, l.Role); err != nil {
		t.Fatalf("CloseTempLogin: %v", err)
	}
	if roleExists(t, c, spec, l.Role) {
		t.Error("the role is still there after Close")
	}
	if err := tmp.Ping(ctx); err == nil {
		t.Error("the login's session survived Close")
	}
	if err := loginRefused(ctx, l); err != nil {
		t.Error(err)
	}
	if err := e.b.CloseTempLogin(ctx, inst, l.Role); err != nil {
		t.Errorf("second CloseTempLogin: %v", err)
	}
}

// TestTempLoginExpires is a run killed before it closed its login: the
// login stops working at its expiry, and the next open removes it.
func TestTempLoginExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec, c, inst := e.running(t)
	ctx := ctxFor(t, 2*time.Minute)
	dead, err := e.b.OpenTempLogin(ctx, inst, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := tempLogin(ctx, dead); err != nil {
		t.Fatalf("the login does not work before it expires: %v", err)
	} else {
		conn.Close(ctx)
	}
	time.Sleep(time.Until(dead.ExpiresAt) + time.Second)
	if err := loginRefused(ctx, dead); err != nil {
		t.Fatal(err)
	}
	if !roleExists(t, c, spec, dead.Role) {
		t.Fatal("the expired role is already gone: the test proves nothing")
	}

	until, err := e.b.RenewTempLogin(ctx, inst, dead.Role, time.Minute)
	if err != nil || time.Until(until) < 50*time.Second {
		t.Fatalf("RenewTempLogin = %s, %v", until, err)
	}
	if conn, err := tempLogin(ctx, dead); err != nil {
		t.Fatalf("the renewed login does not work: %v", err)
	} else {
		conn.Close(ctx)
	}
	if _, err := e.b.RenewTempLogin(ctx, inst, dead.Role, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)

	next, err := e.b.OpenTempLogin(ctx, inst, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if roleExists(t, c, spec, dead.Role) {
		t.Error("the next open left the expired login")
	}
	var gone *backend.TempLoginGoneError
	if _, err := e.b.RenewTempLogin(ctx, inst, dead.Role, time.Minute); !errors.As(err, &gone) {
		t.Errorf("RenewTempLogin of a swept login = %v, want *TempLoginGoneError", err)
	}
	if err := e.b.CloseTempLogin(ctx, inst, next.Role); err != nil {
		t.Fatal(err)
	}
}

// TestTempLoginRefusals: no login in a container without the instance's
// proof, in a stopped one, or for a legacy record.
func TestTempLoginRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec, c, inst := e.running(t)
	ctx := ctxFor(t, 2*time.Minute)

	other := inst
	other.Proof.Value = strings.Repeat("0", 64)
	if _, err := e.b.OpenTempLogin(ctx, other, time.Minute); !errors.Is(err, backend.ErrNotOurs) {
		t.Errorf("OpenTempLogin with another proof = %v, want ErrNotOurs", err)
	}
	legacy := inst
	legacy.Proof.Value = ""
	if _, err := e.b.OpenTempLogin(ctx, legacy, time.Minute); !errors.Is(err, backend.ErrLegacy) {
		t.Errorf("OpenTempLogin of a legacy record = %v, want ErrLegacy", err)
	}
	gone := inst
	gone.ContainerID, gone.Name = "", "pgtest-never-"+randHex(4)
	if _, err := e.b.OpenTempLogin(ctx, gone, time.Minute); !errors.Is(err, backend.ErrNotOurs) {
		t.Errorf("OpenTempLogin of a missing container = %v, want ErrNotOurs", err)
	}
	if err := e.b.CloseTempLogin(ctx, gone, pgsql.NewTempRoleName(spec.Username)); err != nil {
		t.Errorf("CloseTempLogin in a missing container = %v", err)
	}
	if roleCount(t, c, spec) != 0 {
		t.Error("a temporary login was made without the proof")
	}

	if err := e.b.cli.ContainerStop(ctx, c.ContainerID, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.OpenTempLogin(ctx, inst, time.Minute); !errors.Is(err, backend.ErrNotRunning) {
		t.Errorf("OpenTempLogin in a stopped container = %v, want ErrNotRunning", err)
	}
}
