// Package netfake has network endpoints that misbehave, for tests of how
// the provider fails: a port that accepts and never answers, one that
// answers and then stalls, and one nothing listens on.
package netfake

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Silent returns the port of a TCP listener on 127.0.0.1 that accepts
// connections and never answers, as a paused server, a dead proxy or a
// port speaking another protocol does. It closes when the test ends.
func Silent(tb testing.TB) int {
	tb.Helper()
	port, _ := SilentCounting(tb)
	return port
}

// SilentCounting is Silent that also counts the connections it accepted,
// so a test can tell that the silence it met was this listener's.
func SilentCounting(tb testing.TB) (port int, accepted func() int) {
	tb.Helper()
	return serve(tb, func(int, net.Conn, func(net.Conn)) {})
}

// serve listens on 127.0.0.1 and hands each accepted connection, with
// its index, to handle (on the accepting goroutine: handle starts its own
// for anything that blocks). Accepted connections, and those handle passes
// to keep, are closed with the listener when the test ends; accepted counts
// the accepted ones.
func serve(tb testing.TB, handle func(n int, c net.Conn, keep func(net.Conn))) (port int, accepted func() int) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	n := 0
	keep := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, c)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			k := n
			n++
			mu.Unlock()
			handle(k, c, keep)
		}
	}()
	tb.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			_ = c.Close()
		}
	})
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		tb.Fatalf("listener address %v is not TCP", l.Addr())
	}
	return addr.Port, func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// ClosedPort returns a port on 127.0.0.1 that nothing listens on.
func ClosedPort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		tb.Fatalf("listener address %v is not TCP", l.Addr())
	}
	port := addr.Port
	_ = l.Close()
	return port
}

// Stalling returns the port of a TCP listener on 127.0.0.1 whose first
// stalls connections are answered and then left hanging, as an overloaded
// server does: it reads the client's first message, sends one byte and
// says nothing more. Later connections are relayed to upstream
// ("host:port"), or left hanging too when upstream is "". accepted counts
// the connections taken.
func Stalling(tb testing.TB, stalls int, upstream string) (port int, accepted func() int) {
	tb.Helper()
	return serve(tb, func(n int, c net.Conn, keep func(net.Conn)) {
		if n >= stalls && upstream != "" {
			go relay(c, upstream, keep)
			return
		}
		go func() {
			buf := make([]byte, 512)
			if _, err := c.Read(buf); err == nil {
				_, _ = c.Write([]byte{'N'})
			}
		}()
	})
}

func relay(c net.Conn, upstream string, keep func(net.Conn)) {
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		_ = c.Close()
		return
	}
	keep(u)
	go func() {
		_, _ = io.Copy(u, c)
		_ = u.Close()
	}()
	_, _ = io.Copy(c, u)
	_ = c.Close()
}
