package pgsql

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/netfake"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// Every way a login fails comes back as a *reach.Error naming the
// component and the reason, on a real server.
func TestConnectFailureReasons(t *testing.T) {
	t.Parallel()
	srv := testServer(t)
	srv.Component = reach.MetaDB
	srv.ConnectTimeout = time.Second
	wrong, none, nodb, refused, silent := srv, srv, srv, srv, srv
	wrong.Password = "wrong-" + srv.Password
	none.Password = ""
	nodb.Database = "no_such_database_x"
	refused.Host, refused.Port = "127.0.0.1", netfake.ClosedPort(t)
	silent.Host, silent.Port = "127.0.0.1", netfake.Silent(t)
	for _, c := range []struct {
		what   string
		target Target
		reason reach.Reason
	}{
		{"wrong password", wrong, reach.WrongPassword},
		{"no password", none, reach.NoPassword},
		{"missing database", nodb, reach.NoDatabase},
		{"closed port", refused, reach.Refused},
		{"silent listener", silent, reach.Timeout},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		_, err := c.target.Connect(ctx)
		took := time.Since(start)
		cancel()
		r := reach.As(err)
		if r == nil || r.Reason != c.reason || r.Component != reach.MetaDB || r.Timeout != time.Second {
			t.Errorf("%s: %v (%#v), want reason %v of the meta DB", c.what, err, r, c.reason)
			continue
		}
		if r.Reason == reach.Timeout && (took < 900*time.Millisecond || took > 10*time.Second) {
			t.Errorf("%s: failed after %s with a 1s connect timeout", c.what, took)
		}
		t.Logf("%s: %s after %s", c.what, r.Reason, took.Round(time.Millisecond))
	}
	// The caller's own deadline is the operation's, not the connect
	// timeout: it is not reported as one.
	slow := silent
	slow.ConnectTimeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := slow.Connect(ctx); reach.As(err) != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("operation deadline before the connect timeout: %v", err)
	}
}

// Callers of a pool that meet a server that never answers share one
// connect attempt: eight of them fail together after one connect timeout,
// not in waves of the pool's size.
func TestPoolCallersFailTogether(t *testing.T) {
	t.Parallel()
	target := Target{Host: "127.0.0.1", Port: netfake.Silent(t), Database: "d", User: "u", Password: "p",
		SSLMode: "disable", ConnectTimeout: time.Second, Component: reach.ClusterAdmin}
	p := target.NewPool(2)
	defer p.Close()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, errs[i] = p.Acquire(ctx)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if r := reach.As(err); r == nil || r.Reason != reach.Timeout || r.Component != reach.ClusterAdmin {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	t.Logf("8 callers failed after %s (connect timeout 1s, pool of 2)", took.Round(time.Millisecond))
	// In waves of 2 they would take 4 s; a loaded machine gets slack.
	if took > 3500*time.Millisecond {
		t.Errorf("8 callers took %s to fail with a 1s connect timeout", took)
	}
}

func TestSharedRunsOnceForWaiters(t *testing.T) {
	var s Shared
	var runs int
	var mu sync.Mutex
	release := make(chan struct{})
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Do(context.Background(), func(context.Context) error {
				mu.Lock()
				runs++
				mu.Unlock()
				<-release
				return boom
			})
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	if runs != 1 {
		t.Errorf("%d runs for 5 callers arriving together, want 1", runs)
	}
	for i, err := range errs {
		if !errors.Is(err, boom) {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	// A failure is not remembered.
	if err := s.Do(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("after a failure: %v", err)
	}
}

// A server that accepts and begins the login but does not finish it within
// the connect timeout is overloaded, not gone: the connect tries again
// within the operation's time and gets through once the server keeps up;
// one that never finishes is reported as Slow, not as "no answer". A
// listener that answers nothing still fails at the first connect timeout.
func TestSlowLoginIsRetried(t *testing.T) {
	t.Parallel()
	srv := testServer(t)
	srv.Component = reach.MetaDB
	srv.ConnectTimeout = 500 * time.Millisecond
	upstream := net.JoinHostPort(srv.Host, strconv.Itoa(srv.Port))

	for _, via := range []string{"connect", "pool"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			slow := srv
			port, accepted := netfake.Stalling(t, 2, upstream)
			slow.Host, slow.Port = "127.0.0.1", port
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var err error
			if via == "connect" {
				var c *pgx.Conn
				if c, err = slow.Connect(ctx); err == nil {
					err = c.Ping(ctx)
					_ = c.Close(ctx)
				}
			} else {
				p := slow.NewPool(2)
				defer p.Close()
				_, err = p.Exec(ctx, "SELECT 1")
			}
			if err != nil {
				t.Fatalf("after two stalled logins: %v", err)
			}
			// pgx may try TLS and then plain text on one attempt, so
			// count at least: two stalled attempts and the one that worked.
			if n := accepted(); n < 3 {
				t.Errorf("%d connections accepted, want the 2 stalled ones and one more", n)
			}
		})
	}

	t.Run("never finishes", func(t *testing.T) {
		t.Parallel()
		stalled := srv
		port, accepted := netfake.Stalling(t, 0, "")
		stalled.Host, stalled.Port = "127.0.0.1", port
		ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
		defer cancel()
		_, err := stalled.Connect(ctx)
		r := reach.As(err)
		var re *RetryError
		if r == nil || r.Reason != reach.Slow || !errors.As(err, &re) || re.Attempts < 2 {
			t.Fatalf("a login that never finishes: %v (%#v), want reason Slow after more than one attempt", err, r)
		}
		if !strings.Contains(err.Error(), "began the login but did not finish it within the connect timeout of 500ms") {
			t.Errorf("error does not say the login began and did not finish: %v", err)
		}
		t.Logf("%d connections, %d attempts: %v", accepted(), re.Attempts, err)
	})

	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		silent := srv
		port, accepted := netfake.SilentCounting(t)
		silent.Host, silent.Port = "127.0.0.1", port
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := silent.Connect(ctx)
		if r := reach.As(err); r == nil || r.Reason != reach.Timeout {
			t.Fatalf("a silent listener: %v, want reason Timeout", err)
		}
		if n := accepted(); n != 1 {
			t.Errorf("a silent listener got %d connections, want 1 (no retry of a server that never answered)", n)
		}
	})
}
