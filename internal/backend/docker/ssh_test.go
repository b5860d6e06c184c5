package docker

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
)

// Unit tests: no ssh needed.

func TestParseSSHHost(t *testing.T) {
	for in, want := range map[string][]string{
		"ssh://build-host":             {"-o", "ConnectTimeout=30", "-T", "--", "build-host", "docker system dial-stdio"},
		"ssh://me@build-host:2222":     {"-l", "me", "-p", "2222", "-o", "ConnectTimeout=30", "-T", "--", "build-host", "docker system dial-stdio"},
		"ssh://[2001:db8::1]:22":       {"-p", "22", "-o", "ConnectTimeout=30", "-T", "--", "2001:db8::1", "docker system dial-stdio"},
		"ssh://me@h/":                  {"-l", "me", "-o", "ConnectTimeout=30", "-T", "--", "h", "docker system dial-stdio"},
		"ssh://h/run/user/1000/d.sock": {"-o", "ConnectTimeout=30", "-T", "--", "h", "docker '--host=unix:///run/user/1000/d.sock' system dial-stdio"},
		"ssh://h/it's%20here.sock":     {"-o", "ConnectTimeout=30", "-T", "--", "h", `docker '--host=unix:///it'\''s here.sock' system dial-stdio`},
	} {
		tgt, err := parseSSHHost(in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got := tgt.args(); !slices.Equal(got, want) {
			t.Errorf("%s: args\n got %q\nwant %q", in, got, want)
		}
	}
	for _, in := range []string{
		"ssh://me:secret@h", "ssh://", "ssh://me@", "ssh://h?x=1", "ssh://h#f",
		"ssh://-oProxyCommand=x", "ssh://h%0A", "tcp://h",
	} {
		if _, err := parseSSHHost(in); err == nil {
			t.Errorf("%s: accepted", in)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error shows the password: %v", in, err)
		}
	}
}

func TestNewSSHIsLazy(t *testing.T) {
	b, err := New(Config{Host: "ssh://me@192.0.2.1:2222"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.cfg.AdvertisedHost != "192.0.2.1" {
		t.Errorf("AdvertisedHost = %q", b.cfg.AdvertisedHost)
	}
	if _, err := New(Config{Host: "ssh://me:pw@h"}); err == nil {
		t.Error("a password in the address was accepted")
	}
}

func TestTailBuffer(t *testing.T) {
	var b tailBuffer
	_, _ = b.Write([]byte(strings.Repeat("x", sshStderrMax)))
	_, _ = b.Write([]byte("the end"))
	if s := b.String(); len(s) != sshStderrMax || !strings.HasSuffix(s, "xthe end") {
		t.Errorf("kept %d bytes ending %q", len(s), s[len(s)-10:])
	}
}

// Tests with the system ssh client and the test environment's sshd, which
// reaches the test engine as POSTGRAAS_TEST_SSH_DOCKER_HOST (an alias in the
// test client config that POSTGRAAS_TEST_SSH_PATH's ssh reads, see .ci/testenv.sh).

func sshHostOrSkip(t *testing.T) string {
	t.Helper()
	host := os.Getenv("POSTGRAAS_TEST_SSH_DOCKER_HOST")
	_, lookErr := exec.LookPath("ssh")
	if host == "" || lookErr != nil {
		msg := "POSTGRAAS_TEST_SSH_DOCKER_HOST and an ssh client are needed (source /tmp/postgraas-testenv/env.sh after .ci/testenv.sh up)"
		if os.Getenv("TF_ACC") != "" || os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return host
}

// sshChildren lists this process's ssh children whose command line ends
// with args (so parallel tests with other addresses do not count), and how
// many ssh children are zombies. The test environment's ssh is a wrapper
// that execs the real one with options of its own before args
// (.ci/testenv.sh), so only the end of the command line is compared.
func sshChildren(args []string) (pids []int, zombies int) {
	want := "\x00" + strings.Join(args, "\x00") + "\x00"
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		stat, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ")".
		i := strings.LastIndexByte(string(stat), ')')
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "cmdline"))
		if fields[0] == "Z" {
			// A zombie's command line is gone: count any ssh one.
			if strings.HasSuffix(string(stat[:i]), "(ssh") {
				zombies++
			}
			continue
		}
		argv := strings.Split(string(cmdline), "\x00")
		isSSH := len(argv) > 1 && (filepath.Base(argv[0]) == "ssh" || filepath.Base(argv[1]) == "ssh")
		if isSSH && strings.HasSuffix(string(cmdline), want) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			pids = append(pids, pid)
		}
	}
	return pids, zombies
}

// assertNoSSH checks that no ssh process with these args, and no ssh
// zombie, is left. A process another parallel test is just closing may be
// reaped a moment later, so it looks a few times.
func assertNoSSH(t *testing.T, what string, args []string) {
	t.Helper()
	var live []int
	var zombies int
	for range 20 {
		if live, zombies = sshChildren(args); len(live) == 0 && zombies == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s: ssh processes %v and %d ssh zombie(s) left", what, live, zombies)
}

func TestSSHHostCreateLoginDelete(t *testing.T) {
	t.Parallel()
	host := sshHostOrSkip(t)
	e := newEnv(t, func(c *Config) {
		c.Host = host
		c.BindAddress = "127.0.0.1"
	})
	tgt, err := parseSSHHost(host)
	if err != nil {
		t.Fatal(err)
	}
	spec := e.spec(t)
	start := time.Now()
	c := e.create(t, spec)
	t.Logf("create over %s to ready: %v", host, time.Since(start))
	if want := DefaultAdvertisedHost(host); c.Host != want {
		t.Errorf("Host = %q, want %q", c.Host, want)
	}

	// The advertised host is the ssh alias; the port is published on the
	// loopback of the engine's machine, which is this one.
	ctx := ctxFor(t, time.Minute)
	c.Host = "127.0.0.1"
	conn, err := connect(ctx, c, spec.DBName, spec.Password)
	if err != nil {
		t.Fatalf("login right after Create: %v", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	inst := instanceOf(spec, c)
	if st := e.status(t, inst); !st.Exists || st.State != "running" {
		t.Errorf("Inspect = %+v", st)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: spec.Password}, false); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if st := e.status(t, inst); st.Exists {
		t.Errorf("Inspect after Delete: %+v", st)
	}
	if _, err := connect(ctx, c, spec.DBName, spec.Password); err == nil {
		t.Error("login works after Delete")
	}

	// Idle connections keep their ssh process; Close ends and reaps them.
	live, _ := sshChildren(tgt.args())
	if len(live) == 0 {
		t.Fatal("no ssh process seen while the backend is open: the check below would prove nothing")
	}
	e.b.Close()
	// Close waits for its processes: none may be left, even for a moment.
	if live, _ := sshChildren(tgt.args()); len(live) > 0 {
		t.Errorf("ssh processes %v still there after Close", live)
	}
	assertNoSSH(t, "after Close", tgt.args())
	t.Logf("Close ended %d idle ssh connection(s)", len(live))
}

// An engine that ssh cannot reach fails the API call with ssh's own words.
func TestSSHHostErrors(t *testing.T) {
	t.Parallel()
	host := sshHostOrSkip(t)
	for _, x := range []struct{ host, want string }{
		// Nothing listens on port 1: ssh itself fails.
		{"ssh://127.0.0.1:1", "Connection refused"},
		// sshd lets us in; the remote docker CLI finds no engine there.
		{host + "/nonexistent/docker.sock", "nonexistent/docker.sock"},
	} {
		b, err := New(Config{Host: x.host})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err = b.cli.Ping(ctx)
		cancel()
		b.Close()
		if err == nil || !strings.Contains(err.Error(), "ssh to "+x.host+" failed") || !strings.Contains(err.Error(), x.want) {
			t.Errorf("%s: want an ssh error mentioning %q, got %v", x.host, x.want, err)
		}
		t.Logf("%s: %v", x.host, err)
		if tgt, err := parseSSHHost(x.host); err == nil {
			assertNoSSH(t, x.host, tgt.args())
		}
	}
}
