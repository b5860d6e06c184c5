package pgsql

import (
	"context"
	"net"
	"sync/atomic"
)

// A connect that times out means two different things: nothing answered
// (a paused server, a firewall dropping packets: fail at once, another
// attempt only waits as long again), or the server accepted the connection,
// started a backend and began the login but did not finish it in time (it
// runs, but is overloaded by a flood of logins or starved of CPU: another
// attempt is worth making while the operation has time). pgconn reports both
// as the same timeout, so each attempt carries an answerWatch in its context,
// and the dialled connection records on it whether the server sent anything.

type answerWatch struct{ answered atomic.Bool }

type answerWatchKey struct{}

// watchAnswers returns ctx carrying a fresh answerWatch for one connection
// attempt (read back by serverAnswered).
func watchAnswers(ctx context.Context) context.Context {
	return context.WithValue(ctx, answerWatchKey{}, &answerWatch{})
}

// serverAnswered reports whether the attempt made with ctx received any
// byte from the server.
func serverAnswered(ctx context.Context) bool {
	w, ok := ctx.Value(answerWatchKey{}).(*answerWatch)
	return ok && w.answered.Load()
}

// watchedConn records its first byte read on the attempt's answerWatch.
type watchedConn struct {
	net.Conn
	w *answerWatch
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.w.answered.Load() {
		c.w.answered.Store(true)
	}
	return n, err
}

// watchDial wraps dial so that connections made for an attempt with an
// answerWatch record on it whether the server answered.
func watchDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return c, err
		}
		if w, ok := ctx.Value(answerWatchKey{}).(*answerWatch); ok {
			return &watchedConn{Conn: c, w: w}, nil
		}
		return c, nil
	}
}
