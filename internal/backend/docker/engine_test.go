package docker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/netfake"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// An engine that does not answer fails every operation within the
// connect timeout, together, and says which engine and why (issue 9).

// fakeEngine listens on TCP and, until forwarding is switched on, accepts
// connections and holds them without a byte in reply, as an engine behind
// a dead proxy or in a paused VM does. Forwarding relays new connections
// to target (a DOCKER_HOST) and counts the pings relayed. Unlike
// netfake.Silent it counts connections, which shows a ping is shared, and
// can come alive, which shows a failure is not remembered.
type fakeEngine struct {
	l        net.Listener
	target   string
	forward  atomic.Bool
	accepted atomic.Int32
	pings    atomic.Int32
	mu       sync.Mutex
	conns    []net.Conn
}

func newFakeEngine(t *testing.T, target string) *fakeEngine {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEngine{l: l, target: target}
	go f.serve()
	t.Cleanup(func() {
		_ = l.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.conns {
			_ = c.Close()
		}
	})
	return f
}

func (f *fakeEngine) host() string { return "tcp://" + f.l.Addr().String() }

func (f *fakeEngine) keep(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns = append(f.conns, c)
}

func (f *fakeEngine) serve() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		f.keep(c)
		if f.forward.Load() {
			go f.relay(c)
		}
	}
}

func (f *fakeEngine) relay(c net.Conn) {
	u, err := client.ParseHostURL(f.target)
	if err != nil {
		_ = c.Close()
		return
	}
	up, err := net.Dial(u.Scheme, u.Host)
	if err != nil {
		_ = c.Close()
		return
	}
	f.keep(up)
	go func() {
		_, _ = io.Copy(c, up)
		_ = c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		// A request line is written whole, so it arrives in one read.
		f.pings.Add(int32(bytes.Count(buf[:n], []byte(" /_ping HTTP/"))))
		if _, werr := up.Write(buf[:n]); werr != nil || err != nil {
			_ = up.Close()
			return
		}
	}
}

// everyCall calls every method that talks to the engine at once, with
// inspects calls of Inspect among them, and returns their errors by name.
func everyCall(b *Backend, inspects int) map[string]error {
	inst := backend.Instance{ID: 7, Name: "pgtest-x", DBName: "d", Username: "u", ContainerID: "pgtest-x",
		Proof: backend.Proof{ID: 7, Value: "00"}}
	spec := backend.Spec{InstanceID: 7, Proof: inst.Proof, Name: "pgtest-x", DBName: "d", Username: "u", Password: "p"}
	auth := backend.Auth{Password: "p"}
	role := pgsql.NewTempRoleName(inst.Username)
	calls := map[string]func(ctx context.Context) error{
		"Create":         func(ctx context.Context) error { _, err := b.Create(ctx, spec); return err },
		"Delete":         func(ctx context.Context) error { return b.Delete(ctx, inst, auth, false) },
		"Purge":          func(ctx context.Context) error { return b.Purge(ctx, inst) },
		"SetPassword":    func(ctx context.Context) error { return b.SetPassword(ctx, inst, auth, "v") },
		"Authenticate":   func(ctx context.Context) error { return b.Authenticate(ctx, inst, auth) },
		"OpenTempLogin":  func(ctx context.Context) error { _, err := b.OpenTempLogin(ctx, inst, time.Minute); return err },
		"RenewTempLogin": func(ctx context.Context) error { _, err := b.RenewTempLogin(ctx, inst, role, time.Minute); return err },
		"CloseTempLogin": func(ctx context.Context) error { return b.CloseTempLogin(ctx, inst, role) },
		"ListContainers": func(ctx context.Context) error { _, err := b.ListContainers(ctx); return err },
		"Check":          b.Check,
	}
	for i := range inspects {
		calls["Inspect#"+string(rune('a'+i))] = func(ctx context.Context) error { _, err := b.Inspect(ctx, inst); return err }
	}
	var mu sync.Mutex
	errs := make(map[string]error, len(calls))
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The operation's own limit is far off: only the connect
			// timeout may end these calls.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			err := call(ctx)
			mu.Lock()
			defer mu.Unlock()
			errs[name] = err
		}()
	}
	wg.Wait()
	return errs
}

// assertReach checks that every call failed as the engine at host,
// for reason, under timeout, in a text that ends cleanly.
func assertReach(t *testing.T, errs map[string]error, host string, reason reach.Reason, timeout time.Duration) {
	t.Helper()
	for name, err := range errs {
		r := reach.As(err)
		if r == nil || r.Component != reach.DockerEngine || r.Reason != reason || r.Address != host || r.Timeout != timeout {
			t.Errorf("%s: want a %s reach.Error (%v) for %s, got %#v: %v", name, reach.DockerEngine, reason, host, r, err)
			continue
		}
		// The provider goes on with ". Check …": no "running?. Check".
		if msg := r.Error(); strings.ContainsAny(msg, "?\n") || strings.HasSuffix(msg, ".") {
			t.Errorf("%s: the message does not end cleanly: %q", name, msg)
		}
	}
}

// An engine that accepts but never answers: every operation waiting on it
// fails after one connect timeout, together, on one shared ping; the next
// operation tries again. Before, each waited for its own operation's
// timeout (20 minutes for a create).
func TestEngineThatNeverAnswers(t *testing.T) {
	t.Parallel()
	f := newFakeEngine(t, "")
	const timeout = time.Second
	b, err := New(Config{Host: f.host(), ConnectTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)

	start := time.Now()
	errs := everyCall(b, 8)
	took := time.Since(start)
	t.Logf("%d calls (8 Inspects and every other method) failed after %v, connect timeout %v, on %d connection(s): %v",
		len(errs), took.Round(time.Millisecond), timeout, f.accepted.Load(), errs["Inspect#a"])
	assertReach(t, errs, f.host(), reach.Timeout, timeout)
	if took < timeout {
		t.Errorf("failed after %v, before the connect timeout", took)
	}
	// One after another they would take len(errs) seconds.
	if limit := 3*timeout + 3*time.Second; took > limit {
		t.Errorf("%d calls took %v to fail, more than %v", len(errs), took, limit)
	}
	if n := f.accepted.Load(); n != 1 {
		t.Errorf("%d connections for %d calls: want one shared ping", n, len(errs))
	}

	// A failure is not remembered: the next operation pings again.
	_, err = b.Inspect(ctxFor(t, time.Minute), backend.Instance{Name: "x", ContainerID: "x"})
	if r := reach.As(err); r == nil || r.Reason != reach.Timeout {
		t.Errorf("second Inspect: want a timeout, got %v", err)
	}
	if n := f.accepted.Load(); n != 2 {
		t.Errorf("second Inspect: %d connections in all, want 2", n)
	}
}

// Nothing listening fails at once, well within the connect timeout, as
// refused; something that is no engine fails as what it is.
func TestEngineRefusedOrNotAnEngine(t *testing.T) {
	t.Parallel()
	closedPort := fmt.Sprintf("tcp://127.0.0.1:%d", netfake.ClosedPort(t))
	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)

	const timeout = 5 * time.Second
	for _, c := range []struct {
		host   string
		reason reach.Reason
	}{
		{closedPort, reach.Refused},
		{"unix://" + t.TempDir() + "/no-docker.sock", reach.Refused},
		{"tcp://" + web.Listener.Addr().String(), reach.Other},
	} {
		b, err := New(Config{Host: c.host, ConnectTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		errs := everyCall(b, 8)
		took := time.Since(start)
		b.Close()
		t.Logf("%s: %d calls failed after %v: %v", c.host, len(errs), took.Round(time.Millisecond), errs["Inspect#a"])
		assertReach(t, errs, c.host, c.reason, timeout)
		if took > timeout/2 {
			t.Errorf("%s: failing took %v; nothing should wait for the connect timeout (%v)", c.host, took, timeout)
		}
	}
}

// An engine that answers after a failed ping serves the next operation;
// once it has answered, operations do not ping again (nor does the client
// to negotiate the API version).
func TestEngineAnswersAfterAFailure(t *testing.T) {
	t.Parallel()
	f := newFakeEngine(t, os.Getenv("DOCKER_HOST"))
	e := newEnv(t, func(c *Config) { c.Host, c.ConnectTimeout = f.host(), time.Second })
	inst := backend.Instance{Name: "pgtest-none-" + randHex(4)}
	if _, err := e.b.Inspect(ctxFor(t, time.Minute), inst); reach.As(err) == nil {
		t.Fatalf("silent engine: want a reach.Error, got %v", err)
	}
	f.forward.Store(true)
	for i := range 5 {
		st, err := e.b.Inspect(ctxFor(t, time.Minute), inst)
		if err != nil || st.Exists {
			t.Fatalf("Inspect %d through the engine: %+v, %v", i, st, err)
		}
	}
	if _, err := e.b.ListContainers(ctxFor(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := f.pings.Load(); n != 1 {
		t.Errorf("%d pings reached the engine for 6 calls, want 1", n)
	}
}

// Diagnostics name the engine as configured, never the client's internal
// stand-in for ssh:// nor a password.
func TestEngineAddress(t *testing.T) {
	for host, want := range map[string]string{
		"ssh://me@192.0.2.1:2222":        "ssh://me@192.0.2.1:2222",
		"tcp://192.0.2.1:2375":           "tcp://192.0.2.1:2375",
		"tcp://me:secret@192.0.2.1:2375": "tcp://me:xxxxx@192.0.2.1:2375",
		"unix:///run/docker.sock":        "unix:///run/docker.sock",
	} {
		b, err := New(Config{Host: host})
		if err != nil {
			t.Errorf("%s: %v", host, err)
			continue
		}
		b.Close()
		if b.engineAddr != want {
			t.Errorf("%s: engine address %q, want %q", host, b.engineAddr, want)
		}
	}
}
