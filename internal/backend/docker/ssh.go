package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/client"
)

// ssh:// Docker hosts work like the docker CLI's: every connection is one
// run of the system ssh client that runs `docker system dial-stdio` on the
// remote host, which relays its stdin/stdout to the remote engine's socket.
// The system client brings the user's ~/.ssh/config, agent and known_hosts
// along, which a Go ssh library would not. (The CLI's own implementation,
// cli/connhelper, would pull the whole docker CLI module in.)

const (
	// sshConnectTimeout is passed as ssh's ConnectTimeout, as the CLI does.
	sshConnectTimeout = 30 * time.Second
	// sshExitWait bounds how long a read that hit EOF waits for ssh to
	// exit, to tell a clean close from a failure (and report its stderr).
	sshExitWait = 2 * time.Second
	// sshKillAfter is how long Close waits after SIGTERM before SIGKILL.
	sshKillAfter = 2 * time.Second
	// sshStderrMax bounds the ssh stderr kept per connection (the tail).
	sshStderrMax = 4096
	// sshMaxConns caps concurrent connections (ssh processes). sshd's
	// default MaxStartups (10:30:100) starts dropping new connections at
	// 10 unauthenticated ones, which a burst of parallel creates reaches.
	sshMaxConns = 8
	// sshDummyHost is the HTTP host of requests; the dialer ignores it.
	sshDummyHost = "http://docker.invalid"
)

// sshTarget is a parsed ssh://[user@]host[:port][/socket-path] address.
type sshTarget struct {
	url        string // as given, for messages
	user, host string
	port       string
	// socket is the remote engine's socket path, "" for the remote
	// docker CLI's default (its DOCKER_HOST, else /var/run/docker.sock).
	socket string
}

func parseSSHHost(s string) (sshTarget, error) {
	u, err := url.Parse(s)
	if err != nil {
		// Not %w: url.Error repeats the address, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return sshTarget{}, fmt.Errorf("docker host: invalid ssh:// address: %v", err)
	}
	shown := u.Redacted()
	bad := func(why string) (sshTarget, error) {
		return sshTarget{}, fmt.Errorf("docker host %q: %s", shown, why)
	}
	if u.Scheme != "ssh" {
		return bad("not an ssh:// address")
	}
	t := sshTarget{url: shown, host: u.Hostname(), port: u.Port()}
	if u.User != nil {
		t.user = u.User.Username()
		if _, ok := u.User.Password(); ok {
			return bad("a password in the address is not supported; use a key (ssh-agent or ~/.ssh/config)")
		}
	}
	if t.host == "" {
		return bad("no host name")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return bad("only ssh://[user@]host[:port][/socket-path] is supported")
	}
	// ssh gets them as separate arguments after -l and --, so neither can
	// become an option; still, refuse what no real name contains.
	for _, v := range []string{t.user, t.host} {
		if strings.HasPrefix(v, "-") || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return bad(fmt.Sprintf("invalid user or host name %q", v))
		}
	}
	if strings.Trim(u.Path, "/") != "" {
		t.socket = u.Path
	}
	return t, nil
}

// args are the ssh arguments, in the order the docker CLI uses:
// [-l user] [-p port] -o ConnectTimeout=30 -T -- host <remote command>.
// -T: no pseudo-terminal, which would mangle the byte stream.
func (t sshTarget) args() []string {
	// ssh hands the remote command to the remote user's shell as one
	// string: quote what comes from the address.
	remote := "docker system dial-stdio"
	if t.socket != "" {
		remote = "docker " + shellQuote("--host=unix://"+t.socket) + " system dial-stdio"
	}
	return append(t.options(), "--", t.host, remote)
}

// forwardArgs are the ssh arguments that relay stdin/stdout to addr as the
// remote host sees it (ssh -W, which needs the server's default
// AllowTcpForwarding): how a port published on the engine's loopback is
// reached.
func (t sshTarget) forwardArgs(addr string) []string {
	return append(t.options(), "-W", addr, "--", t.host)
}

// options are the arguments before the host: [-l user] [-p port]
// -o ConnectTimeout=30 -T.
func (t sshTarget) options() []string {
	var a []string
	if t.user != "" {
		a = append(a, "-l", t.user)
	}
	if t.port != "" {
		a = append(a, "-p", t.port)
	}
	return append(a, "-o", fmt.Sprintf("ConnectTimeout=%d", int(sshConnectTimeout/time.Second)), "-T")
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// sshClientOpts configures the Docker client to reach the engine through
// ssh. TLS settings from the environment do not apply: ssh encrypts.
func sshClientOpts(t sshTarget) []client.Opt {
	tr := &http.Transport{
		MaxIdleConns:        6,
		MaxIdleConnsPerHost: 6, // every connection goes to the one "host"
		MaxConnsPerHost:     sshMaxConns,
		IdleConnTimeout:     30 * time.Second,
	}
	return []client.Opt{
		client.WithHTTPClient(&http.Client{Transport: tr, CheckRedirect: client.CheckRedirect}),
		client.WithHost(sshDummyHost),
		// After WithHost, which sets a TCP dialer and the environment's
		// HTTP proxy for http:// hosts: neither applies to a pipe.
		func(*client.Client) error {
			tr.DialContext = t.dial
			tr.Proxy = nil
			return nil
		},
		client.WithVersionFromEnv(),
	}
}

// dial starts one ssh process and returns its stdin/stdout as a
// connection. Starting succeeds as soon as the process runs: ssh failures
// (unknown host, refused key, no docker on the remote host) show up as the
// first read failing with an *sshError that carries ssh's stderr.
func (t sshTarget) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	return t.run(ctx, t.args())
}

// forward starts one ssh process that relays to addr on the remote host
// (see forwardArgs) and returns it as a connection, as dial does.
func (t sshTarget) forward(ctx context.Context, _, addr string) (net.Conn, error) {
	return t.run(ctx, t.forwardArgs(addr))
}

// run starts ssh with args and returns its stdin/stdout as a connection.
func (t sshTarget) run(ctx context.Context, args []string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Own pipes rather than cmd.StdoutPipe: Wait (run as soon as the
	// process exits, to reap it) would close those under a reader still
	// draining the last bytes. *os.File pipes also support deadlines.
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("ssh to %s: %w", t.url, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("ssh to %s: %w", t.url, err)
	}
	c := &sshConn{target: t, stdin: inW, stdout: outR, done: make(chan struct{})}
	// Not CommandContext: ctx is the dial's, the connection outlives it.
	cmd := exec.Command("ssh", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, &c.stderr
	// Its own session: no controlling terminal to prompt on (there is no
	// one to answer), and no SIGINT from the terminal's Ctrl-C; Close
	// ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// A process that ssh leaves behind (a ControlPersist master) may hold
	// stderr open: do not let Wait wait for it for long.
	cmd.WaitDelay = time.Second
	err = cmd.Start()
	// The child has its own copies; ours would keep the pipes from ever
	// reporting EOF / EPIPE.
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("ssh to %s: running the ssh client: %w", t.url, err)
	}
	c.cmd = cmd
	go func() {
		// Reaps the process whenever it exits, so none is left a zombie.
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// sshConn is a net.Conn over an ssh process's stdin and stdout.
type sshConn struct {
	target  sshTarget
	cmd     *exec.Cmd
	stdin   *os.File
	stdout  *os.File
	stderr  tailBuffer
	done    chan struct{} // closed once the process is reaped
	waitErr error         // set before done is closed

	closeOnce sync.Once
}

func (c *sshConn) Read(p []byte) (int, error) {
	n, err := c.stdout.Read(p)
	if errors.Is(err, io.EOF) {
		err = c.exitError(io.EOF)
	}
	return n, err
}

func (c *sshConn) Write(p []byte) (int, error) {
	n, err := c.stdin.Write(p)
	if errors.Is(err, syscall.EPIPE) {
		err = c.exitError(err)
	}
	return n, err
}

// exitError is the error for a stream that ended: eof when ssh exited
// cleanly (the remote end closed the connection) or does not exit soon,
// else an *sshError with ssh's exit status and stderr.
func (c *sshConn) exitError(eof error) error {
	select {
	case <-c.done:
	case <-time.After(sshExitWait):
		return eof
	}
	if c.waitErr == nil {
		return eof
	}
	return &sshError{target: c.target.url, err: c.waitErr, stderr: c.stderr.String()}
}

// Close ends the ssh process and reaps it; it is safe to call more than
// once and from several goroutines.
func (c *sshConn) Close() error {
	c.closeOnce.Do(func() {
		c.stdin.Close()
		c.stdout.Close() // unblocks a pending Read
		select {
		case <-c.done:
			return
		default:
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(sshKillAfter):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return nil
}

func (c *sshConn) LocalAddr() net.Addr  { return sshAddr("local") }
func (c *sshConn) RemoteAddr() net.Addr { return sshAddr(c.target.url) }

func (c *sshConn) SetDeadline(t time.Time) error {
	return errors.Join(c.stdout.SetReadDeadline(t), c.stdin.SetWriteDeadline(t))
}
func (c *sshConn) SetReadDeadline(t time.Time) error  { return c.stdout.SetReadDeadline(t) }
func (c *sshConn) SetWriteDeadline(t time.Time) error { return c.stdin.SetWriteDeadline(t) }

type sshAddr string

func (sshAddr) Network() string  { return "ssh" }
func (a sshAddr) String() string { return string(a) }

// sshError: the ssh process failed. Deliberately not a net.Error: the
// Docker client replaces those with a generic "cannot connect" message,
// and ssh's stderr is what tells the user what is wrong.
type sshError struct {
	target string
	err    error
	stderr string
}

func (e *sshError) Error() string {
	msg := fmt.Sprintf("ssh to %s failed (%v)", e.target, e.err)
	var ee *exec.ExitError
	if errors.As(e.err, &ee) && ee.ExitCode() == 127 {
		msg += "; the remote host needs the docker CLI on the PATH for `docker system dial-stdio`"
	}
	if s := strings.TrimSpace(e.stderr); s != "" {
		msg += ": " + sshStderrReplacer.Replace(s)
	}
	return msg
}

// sshStderrReplacer rewords two phrases that the Docker client looks for
// in a failed request's error text ("connection refused", "dial unix"),
// taking them to mean its own socket is missing: it then drops the error
// for "Cannot connect to the Docker daemon at <its host>", which names
// the dummy HTTP host and hides why the remote engine did not answer.
// The remote docker CLI prints just that when its socket is missing.
var sshStderrReplacer = strings.NewReplacer(
	"connection refused", "Connection refused",
	"dial unix ", "dialing unix socket ",
)

func (e *sshError) Unwrap() error { return e.err }

// tailBuffer keeps the last sshStderrMax bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - sshStderrMax; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
