package pgsql

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// SSLModes are the libpq sslmode values accepted in configuration.
var SSLModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// Target is one PostgreSQL login: where, as whom, into which database.
type Target struct {
	Host     string
	Port     int
	Database string
	User     string
	Password string
	SSLMode  string
	// ConnectTimeout bounds one connection attempt; zero means
	// reach.DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Component names the login in connection failures (*reach.Error);
	// "" means an instance login.
	Component reach.Component
	// Dial, when set, opens the connection to Host:Port instead of a
	// plain TCP dial (a meta DB container on an ssh:// engine is reached
	// through ssh, at the engine's loopback).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// String names the target for diagnostics; it never contains the password.
func (t Target) String() string {
	return fmt.Sprintf("%s@%s:%d/%s", t.User, t.Host, t.Port, t.Database)
}

// dsn builds a keyword/value connection string with every value quoted, so
// passwords with '@', '/', ':' or quotes need no URI escaping
// (postgraas_server bug 8).
func (t Target) dsn() string {
	q := func(v string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	timeout := t.connectTimeout()
	sslmode := t.sslmode()
	parts := []string{
		"host=" + q(t.Host),
		"port=" + strconv.Itoa(t.Port),
		"dbname=" + q(t.Database),
		"user=" + q(t.User),
		"password=" + q(t.Password),
		"sslmode=" + q(sslmode),
		"connect_timeout=" + strconv.Itoa(int((timeout+time.Second-1)/time.Second)),
		"application_name='terraform-provider-postgraas'",
	}
	return strings.Join(parts, " ")
}

func (t Target) sslmode() string {
	if t.SSLMode == "" {
		return "prefer"
	}
	return t.SSLMode
}

// ConnConfig is the pgx configuration for a single connection.
func (t Target) ConnConfig() (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(t.dsn())
	if err != nil {
		// The parse error would quote the connection string: keep it out.
		return nil, fmt.Errorf("invalid connection settings for %s", t)
	}
	t.setDial(&cfg.Config)
	return cfg, nil
}

// Connect opens one connection (used for logins as a tenant, which cannot
// be pooled with the admin's), retrying with backoff while the server is
// full, starting up, or drops the connection (see Retry), within ctx.
func (t Target) Connect(ctx context.Context) (*pgx.Conn, error) {
	var conn *pgx.Conn
	err := Retry(ctx, func(ctx context.Context) error {
		var err error
		conn, err = t.ConnectOnce(ctx)
		return err
	})
	return conn, err
}

// ConnectOnce makes a single connection attempt, for loops that poll a
// server until it takes logins and so do their own retrying.
func (t Target) ConnectOnce(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := t.ConnConfig()
	if err != nil {
		return nil, err
	}
	ctx = watchAnswers(ctx)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	return conn, t.connectFailure(ctx, err)
}

// CloseAndWait ends a session and returns once its server process has left:
// it sends Terminate and reads until the server closes the socket, which
// PostgreSQL does only after the process has left the process array and
// pg_stat_activity. A plain Close returns at once, so a DROP DATABASE right
// after it could still see the session and sleep (in 100 ms steps) until it
// went. Waiting is bounded by wait and ctx; past them the session is simply
// closed.
func CloseAndWait(ctx context.Context, conn *pgx.Conn, wait time.Duration) {
	hc, err := conn.PgConn().Hijack()
	if err != nil {
		_ = conn.Close(ctx)
		return
	}
	nc := hc.Conn
	defer nc.Close()
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	// Terminate: type 'X', length 4, no body.
	if _, err := nc.Write([]byte{'X', 0, 0, 0, 4}); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, nc)
}

// Pool idle settings: a connection unused for poolIdleTime is closed (the
// health check looks every poolHealthCheck), so a provider process that
// waits (for a container, for another run's lease, for Terraform) does not
// keep a slot of the server's max_connections.
const (
	poolIdleTime    = time.Second
	poolHealthCheck = 250 * time.Millisecond
)

// PoolConfig is a bounded pool that never keeps a connection idle in a
// transaction for long, even if a caller forgets to end one, and closes
// connections that sit idle.
func (t Target) PoolConfig(maxConns int32) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(t.dsn())
	if err != nil {
		return nil, fmt.Errorf("invalid connection settings for %s", t)
	}
	t.setDial(&cfg.ConnConfig.Config)
	cfg.MaxConns = maxConns
	cfg.MinConns = 0
	cfg.MaxConnIdleTime = poolIdleTime
	cfg.HealthCheckPeriod = poolHealthCheck
	cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = "60000"
	return cfg, nil
}

func (t Target) setDial(cfg *pgconn.Config) {
	dial := cfg.DialFunc
	if t.Dial != nil {
		dial = pgconn.DialFunc(t.Dial)
	}
	cfg.DialFunc = watchDial(dial)
}

// SameLogin reports whether t and o log in to the same server as the same
// user with the same password and TLS mode, so one pool can serve both
// (the database may differ: see Pool).
func (t Target) SameLogin(o Target) bool {
	return t.Host == o.Host && t.Port == o.Port && t.User == o.User && t.Password == o.Password &&
		t.sslmode() == o.sslmode() && t.Dial == nil && o.Dial == nil
}

// Code returns the SQLSTATE of a server error, or "".
func Code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// SQLSTATEs the provider reacts to.
const (
	CodeInvalidPassword       = "28P01"
	CodeInvalidAuthorization  = "28000"
	CodeInsufficientPrivilege = "42501"
	CodeDuplicateObject       = "42710" // role exists
	CodeDuplicateDatabase     = "42P04"
	CodeUniqueViolation       = "23505"
	CodeUndefinedObject       = "42704" // role does not exist
	CodeInvalidCatalogName    = "3D000" // database does not exist
	CodeObjectInUse           = "55006" // database is being accessed by other users
)

// IsAuthFailure reports whether a login was refused for its credentials.
func IsAuthFailure(err error) bool {
	c := Code(err)
	return c == CodeInvalidPassword || c == CodeInvalidAuthorization
}
