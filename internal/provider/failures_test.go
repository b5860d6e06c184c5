//go:build unix

package provider

// Failures as users meet them: servers that accept and never answer,
// closed ports, wrong and missing passwords, images that never start.
// Terraform runs as a subprocess against the provider as released, so what
// is asserted is what a user reads: the diagnostic names the component, the
// reason, the limit that fired and the setting to change, and the time to
// fail is recorded (bounded only generously).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/netfake"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// failureConnectTimeout is the provider's connect_timeout in these runs.
const failureConnectTimeout = 2

type failureCase struct {
	name string
	// config is the whole configuration, built once the fixtures exist.
	config func() string
	// plan runs `terraform plan` (a CI plan step) instead of apply.
	plan bool
	// dropEnv are inherited variables the run must not see.
	dropEnv []string
	// want must all appear in the output (whitespace-insensitive), absent
	// must not; count is how often want[0] must appear (0: at least once).
	want, absent []string
	count        int
	// bound is the generous limit on the time to fail.
	bound time.Duration
	// after checks what the failed run left.
	after func(t *testing.T)
}

func TestAccFailures(t *testing.T) {
	t.Parallel()
	testAccPreCheck(t, dockerEnv...)
	if _, err := exec.LookPath("terraform"); err != nil {
		t.Fatalf("terraform is not on PATH: %v", err)
	}
	providerDir := plainBuild.get(t)
	cli := dockerClient(t)
	paused := pausedPostgres(t, cli)
	silent := netfake.Silent(t)
	closed := netfake.ClosedPort(t)
	noDB := imageWithEntrypoint(t, cli, "pgfail-nodb", `["/bin/sh", "-c", "unset POSTGRES_DB; exec docker-entrypoint.sh postgres"]`)
	slow := imageWithEntrypoint(t, cli, "pgfail-slow", `["/bin/sh", "-c", "sleep 120; exec docker-entrypoint.sh postgres"]`)

	meta, admin := metaDB(), clusterAdmin()
	// login is a provider block for a PostgreSQL login; a nil password
	// leaves the attribute out.
	login := func(block, dbKey, host string, port int, db, user string, password *string) string {
		pw := ""
		if password != nil {
			pw = "password = " + hclString(*password)
		}
		return fmt.Sprintf("%s = {\n    host = %s\n    port = %d\n    %s = %s\n    username = %s\n    sslmode = \"disable\"\n    %s\n  }",
			block, hclString(host), port, dbKey, hclString(db), hclString(user), pw)
	}
	withMeta := func(host string, port int, password *string) string {
		return login("metadb", "db_name", host, port, meta.Database, meta.User, password)
	}
	withCluster := func(password *string) string {
		return login("pg_cluster", "database", admin.Host, admin.Port, admin.Database, admin.User, password)
	}
	str := func(s string) *string { return &s }
	goodMeta := func() string { return withMeta(meta.Host, meta.Port, &meta.Password) }
	cluster := func(metaHCL, clusterHCL string, body string) string {
		return faultTerraformBlock + fmt.Sprintf(`provider "postgraas" {
  backend = "pg_cluster"
  connect_timeout = %d
  %s
  %s
}
%s`, failureConnectTimeout, metaHCL, clusterHCL, body)
	}
	docker := func(host, body string) string {
		hostLine := ""
		if host != "" {
			hostLine = "host = " + hclString(host)
		}
		return faultTerraformBlock + fmt.Sprintf(`provider "postgraas" {
  backend = "docker"
  connect_timeout = %d
  %s
  docker = {
    image = %s
    bind_address = "127.0.0.1"
    %s
  }
}
%s`, failureConnectTimeout, goodMeta(), hclString(os.Getenv("POSTGRAAS_TEST_IMAGE")), hostLine, body)
	}
	inst := func(prefix, extra string) (string, string) {
		name := randomName(prefix)
		return name, fmt.Sprintf(`
resource "postgraas_instance" "i" {
  name        = %q
  db_name     = "appdb"
  db_username = "app"
  db_password = "pw-%s"
  %s
}
`, name, name, extra)
	}
	dockerInst := func(extra string) (string, string) {
		name, body := inst("fail", extra)
		dn := strings.ReplaceAll(name, "_", "-")
		return dn, strings.Replace(body, fmt.Sprintf("%q", name), fmt.Sprintf("%q", dn), 1)
	}
	lookups := func(n int, extra string) string {
		var b strings.Builder
		for k := range n {
			fmt.Fprintf(&b, "data \"postgraas_instance\" \"d%d\" {\n  name = \"nobody-%d\"\n  %s\n}\n", k, k, extra)
		}
		return b.String()
	}
	connectTimeout := fmt.Sprintf("%ds", failureConnectTimeout)
	connectBound := time.Duration(3*failureConnectTimeout)*time.Second + 20*time.Second
	fastBound := 30 * time.Second
	noLeftovers := func(names ...string) func(t *testing.T) {
		return func(t *testing.T) {
			ctx, cancel := dockerCtx()
			defer cancel()
			for _, n := range names {
				if rows, err := metaRows(n); err != nil || rows != 0 {
					t.Errorf("%d meta DB rows named %s left (%v)", rows, n, err)
				}
				if _, err := cli.ContainerInspect(ctx, n); err == nil {
					t.Errorf("container %s left", n)
				}
			}
		}
	}

	_, pausedBody := inst("fail", "")
	_, body := inst("fail", "")
	noDBName, noDBBody := dockerInst("image = " + hclString(noDB))
	slowName, slowBody := dockerInst("image = " + hclString(slow) + "\n  timeouts {\n    create = \"3s\"\n  }")
	_, dockerBody := dockerInst("")
	cases := []failureCase{
		{name: "meta DB paused: accepts, never answers", config: func() string {
			return cluster(withMeta("127.0.0.1", paused, str("pw")), withCluster(&admin.Password), pausedBody)
		}, want: []string{"Meta DB: no answer", connectTimeout, "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT", "metadb.host"},
			absent: []string{"timeouts.create"}, bound: connectBound},
		{name: "meta DB port closed", config: func() string {
			return cluster(withMeta("127.0.0.1", closed, &meta.Password), withCluster(&admin.Password), body)
		}, want: []string{"Meta DB: connection refused", "metadb.host", "POSTGRAAS_METADB_PORT"}, bound: fastBound},
		{name: "meta DB is a listener that never speaks", config: func() string {
			return cluster(withMeta("127.0.0.1", silent, &meta.Password), withCluster(&admin.Password), body)
		}, want: []string{"Meta DB: no answer", connectTimeout, "connect_timeout"}, bound: connectBound},
		{name: "meta DB wrong password, caught by plan", plan: true, config: func() string {
			return cluster(withMeta(meta.Host, meta.Port, str("wrong-"+meta.Password)), withCluster(&admin.Password), body)
		}, want: []string{"Meta DB: wrong password", "metadb.password", "POSTGRAAS_METADB_PASSWORD"}, bound: fastBound},
		{name: "meta DB password missing", plan: true, dropEnv: []string{"POSTGRAAS_METADB_PASSWORD"}, config: func() string {
			return cluster(withMeta(meta.Host, meta.Port, nil), withCluster(&admin.Password), body)
		}, want: []string{"Meta DB: no password set", "metadb.password", "POSTGRAAS_METADB_PASSWORD"}, bound: fastBound},
		{name: "pg_cluster admin wrong password, caught by plan", plan: true, config: func() string {
			return cluster(goodMeta(), withCluster(str("wrong-"+admin.Password)), body)
		}, want: []string{"pg_cluster admin: wrong password", "pg_cluster.password", "POSTGRAAS_PG_CLUSTER_PASSWORD"},
			absent: []string{"metadb.password"}, bound: fastBound},
		{name: "pg_cluster admin password missing", plan: true, dropEnv: []string{"POSTGRAAS_PG_CLUSTER_PASSWORD"}, config: func() string {
			return cluster(goodMeta(), withCluster(nil), body)
		}, want: []string{"pg_cluster admin: no password set", "pg_cluster.password"}, bound: fastBound},
		{name: "Docker engine never answers", config: func() string {
			return docker(fmt.Sprintf("tcp://127.0.0.1:%d", silent), dockerBody)
		}, want: []string{"Docker engine: no answer", connectTimeout, "connect_timeout", "docker.host", "DOCKER_HOST"},
			absent: []string{"?."}, bound: connectBound},
		{name: "Docker engine port closed", config: func() string {
			return docker(fmt.Sprintf("tcp://127.0.0.1:%d", closed), dockerBody)
		}, want: []string{"Docker engine: connection refused", "docker.host"}, absent: []string{"?."}, bound: fastBound},
		{name: "image whose database never appears", config: func() string { return docker("", noDBBody) },
			want:   []string{"Instance did not start", "does not exist", "last log lines"},
			absent: []string{"Timed out"}, bound: 90 * time.Second, after: noLeftovers(noDBName)},
		{name: "create timeout fires first", config: func() string { return docker("", slowBody) },
			want: []string{"Timed out", "timeouts.create", "3s"}, absent: []string{"connect_timeout"},
			bound: 60 * time.Second, after: noLeftovers(slowName)},
		{name: "six reads of a paused meta DB fail together", plan: true, config: func() string {
			return cluster(withMeta("127.0.0.1", paused, str("pw")), withCluster(&admin.Password), lookups(6, ""))
		}, want: []string{"Meta DB: no answer"}, count: 6, bound: connectBound},
		{name: "data source read timeout shorter than the connect timeout", plan: true, config: func() string {
			c := cluster(withMeta("127.0.0.1", paused, str("pw")), withCluster(&admin.Password), lookups(1, "timeouts {\n    read = \"1s\"\n  }"))
			return strings.Replace(c, fmt.Sprintf("connect_timeout = %d", failureConnectTimeout), "connect_timeout = 30", 1)
		}, want: []string{"Timed out", "timeouts.read", "1s"}, absent: []string{"Meta DB: no answer"}, bound: fastBound},
	}

	var mu sync.Mutex
	var times []string
	t.Cleanup(func() {
		sort.Strings(times)
		t.Logf("time to fail:\n%s", strings.Join(times, "\n"))
	})
	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				w := newFaultWorkspace(t, providerDir, c.config(), "", c.dropEnv...)
				args := faultApply
				if c.plan {
					args = []string{"plan", "-input=false", "-no-color"}
				}
				p, err := w.run(args[0], c.bound+time.Minute, nil, args...)
				out := strings.Join(strings.Fields(p.out.String()), " ")
				mu.Lock()
				times = append(times, fmt.Sprintf("  %-60s %s", c.name, p.elapsed.Round(100*time.Millisecond)))
				mu.Unlock()
				if err == nil {
					t.Fatalf("terraform %s succeeded:\n%s", args[0], faultTail(p.out.String(), 20))
				}
				for k, s := range c.want {
					n := strings.Count(out, strings.Join(strings.Fields(s), " "))
					if n == 0 || (k == 0 && c.count > 0 && n != c.count) {
						t.Errorf("%q appears %d times (want %v); output:\n%s", s, n, max(c.count, 1), faultTail(p.out.String(), 40))
					}
				}
				for _, s := range c.absent {
					if strings.Contains(out, s) {
						t.Errorf("output mentions %q:\n%s", s, faultTail(p.out.String(), 40))
					}
				}
				if p.elapsed > c.bound {
					t.Errorf("failing took %s, more than %s", p.elapsed.Round(time.Millisecond), c.bound)
				}
				t.Logf("failed after %s; what the user reads:\n%s", p.elapsed.Round(time.Millisecond), faultTail(p.out.String(), 14))
				if c.after != nil {
					c.after(t)
				}
			})
		}
	})
}

// pausedPostgres starts a PostgreSQL container that takes logins, then
// pauses it: its published port still accepts connections (docker-proxy
// does), and nothing ever answers. It returns the host port.
func pausedPostgres(t *testing.T, cli *dockerclient.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cli.ContainerCreate(ctx, &container.Config{
		Image:        os.Getenv("POSTGRAAS_TEST_IMAGE"),
		Env:          []string{"POSTGRES_PASSWORD=pw", "POSTGRES_USER=postgraas", "POSTGRES_DB=postgraas"},
		ExposedPorts: nat.PortSet{"5432/tcp": {}},
	}, &container.HostConfig{
		PortBindings: nat.PortMap{"5432/tcp": {{HostIP: "127.0.0.1"}}},
	}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		_ = cli.ContainerUnpause(ctx, c.ID)
		_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	})
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := cli.ContainerInspect(ctx, c.ID)
	if err != nil || len(info.NetworkSettings.Ports["5432/tcp"]) == 0 {
		t.Fatalf("inspecting the meta DB container: %v", err)
	}
	var port int
	_, _ = fmt.Sscan(info.NetworkSettings.Ports["5432/tcp"][0].HostPort, &port)
	target := pgsql.Target{Host: "127.0.0.1", Port: port, Database: "postgraas", User: "postgraas", Password: "pw", SSLMode: "disable"}
	for {
		conn, err := target.ConnectOnce(ctx)
		if err == nil {
			_ = conn.Close(ctx)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the meta DB container never took logins: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	// The cgroup freezer can fail on a loaded machine ("unable to
	// freeze"): try again, then stop the server's processes instead,
	// which leaves the port in the same state (accepted, never answered).
	var perr error
	for range 3 {
		if perr = cli.ContainerPause(ctx, c.ID); perr == nil {
			return port
		}
		time.Sleep(time.Second)
	}
	t.Logf("pausing the meta DB container failed (%v): stopping its postmaster with SIGSTOP instead", perr)
	if err := cli.ContainerKill(ctx, c.ID, "SIGSTOP"); err != nil {
		t.Fatalf("SIGSTOP to the meta DB container: %v", err)
	}
	return port
}

// imageWithEntrypoint commits the test image with another entrypoint,
// removed when the test ends.
func imageWithEntrypoint(t *testing.T, cli *dockerclient.Client, tag, entrypoint string) string {
	t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	tmp, err := cli.ContainerCreate(ctx, &container.Config{Image: os.Getenv("POSTGRAAS_TEST_IMAGE")}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ref := tag + ":" + randomName("t")
	_, err = cli.ContainerCommit(ctx, tmp.ID, container.CommitOptions{Reference: ref, Changes: []string{"ENTRYPOINT " + entrypoint}})
	_ = cli.ContainerRemove(ctx, tmp.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		_, _ = cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true})
	})
	return ref
}
