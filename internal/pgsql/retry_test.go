package pgsql

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

func TestIsTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "53300", Message: "sorry, too many clients already"}, true},
		{fmt.Errorf("connecting: %w", &pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}), true},
		{&pgconn.PgError{Code: "57P01"}, true},
		{fmt.Errorf("receiving: %w", io.ErrUnexpectedEOF), true},
		{fmt.Errorf("reading: %w", syscall.ECONNRESET), true},
		{&pgconn.PgError{Code: CodeInvalidPassword}, false},
		{&pgconn.PgError{Code: CodeUniqueViolation}, false},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), false},
		{context.DeadlineExceeded, false},
		{fmt.Errorf("%w: %w", io.EOF, context.Canceled), false},
		{nil, false},
	} {
		if got := IsTransient(c.err); got != c.want {
			t.Errorf("IsTransient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// An attempt that the deadline cuts short only knows "timeout"; the
// error still names what the attempts before it met, so a server that
// stayed full is reported as full (seen on a loaded machine, where the last
// connect was still in its handshake at the deadline).
func TestRetryDeadlineDuringAnAttempt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	calls := 0
	err := Retry(ctx, func(ctx context.Context) error {
		calls++
		if calls < 3 {
			return &pgconn.PgError{Code: CodeTooManyConnections}
		}
		<-ctx.Done()
		return fmt.Errorf("failed to receive message: timeout: %w", ctx.Err())
	})
	var re *RetryError
	if !errors.As(err, &re) || re.Attempts != 3 {
		t.Fatalf("got %v; want a RetryError of 3 attempts", err)
	}
	if Code(err) != CodeTooManyConnections || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v; want it to unwrap to SQLSTATE 53300 and to the deadline", err)
	}
}

func TestRetryStopsAtAPermanentError(t *testing.T) {
	calls := 0
	perm := &pgconn.PgError{Code: CodeInvalidPassword}
	err := Retry(context.Background(), func(context.Context) error {
		calls++
		if calls < 3 {
			return &pgconn.PgError{Code: CodeTooManyConnections}
		}
		return perm
	})
	var re *RetryError
	if calls != 3 || !errors.As(err, &re) || re.Attempts != 3 || !errors.Is(err, perm) || Code(err) != CodeInvalidPassword {
		t.Fatalf("calls %d, error %v; want 3 calls and a RetryError of 3 attempts wrapping 28P01", calls, err)
	}
	if !strings.Contains(err.Error(), "tried 3 times") {
		t.Errorf("error does not say how often it tried: %v", err)
	}
	calls = 0
	if err := Retry(context.Background(), func(context.Context) error { calls++; return perm }); err != perm || calls != 1 {
		t.Errorf("a first permanent failure: %d calls, %v; want 1 call and the error itself", calls, err)
	}
}

// limitedRole creates a login role that may hold one connection at a time
// (CONNECTION LIMIT 1, so a second login gets 53300 as from a full server)
// and returns its target.
func limitedRole(t *testing.T) Target {
	t.Helper()
	admin := testServer(t)
	conn := testConnect(t, admin)
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	role, password := "pgsql_retry_"+hex.EncodeToString(b), "pw:'@"+hex.EncodeToString(b)
	ctx := context.Background()
	verifier, err := ScramVerifier(password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE ROLE "+QuoteIdent(role)+" LOGIN CONNECTION LIMIT 1 PASSWORD "+QuoteLiteral(verifier)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
		time.Sleep(100 * time.Millisecond)
		if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+QuoteIdent(role)); err != nil {
			t.Errorf("dropping role %s: %v", role, err)
		}
	})
	tenant := admin
	tenant.User, tenant.Password = role, password
	return tenant
}

// A connect that finds no free slot waits with backoff and gets in once
// one frees up.
func TestConnectWaitsForAFreeSlot(t *testing.T) {
	tenant := limitedRole(t)
	held := testConnect(t, tenant)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if c, err := tenant.ConnectOnce(ctx); err == nil || Code(err) != CodeTooManyConnections {
		if c != nil {
			c.Close(ctx)
		}
		t.Fatalf("second login with the slot taken: %v; want SQLSTATE 53300", err)
	}
	const hold = 700 * time.Millisecond
	go func() {
		time.Sleep(hold)
		held.Close(context.Background())
	}()
	start := time.Now()
	conn, err := tenant.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect did not get in after the slot freed: %v", err)
	}
	conn.Close(ctx)
	if took := time.Since(start); took < hold/2 {
		t.Errorf("Connect succeeded after %s, before the slot was freed at %s", took, hold)
	} else {
		t.Logf("Connect got in %s after it started; the slot freed after %s", took.Round(time.Millisecond), hold)
	}
}

// A connect that never finds a slot gives up at the context's deadline and
// says how often and how long it tried, without the password.
func TestConnectGivesUpAtTheDeadline(t *testing.T) {
	tenant := limitedRole(t)
	testConnect(t, tenant)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := tenant.Connect(ctx)
	took := time.Since(start)
	var re *RetryError
	switch {
	case err == nil:
		t.Fatal("Connect succeeded with the role's only slot taken")
	case !errors.As(err, &re) || re.Attempts < 3:
		t.Fatalf("got %v; want a RetryError of several attempts", err)
	case Code(err) != CodeTooManyConnections || !errors.Is(err, context.DeadlineExceeded):
		t.Errorf("got %v; want it to unwrap to SQLSTATE 53300 and to the deadline", err)
	case reach.As(err) == nil || reach.As(err).Reason != reach.Full:
		t.Errorf("got %v (%#v); want a reach.Error of reason Full", err, reach.As(err))
	case took > 2*time.Second:
		t.Errorf("gave up after %s, well past the 1.5 s deadline", took)
	case strings.Contains(err.Error(), tenant.Password):
		t.Errorf("the error shows the password: %v", err)
	}
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
}

// A server that drops the connection while it is being made is tried
// again; one that refuses it is not.
func TestConnectDroppedAndRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		t.Fatalf("listener address %v is not TCP", l.Addr())
	}
	port := addr.Port
	target := Target{Host: "127.0.0.1", Port: port, Database: "d", User: "u", Password: "secret-pw", SSLMode: "disable"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = target.Connect(ctx)
	var re *RetryError
	if !errors.As(err, &re) || re.Attempts < 3 || int(accepted.Load()) < re.Attempts {
		t.Errorf("dropped while connecting: %v after %d connections; want a RetryError of several attempts, each a connection", err, accepted.Load())
	}
	if err != nil && strings.Contains(err.Error(), "secret-pw") {
		t.Errorf("the error shows the password: %v", err)
	}
	l.Close()

	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	start := time.Now()
	_, err = target.Connect(ctx2)
	if err == nil || errors.As(err, &re) || time.Since(start) > time.Second {
		t.Errorf("refused: %v after %s; want one failed attempt at once", err, time.Since(start))
	}
}

// The pool waits for a slot as Connect does, and closes connections that
// sit idle.
func TestPoolWaitsAndReleasesIdle(t *testing.T) {
	tenant := limitedRole(t)
	held := testConnect(t, tenant)
	p := tenant.NewPool(2)
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		time.Sleep(500 * time.Millisecond)
		held.Close(context.Background())
	}()
	var one int
	if err := p.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query through the pool: %d, %v", one, err)
	}
	p.mu.Lock()
	inner := p.pool
	p.mu.Unlock()
	if n := inner.Stat().TotalConns(); n != 1 {
		t.Fatalf("pool holds %d connections after one query, want 1", n)
	}
	deadline := time.Now().Add(poolIdleTime + 4*poolHealthCheck + time.Second)
	for inner.Stat().TotalConns() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pool still holds %d connections %s after its last use", inner.Stat().TotalConns(), poolIdleTime+4*poolHealthCheck+time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rows, err := p.Query(ctx, "SELECT generate_series(1, 3)")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if rows.Err() != nil || n != 3 || inner.Stat().AcquiredConns() != 0 {
		t.Errorf("query: %d rows, %v, %d connections still acquired after the last row", n, rows.Err(), inner.Stat().AcquiredConns())
	}
}
