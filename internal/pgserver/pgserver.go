// Package pgserver starts a throwaway PostgreSQL 15 server of its own, for
// tests and the bench that must not disturb the shared test server: one
// that is killed, or one with a small max_connections. It runs initdb and
// pg_ctl as the postgres OS user (runuser), so it needs root, the postgres
// user and /usr/lib/postgresql/15/bin, which `make testenv` installs.
package pgserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// BinDir holds the server binaries.
const BinDir = "/usr/lib/postgresql/15/bin"

// Options configure a server.
type Options struct {
	// Superuser is the bootstrap superuser's name; "" means postgres.
	Superuser string
	// MaxConnections is max_connections; 0 leaves the default (100).
	MaxConnections int
	// Conf is appended to postgresql.conf.
	Conf string
}

// Server is a running (or stopped) private server.
type Server struct {
	Base, Data, Log string
	// Target is the superuser's login over TCP on 127.0.0.1, to the
	// postgres database, with sslmode disable.
	Target pgsql.Target
}

func asPostgres(name string, args ...string) *exec.Cmd {
	return exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(BinDir, name)}, args...)...)
}

// FreePort is a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, fmt.Errorf("listener address %v is not TCP", l.Addr())
	}
	return addr.Port, nil
}

// Start runs initdb (scram-sha-256 over TCP, a random password, no fsync:
// these servers hold nothing worth a crash of the machine) on a free
// loopback port and starts the server. On error nothing is left running;
// on success the caller must Remove it.
func Start(opts Options) (s *Server, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a private PostgreSQL server runs as the postgres OS user, which needs root (runuser)")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("OS user postgres: %w (make testenv creates it)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if opts.Superuser == "" {
		opts.Superuser = "postgres"
	}
	base, err := os.MkdirTemp("", "postgraas-pgserver-")
	if err != nil {
		return nil, err
	}
	s = &Server{Base: base, Data: filepath.Join(base, "data"), Log: filepath.Join(base, "postgres.log")}
	defer func() {
		if err != nil {
			_ = s.Remove() // best effort: the start's error is the one to report
		}
	}()
	sock := filepath.Join(base, "sock")
	pwfile := filepath.Join(base, "pwfile")
	pw := make([]byte, 12)
	_, _ = rand.Read(pw)
	password := "pw" + hex.EncodeToString(pw)
	if err := os.Mkdir(sock, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return nil, err
	}
	for _, f := range []string{base, sock, pwfile} {
		if err := os.Chown(f, uid, gid); err != nil {
			return nil, err
		}
	}
	if out, err := asPostgres("initdb", "-D", s.Data, "-U", opts.Superuser, "--pwfile="+pwfile, "--auth-host=scram-sha-256",
		"--auth-local=trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	_ = os.Remove(pwfile)
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`
# postgraas private test server
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
password_encryption = 'scram-sha-256'
# An immediate shutdown is a crash of the server, not of the machine: what
# reached the OS survives it, so fsync can go. synchronous_commit stays on,
# or a crash would lose commits the provider was told had happened.
fsync = off
full_page_writes = off
`, port, sock)
	if opts.MaxConnections > 0 {
		conf += fmt.Sprintf("max_connections = %d\n", opts.MaxConnections)
	}
	conf += opts.Conf + "\n"
	f, err := os.OpenFile(filepath.Join(s.Data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	s.Target = pgsql.Target{Host: "127.0.0.1", Port: port, Database: "postgres", User: opts.Superuser, Password: password, SSLMode: "disable"}
	return s, s.Start()
}

// Start starts the stopped server and waits until it takes connections.
func (s *Server) Start() error {
	if out, err := asPostgres("pg_ctl", "-D", s.Data, "-l", s.Log, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		return fmt.Errorf("starting the private PostgreSQL server: %v\n%s", err, out)
	}
	return nil
}

// Kill stops the server at once (immediate shutdown: a crash of the
// server, not of the machine).
func (s *Server) Kill() error {
	if out, err := asPostgres("pg_ctl", "-D", s.Data, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("stopping the private PostgreSQL server: %v\n%s", err, out)
	}
	return nil
}

// Remove stops the server if it runs and deletes its files. It returns
// what went wrong stopping it, for the caller to log.
func (s *Server) Remove() error {
	var err error
	if _, serr := os.Stat(filepath.Join(s.Data, "postmaster.pid")); serr == nil {
		if out, kerr := asPostgres("pg_ctl", "-D", s.Data, "-m", "immediate", "-w", "stop").CombinedOutput(); kerr != nil &&
			!bytes.Contains(out, []byte("Is server running?")) {
			err = fmt.Errorf("stopping the private PostgreSQL server: %v: %s", kerr, out)
		}
	}
	_ = os.RemoveAll(s.Base)
	return err
}

// LogTail is the end of the server's log.
func (s *Server) LogTail(lines int) string {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", s.Log, err)
	}
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// Watcher polls the server for the number of client connections and keeps
// the highest count seen.
type Watcher struct {
	stop, done chan struct{}
	peak, n    atomic.Int64
	backlog    atomic.Int64 // peak length of the listen socket's accept queue
	err        error        // after done
}

// WatchConnections polls pg_stat_activity every interval on one
// connection of its own (not counted), until Stop. target must be a
// superuser, so it gets in on a full server (reserved slots).
func WatchConnections(ctx context.Context, target pgsql.Target, interval time.Duration) (*Watcher, error) {
	conn, err := target.Connect(ctx)
	if err != nil {
		return nil, err
	}
	w := &Watcher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			var n int64
			qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := conn.QueryRow(qctx, `SELECT count(*) FROM pg_stat_activity
				WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
			cancel()
			if err != nil {
				w.err = err
				return
			}
			w.n.Add(1)
			if n > w.peak.Load() {
				w.peak.Store(n)
			}
			if q := acceptQueue(target.Port); q > w.backlog.Load() {
				w.backlog.Store(q)
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w, nil
}

// Stop ends the polling and returns the peak, the number of samples, and
// an error that ended the polling early.
func (w *Watcher) Stop() (peak, samples int64, err error) {
	close(w.stop)
	<-w.done
	return w.peak.Load(), w.n.Load(), w.err
}

// BacklogPeak is the most connections seen at once in the server's accept
// queue: accepted by the kernel, not yet by the postmaster, which hands
// them out one at a time, so a starved postmaster shows here as logins
// that wait with no answer (0 where /proc/net/tcp cannot be read).
func (w *Watcher) BacklogPeak() int64 { return w.backlog.Load() }

// acceptQueue reads the accept queue length of the listening TCP socket on
// port from /proc/net/tcp and tcp6 (the rx_queue column of a socket in
// state 0A, LISTEN); -1 when none is found.
func acceptQueue(port int) int64 {
	want := fmt.Sprintf(":%04X", port)
	most := int64(-1)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fs := strings.Fields(line)
			if len(fs) < 5 || fs[3] != "0A" || !strings.HasSuffix(fs[1], want) {
				continue
			}
			_, rx, ok := strings.Cut(fs[4], ":")
			if n, err := strconv.ParseInt(rx, 16, 64); ok && err == nil && n > most {
				most = n
			}
		}
	}
	return most
}

// CountLog counts the occurrences of substr in the server's log.
func (s *Server) CountLog(substr string) int {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte(substr))
}
