// Package selfhosted holds what the backends that run a whole PostgreSQL
// server per instance (docker, kubernetes) share: the instance's user is
// that server's superuser, so there is no admin login. The provider acts on
// an instance either as the tenant, with the instance password over TCP, or
// from inside, as psql over the server's unix socket (which the official
// image trusts for local connections), through whatever exec channel the
// runtime offers. The SQL always goes in on psql's stdin: an exec's command
// line and environment show in the runtime's inspect output and in `ps`,
// its stdin nowhere.
package selfhosted

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Psql runs script through psql inside the instance's server, as the
// instance's user over the unix socket, and returns its standard output.
// secrets are cut from any error text it returns.
type Psql func(ctx context.Context, script string, secrets ...string) (string, error)

// PsqlTimeout bounds one psql run inside an instance.
const PsqlTimeout = time.Minute

// CheckAttemptTimeout bounds one readiness attempt that runs psql inside the
// instance (CheckVerifier) instead of logging in over TCP: a loaded engine
// or kubelet takes seconds to start an exec, and cut off at a TCP login
// attempt's 2 s every attempt failed the same way until the operation's
// time ran out. While the server is not up, psql fails at once.
const CheckAttemptTimeout = 15 * time.Second

// PsqlCommand is the command line of a psql run as user: quiet, unaligned,
// tuples only, stopping at the first error. The database goes in the
// PGDATABASE environment variable (PsqlEnv) rather than -d, where a name
// with '=' would be read as a connection string.
func PsqlCommand(user string) []string {
	return []string{"psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", user}
}

// PsqlEnv is the environment of a psql run in dbname.
func PsqlEnv(dbname string) []string { return []string{"PGDATABASE=" + dbname} }

// PsqlInput is what goes on psql's stdin for script: terse errors, so no
// "LINE n:" quotes a statement that may hold a verifier. The scripts end
// with \q, so psql finishes even where stdin cannot be half-closed.
func PsqlInput(script string) string {
	return "\\set VERBOSITY terse\n\\set SHOW_CONTEXT never\n" + script
}

// PsqlFailed is the error of a psql run that exited with code.
func PsqlFailed(code int, stderr string, secrets ...string) error {
	msg := Redact(strings.TrimSpace(stderr), secrets...)
	if msg == "" {
		msg = "no error output"
	}
	return fmt.Errorf("psql exited with code %d: %s", code, msg)
}

// Redact cuts secrets, and any line that shows a SCRAM verifier, from
// text meant for an error message.
func Redact(text string, secrets ...string) string {
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

// RandomSecret is a one-time bootstrap password.
func RandomSecret() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err))
	}
	return hex.EncodeToString(b)
}

// ServerSaid is the server's own message in err, without the client's
// wrapping (which names host, user and database again).
func ServerSaid(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s: %s (SQLSTATE %s)", pe.Severity, pe.Message, pe.Code)
	}
	return err.Error()
}

// Login is the tenant's login to an instance at host:port: no TLS (the
// provider knows no CA for a server it just made), each connect bounded
// by attempt.
func Login(host string, port int, user, password, dbname string, attempt time.Duration) pgsql.Target {
	return pgsql.Target{
		Host:           host,
		Port:           port,
		Database:       dbname,
		User:           user,
		Password:       password,
		SSLMode:        "disable",
		ConnectTimeout: attempt,
	}
}

// Personalisation is what readiness attempts learn: whether one got as far
// as sending its ALTER ROLE, and the server's ssl setting once one succeeds.
type Personalisation struct {
	Sent bool
	SSL  string
}

// Personalise logs in with the bootstrap secret in t and replaces it with
// the instance's verifier, which makes the bootstrap secret (in the
// container's config, a Secret) useless; p.Sent is set once the ALTER ROLE
// has gone out. attempt bounds the whole try.
func Personalise(ctx context.Context, t pgsql.Target, verifier string, attempt time.Duration, p *Personalisation) error {
	ctx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	conn, err := t.ConnectOnce(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	p.Sent = true
	// The ssl setting rides in the same message: no extra round trip.
	res, err := conn.PgConn().Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier)+
		"; SELECT current_setting('ssl')").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 2 || len(res[1].Rows) != 1 || len(res[1].Rows[0]) != 1 {
		return fmt.Errorf("unexpected answer to the ALTER ROLE and ssl query: %d results", len(res))
	}
	p.SSL = string(res[1].Rows[0][0])
	return nil
}

// SSLSetting asks the server whether it offers TLS.
func SSLSetting(ctx context.Context, t pgsql.Target, attempt time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	conn, err := t.ConnectOnce(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ssl string
	err = conn.QueryRow(ctx, "SELECT current_setting('ssl')").Scan(&ssl)
	return ssl, err
}

// StoredVerifier reads the instance user's stored password secret from
// inside ("" when it has none) and whether the role may log in now.
func StoredVerifier(ctx context.Context, psql Psql) (secret string, canLogin bool, err error) {
	out, err := psql(ctx,
		`SELECT coalesce(rolpassword, '') || '|' || (rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now()))
		FROM pg_authid WHERE rolname = current_user;`+"\n\\q\n")
	if err != nil {
		return "", false, err
	}
	secret, login, ok := strings.Cut(strings.TrimSpace(out), "|")
	if !ok {
		return "", false, errors.New("unexpected psql output reading the role's password")
	}
	return secret, login == "true" || login == "t", nil
}

// SetVerifier stores verifier as the instance user's password, from inside.
func SetVerifier(ctx context.Context, psql Psql, verifier string) error {
	_, err := psql(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier)+";\n\\q\n", verifier)
	return err
}

// SessionsQuery counts the client sessions other than the asking one. The
// tenant owns the whole server, so sessions count in every database.
const SessionsQuery = `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`

// CountSessions runs SessionsQuery from inside.
func CountSessions(ctx context.Context, psql Psql) (int, error) {
	out, err := psql(ctx, SessionsQuery+";\n\\q\n")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// StopWaiting ends a readiness wait with a verdict that waiting cannot
// change (the server answered: the verifier differs, the login is off).
type StopWaiting struct{ Err error }

func (e *StopWaiting) Error() string { return e.Err.Error() }

// CheckVerifier compares the instance user's stored verifier with want,
// from inside: how a write-only password, kept nowhere, is proven.
func CheckVerifier(ctx context.Context, psql Psql, user, want string) error {
	secret, canLogin, err := StoredVerifier(ctx, psql)
	switch {
	case err != nil:
		return err // the server may still be starting: retried
	case !canLogin:
		return &StopWaiting{Err: &backend.LoginDisabledError{Role: user, Reason: "NOLOGIN or an expired VALID UNTIL"}}
	case want == "" || secret != want:
		return &StopWaiting{Err: fmt.Errorf("the instance's password is not the one this configuration last set: %w", backend.ErrWrongPassword)}
	}
	return nil
}

// LoginError classifies a failed tenant login: a role that may not log
// in, a refused password, or err itself.
func LoginError(user string, err error) error {
	if pgsql.Code(err) == pgsql.CodeInvalidAuthorization && strings.Contains(err.Error(), "not permitted to log in") {
		return fmt.Errorf("logging in as %q: %w", user, &backend.LoginDisabledError{Role: user, Reason: "NOLOGIN"})
	}
	if pgsql.IsAuthFailure(err) {
		return fmt.Errorf("logging in as %q: %w", user, backend.ErrWrongPassword)
	}
	return nil
}
