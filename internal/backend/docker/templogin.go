package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Temporary logins inside a container. The provider has no admin login
// there: the instance's user is the server's superuser, and its password
// is the tenant's. So the SQL runs through the engine's exec API as psql
// in the container, logged in as that user over the unix socket, which the
// official image (and the test stand-in) trust. The SQL, with the SCRAM
// verifier of the new password, goes on psql's stdin: an exec's command
// line shows in `docker inspect` and `ps`, its stdin nowhere. The password
// itself never leaves the provider.

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

// OpenTempLogin implements backend.Backend.
func (b *Backend) OpenTempLogin(ctx context.Context, inst backend.Instance, ttl time.Duration) (backend.TempLogin, error) {
	if err := b.engine(ctx); err != nil {
		return backend.TempLogin{}, err
	}
	if inst.Proof.Legacy() {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login in container %q: %w", inst.Name, backend.ErrLegacy)
	}
	if ttl <= 0 {
		return backend.TempLogin{}, errors.New("opening a temporary login: the ttl must be positive")
	}
	c, err := b.runningProven(ctx, inst)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login in container %q: %w", inst.Name, err)
	}
	port, err := hostPort(c)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login in container %q: %w", inst.Name, err)
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
	out, err := b.psql(ctx, c.ID, inst, script, password, verifier)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("creating temporary login role %q in container %q: %w", role, inst.Name, err)
	}
	until, ok := parseExpires(out)
	if !ok {
		return backend.TempLogin{}, fmt.Errorf("creating temporary login role %q in container %q: psql did not report its expiry", role, inst.Name)
	}
	host := inst.Host
	if host == "" {
		host = b.cfg.AdvertisedHost
	}
	return backend.TempLogin{
		Role: role, Username: role, Password: password,
		Host: host, Port: port, DBName: inst.DBName, ExpiresAt: until,
	}, nil
}

// RenewTempLogin implements backend.Backend.
func (b *Backend) RenewTempLogin(ctx context.Context, inst backend.Instance, role string, ttl time.Duration) (time.Time, error) {
	if err := b.engine(ctx); err != nil {
		return time.Time{}, err
	}
	if inst.Proof.Legacy() || !pgsql.IsTempRoleOf(inst.Username, role) {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	c, err := b.runningProven(ctx, inst)
	if err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	which := tempRoleFrom(inst, ` AND t.rolname = `+pgsql.QuoteLiteral(role))
	script := `\set ON_ERROR_STOP 1
SELECT format('ALTER ROLE %I VALID UNTIL %L', t.rolname, now() + make_interval(secs => ` +
		strconv.FormatFloat(ttl.Seconds(), 'f', -1, 64) + `))` + which + `
\gexec
` + expiresSQL(`t.rolvaliduntil`) + which + `;
\q
`
	out, err := b.psql(ctx, c.ID, inst, script)
	if err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	until, ok := parseExpires(out)
	if !ok {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	return until, nil
}

// CloseTempLogin implements backend.Backend. A container that is gone, or
// is someone else's now, took the login along.
func (b *Backend) CloseTempLogin(ctx context.Context, inst backend.Instance, role string) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	if inst.Proof.Legacy() || !pgsql.IsTempRoleOf(inst.Username, role) {
		return nil // never one of ours
	}
	c, err := b.runningProven(ctx, inst)
	if errors.Is(err, backend.ErrNotOurs) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("closing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	script := `\set ON_ERROR_STOP 1
` + dropTempRolesScript(inst, ` AND t.rolname = `+pgsql.QuoteLiteral(role)) + `\q
`
	if _, err := b.psql(ctx, c.ID, inst, script); err != nil {
		return fmt.Errorf("closing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	return nil
}

// runningProven finds the instance's container, proven to be its own, and
// running.
func (b *Backend) runningProven(ctx context.Context, inst backend.Instance) (container.InspectResponse, error) {
	c, ok, ours, err := b.find(ctx, inst)
	switch {
	case err != nil:
		return c, err
	case !ok:
		return c, fmt.Errorf("container does not exist: %w", backend.ErrNotOurs)
	case !ours:
		return c, fmt.Errorf("%w: %w", notOurs(inst), backend.ErrNotOurs)
	case c.State == nil || !c.State.Running || c.State.Restarting:
		status := "unknown"
		if c.State != nil {
			status = c.State.Status
		}
		return c, fmt.Errorf("container status is %s: %w", status, backend.ErrNotRunning)
	}
	return c, nil
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

// psqlTimeout bounds one psql run in a container.
const psqlTimeout = time.Minute

// psql runs script through psql in the container, as the instance's user
// over the unix socket, and returns its standard output. The database goes
// in PGDATABASE rather than -d, where a name with '=' would be read as a
// connection string. secrets are cut from any error text (psql does not
// echo statements, but a server message might quote one).
func (b *Backend) psql(ctx context.Context, id string, inst backend.Instance, script string, secrets ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, psqlTimeout)
	defer cancel()
	// Terse errors: no "LINE n:" quoting the statement, which may hold a
	// verifier. The script ends with \q, so psql finishes even where the
	// connection cannot be half-closed (ssh:// engines).
	out, code, err := b.execStdin(ctx, id, container.ExecOptions{
		Cmd: []string{"psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", inst.Username},
		Env: []string{"PGDATABASE=" + inst.DBName},
	}, "\\set VERBOSITY terse\n\\set SHOW_CONTEXT never\n"+script)
	if err != nil {
		return "", err
	}
	if code != 0 {
		msg := redact(strings.TrimSpace(out.stderr), secrets...)
		if msg == "" {
			msg = "no error output"
		}
		return "", fmt.Errorf("psql exited with code %d: %s", code, msg)
	}
	return out.stdout, nil
}

// execOutput is what an exec wrote.
type execOutput struct{ stdout, stderr string }

// execStdin runs opts.Cmd in the container with stdin as its standard
// input (which, unlike the command line and environment, shows neither in
// `docker inspect` nor in `ps`), and returns its output and exit code. The
// program must exit by itself once it has read its input.
func (b *Backend) execStdin(ctx context.Context, id string, opts container.ExecOptions, stdin string) (execOutput, int, error) {
	name := opts.Cmd[0]
	opts.AttachStdin, opts.AttachStdout, opts.AttachStderr = true, true, true
	if b.execed != nil {
		b.execed(opts)
	}
	exec, err := b.cli.ContainerExecCreate(ctx, id, opts)
	if err != nil {
		return execOutput{}, 0, fmt.Errorf("starting %s: %w", name, err)
	}
	resp, err := b.cli.ContainerExecAttach(ctx, exec.ID, container.ExecAttachOptions{})
	if err != nil {
		return execOutput{}, 0, fmt.Errorf("attaching to %s: %w", name, err)
	}
	defer resp.Close()
	stop := context.AfterFunc(ctx, resp.Close) // unblocks the reads below
	defer stop()

	werr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(resp.Conn, stdin)
		_ = resp.CloseWrite()
		werr <- err
	}()
	var stdout, stderr bytes.Buffer
	_, rerr := stdcopy.StdCopy(&stdout, &stderr, resp.Reader)
	if err := ctx.Err(); err != nil {
		return execOutput{}, 0, fmt.Errorf("running %s: %w", name, err)
	}
	if rerr != nil {
		return execOutput{}, 0, fmt.Errorf("reading %s's output: %w", name, rerr)
	}
	if err := <-werr; err != nil {
		return execOutput{}, 0, fmt.Errorf("sending input to %s: %w", name, err)
	}
	code, err := b.execExitCode(ctx, exec.ID, name)
	if err != nil {
		return execOutput{}, 0, err
	}
	return execOutput{stdout.String(), stderr.String()}, code, nil
}

// execExitCode waits for an exec whose output has ended to be reported
// finished, and returns its exit code.
func (b *Backend) execExitCode(ctx context.Context, id, name string) (int, error) {
	for {
		in, err := b.cli.ContainerExecInspect(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("inspecting %s: %w", name, err)
		}
		if !in.Running {
			return in.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for %s to exit: %w", name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// redact cuts secrets, and any line that shows a SCRAM verifier, from
// text meant for an error message.
func redact(text string, secrets ...string) string {
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "(redacted)")
		}
	}
	lines := strings.Split(text, "\n")
	kept := lines[:0]
	for _, l := range lines {
		if !strings.Contains(l, "SCRAM-SHA-256$") {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}
