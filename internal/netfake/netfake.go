// Package netfake has network endpoints that misbehave, for tests of how
// the provider fails: a port that accepts and never answers, and one
// nothing listens on.
package netfake

import (
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
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
		return len(held)
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
