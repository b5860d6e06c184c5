//go:build unix

package provider

// The meta DB container: terraform runs with the docker backend and no meta
// DB settings at all, as `make demo` does, against the provider as
// released (plainBuild). Every test has a meta DB container of its own
// (metadb.container), on the shared engine, and removes it at the end:
// tests may remove what they made, the provider never does.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// metaDBRunLimit bounds one terraform run; it only catches a hang.
const metaDBRunLimit = 12 * time.Minute

// metaDBRunEnv gives the runs a long create lease, renewed every 20 s with
// 20 s for each renewal: these tests are about the meta DB container, and
// on a loaded 2-core machine (load average 20 was seen) the default 5 s
// for a renewal's connect ran out, which cancels a create in flight.
var metaDBRunEnv = []string{"POSTGRAAS_LEASE_TTL=2m"}

// metaDBCase is one test's meta DB container and the instances its
// workspaces make.
type metaDBCase struct {
	t           *testing.T
	name        string // of the meta DB container
	cli         *dockerclient.Client
	providerDir string
	instances   []string // container names, removed at the end if a destroy did not
}

func newMetaDBCase(t *testing.T) *metaDBCase {
	t.Helper()
	faultAccPreCheck(t, dockerEnv...)
	m := &metaDBCase{t: t, name: "acc-metadb-" + faultRandomHex(5), cli: dockerClient(t)}
	// Registered before any workspace, so it runs after their terraform
	// processes are stopped.
	t.Cleanup(m.remove)
	m.providerDir = plainBuild.get(t)
	return m
}

// remove takes away what the test made: its instances' containers (when a
// failed test did not destroy them), the meta DB container and its volume.
func (m *metaDBCase) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := m.instances
	for _, c := range m.containers() {
		ids = append(ids, c.ID)
	}
	for _, id := range ids {
		err := m.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			m.t.Errorf("cleanup of container %s: %v", id, err)
		}
	}
	if err := m.cli.VolumeRemove(ctx, m.name+"-data", true); err != nil && !cerrdefs.IsNotFound(err) {
		m.t.Errorf("cleanup of volume %s-data: %v", m.name, err)
	}
}

// config is a docker configuration whose metadb block holds only the
// container's name, unless metadb says otherwise.
func (m *metaDBCase) config(metadb string, instances ...clusterInstance) string {
	if metadb == "" {
		metadb = "container = " + hclString(m.name)
	}
	s := faultTerraformBlock + fmt.Sprintf(`provider "postgraas" {
  backend = "docker"
  docker = {
    image        = %s
    bind_address = "127.0.0.1"
  }
  metadb = {
    %s
  }
}
`, hclString(os.Getenv("POSTGRAAS_TEST_IMAGE")), metadb)
	for _, i := range instances {
		if !slices.Contains(m.instances, i.name) {
			m.instances = append(m.instances, i.name)
		}
		s += i.hcl()
	}
	return s
}

// workspace runs terraform without any meta DB variable of the test
// environment, with the provider logging at logLevel.
func (m *metaDBCase) workspace(config, logLevel string) *faultWorkspace {
	return newFaultWorkspace(m.t, m.providerDir, config, logLevel, "POSTGRAAS_METADB_")
}

// try runs terraform to its end and returns its error.
func (m *metaDBCase) try(w *faultWorkspace, run string, args ...string) (*faultTF, error) {
	m.t.Helper()
	return w.run(run, metaDBRunLimit, metaDBRunEnv, args...)
}

func (m *metaDBCase) run(w *faultWorkspace, run string, args ...string) *faultTF {
	m.t.Helper()
	p, err := m.try(w, run, args...)
	if err != nil {
		m.t.Fatalf("terraform %s: %v\n%s", run, err, faultTail(p.out.String(), 40))
	}
	m.t.Logf("terraform %s took %s", run, p.elapsed.Round(time.Millisecond))
	return p
}

// containers lists the containers labelled as this case's meta DB.
func (m *metaDBCase) containers() []container.Summary {
	m.t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	list, err := m.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", docker.LabelMetaDB+"="+m.name))})
	if err != nil {
		m.t.Fatal(err)
	}
	return list
}

// one checks that there is exactly one meta DB container, with its volume,
// and returns its ID.
func (m *metaDBCase) one() string {
	m.t.Helper()
	cs := m.containers()
	if len(cs) != 1 {
		m.t.Fatalf("%d containers labelled %s=%s, want 1: %+v", len(cs), docker.LabelMetaDB, m.name, cs)
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	vols, err := m.cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", docker.LabelMetaDB+"="+m.name))})
	if err != nil {
		m.t.Fatal(err)
	}
	if len(vols.Volumes) != 1 || vols.Volumes[0].Name != m.name+"-data" {
		m.t.Fatalf("volumes labelled %s=%s: %+v, want only %s-data", docker.LabelMetaDB, m.name, vols.Volumes, m.name)
	}
	if cs[0].Names[0] != "/"+m.name {
		m.t.Errorf("meta DB container named %v, want %s", cs[0].Names, m.name)
	}
	return cs[0].ID
}

// exec runs cmd in the meta DB container and returns its standard output.
func (m *metaDBCase) exec(id string, cmd ...string) string {
	m.t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	ex, err := m.cli.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, User: "0", AttachStdout: true, AttachStderr: true})
	if err != nil {
		m.t.Fatal(err)
	}
	resp, err := m.cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Close()
	var out, errOut strings.Builder
	if _, err := stdcopy.StdCopy(&out, &errOut, resp.Reader); err != nil {
		m.t.Fatal(err)
	}
	if in, err := m.cli.ContainerExecInspect(ctx, ex.ID); err != nil || in.ExitCode != 0 {
		m.t.Fatalf("%v in the meta DB container: exit code %d (%v): %s", cmd, in.ExitCode, err, errOut.String())
	}
	return out.String()
}

// psql runs SQL in the meta DB container as its login, over its trusted
// unix socket, as a human would with docker exec.
func (m *metaDBCase) psql(id, sql string) string {
	m.t.Helper()
	return strings.TrimSpace(m.exec(id, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgraas", "-d", "postgraas", "-c", sql))
}

// rows lists the meta DB's instance names and states, sorted.
func (m *metaDBCase) rows(id string) []string {
	m.t.Helper()
	out := m.psql(id, "SELECT postgraas_instance_name || ' ' || state FROM db_instance ORDER BY 1")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func (m *metaDBCase) running(id string) bool {
	m.t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	c, err := m.cli.ContainerInspect(ctx, id)
	if err != nil {
		m.t.Fatal(err)
	}
	return c.State.Running
}

// instanceLogin logs in to an instance right after apply, with the port in
// the state.
func instanceLogin(t *testing.T, w *faultWorkspace, i clusterInstance) {
	t.Helper()
	attrs, err := faultStateAttributes(w.dir, i.label)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	if _, err := fmt.Sscan(attrs["port"], &port); err != nil {
		t.Fatalf("port %q: %v", attrs["port"], err)
	}
	if err := writeAndRead(tenant("127.0.0.1", port, i.db, i.user, i.password)); err != nil {
		t.Errorf("login to %s: %v", i.name, err)
	}
}

// TestAccMetaDBContainer_madeFoundKept: with no meta DB settings, the first
// run makes the meta DB container and an instance recorded in it; a second
// run (another state) finds the same container and sees the first run's
// row; destroying every instance leaves the container and its volume.
func TestAccMetaDBContainer_madeFoundKept(t *testing.T) {
	m := newMetaDBCase(t)
	a, b := newDockerInstance("a"), newDockerInstance("b")
	w1 := m.workspace(m.config("", a), "TRACE")
	m.run(w1, "apply-a", faultApply...)
	id := m.one()
	if got, want := m.rows(id), []string{a.name + " ready"}; !slices.Equal(got, want) {
		t.Fatalf("meta DB rows %q, want %q", got, want)
	}
	instanceLogin(t, w1, a)

	list := `
data "postgraas_instances" "all" {
  depends_on = [postgraas_instance.b]
}
output "names" {
  value = join(",", sort(data.postgraas_instances.all.instances[*].name))
}
`
	w2 := m.workspace(m.config("", b)+list, "TRACE")
	m.run(w2, "apply-b", faultApply...)
	if id2 := m.one(); id2 != id {
		t.Fatalf("the second run used container %s, want %s", id2, id)
	}
	names := []string{a.name, b.name}
	slices.Sort(names)
	p := m.run(w2, "output", "output", "-raw", "names")
	if got := strings.TrimSpace(p.out.String()); got != strings.Join(names, ",") {
		t.Errorf("the second run's data source lists %q, want %q", got, strings.Join(names, ","))
	}
	if got := m.rows(id); len(got) != 2 {
		t.Errorf("meta DB rows %q, want both instances", got)
	}
	instanceLogin(t, w2, b)

	m.run(w2, "destroy-b", faultDestroy...)
	m.run(w1, "destroy-a", faultDestroy...)
	// The meta DB's password shows in no output, provider log (TRACE) or
	// state of either run.
	kept := strings.TrimSpace(m.exec(id, "cat", "/var/lib/postgresql/data/postgraas/password"))
	if len(kept) != 64 {
		t.Fatalf("kept password of %d characters, want 64", len(kept))
	}
	for _, w := range []*faultWorkspace{w1, w2} {
		entries, err := os.ReadDir(w.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(w.dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), kept) {
				t.Errorf("%s shows the meta DB password", e.Name())
			}
		}
	}
	if got := m.rows(id); len(got) != 0 {
		t.Errorf("meta DB rows %q after every instance was destroyed", got)
	}
	if m.one() != id || !m.running(id) {
		t.Errorf("the meta DB container %s did not stay, running, after every instance was destroyed", id)
	}
}

// TestAccMetaDBContainer_fourRunsAtOnce: four terraform runs started at
// once on an engine without the meta DB container end up with one, and all
// four use it. The runs read the meta DB (a data source) rather than each
// create an instance: the race is the meta DB's, and four instances being
// initialised beside it only made the test a measure of the machine's load
// (under other suites, a create's lease renewals timed out).
func TestAccMetaDBContainer_fourRunsAtOnce(t *testing.T) {
	m := newMetaDBCase(t)
	const runs = 4
	list := `
data "postgraas_instances" "all" {}
output "names" {
  value = join(",", sort(data.postgraas_instances.all.instances[*].name))
}
`
	var ws []*faultWorkspace
	for range runs {
		ws = append(ws, m.workspace(m.config("")+list, "INFO"))
	}
	m.allAtOnce(ws, "apply", faultApply)
	id := m.one()

	// An instance recorded by a fifth run shows in all four.
	a := newDockerInstance("a")
	w := m.workspace(m.config("", a), "INFO")
	m.run(w, "apply", faultApply...)
	m.allAtOnce(ws, "refresh", faultApply)
	for k, wk := range ws {
		p := m.run(wk, "output", "output", "-raw", "names")
		if got := strings.TrimSpace(p.out.String()); got != a.name {
			t.Errorf("run %d lists %q, want %q", k, got, a.name)
		}
	}
	m.run(w, "destroy", faultDestroy...)
	if m.one() != id {
		t.Error("the meta DB container changed")
	}
}

// allAtOnce starts terraform args in every workspace at the same moment
// and fails the test unless every run succeeds.
func (m *metaDBCase) allAtOnce(ws []*faultWorkspace, run string, args []string) {
	m.t.Helper()
	start := time.Now()
	procs := make([]*faultTF, len(ws))
	for k, w := range ws {
		procs[k] = w.start(run, metaDBRunEnv, args...)
	}
	var failures []string
	for k, p := range procs {
		if err := p.wait(metaDBRunLimit - time.Since(start)); err != nil {
			failures = append(failures, fmt.Sprintf("run %d (%v, after %s):\n%s", k, err, p.elapsed.Round(time.Millisecond), faultTail(p.out.String(), 16)))
		}
	}
	m.t.Logf("%d concurrent %s runs: %d succeeded, all done after %s", len(ws), run, len(ws)-len(failures), time.Since(start).Round(time.Millisecond))
	if len(failures) > 0 {
		m.t.Fatalf("%d of %d %s runs failed:\n%s", len(failures), len(ws), run, strings.Join(failures, "\n"))
	}
}

// TestAccMetaDBContainer_stoppedThenBroken: a stopped meta DB container is
// started; one whose server refuses the kept password is a clear error and
// nothing new is made; set right as the error says, it works again.
func TestAccMetaDBContainer_stoppedThenBroken(t *testing.T) {
	m := newMetaDBCase(t)
	a := newDockerInstance("a")
	w := m.workspace(m.config("", a), "INFO")
	m.run(w, "apply", faultApply...)
	id := m.one()

	ctx, cancel := dockerCtx()
	defer cancel()
	if err := m.cli.ContainerStop(ctx, id, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	// Refreshing the instance reads the meta DB: the container is started.
	m.run(w, "plan-stopped", "plan", "-detailed-exitcode", "-input=false", "-no-color")
	if !m.running(id) || m.one() != id {
		t.Fatal("the stopped meta DB container was not started")
	}

	// Someone changes the login's password in the container.
	m.psql(id, "ALTER ROLE postgraas PASSWORD 'changed-by-hand'")
	p, err := m.try(w, "plan-broken", "plan", "-input=false", "-no-color")
	if err == nil {
		t.Fatalf("plan succeeded against a meta DB that refuses the kept password:\n%s", p.out.String())
	}
	out := p.out.String()
	flat := strings.Join(strings.Fields(out), " ") // terraform wraps long lines
	for _, want := range []string{"Meta DB container: login refused", "nothing new was created", "docker exec"} {
		if !strings.Contains(flat, want) {
			t.Errorf("the error does not say %q:\n%s", want, faultTail(out, 30))
		}
	}
	t.Logf("failed after %s:\n%s", p.elapsed.Round(time.Millisecond), faultTail(out, 14))
	if m.one() != id {
		t.Error("a new meta DB container was made")
	}

	// The way back the error names: set the role's password to the kept one.
	kept := strings.TrimSpace(m.exec(id, "cat", "/var/lib/postgresql/data/postgraas/password"))
	verifier, err := pgsql.ScramVerifier(kept)
	if err != nil {
		t.Fatal(err)
	}
	m.psql(id, "ALTER ROLE postgraas PASSWORD "+pgsql.QuoteLiteral(verifier))
	m.run(w, "destroy", faultDestroy...)
	if m.one() != id || len(m.rows(id)) != 0 {
		t.Error("after the repair, destroy did not use the same meta DB")
	}
}

// TestAccMetaDBContainer_moveRows follows the README: pg_dump the one
// table out of the meta DB container, restore it into a meta DB server,
// point the provider there, and the instance is found as it was.
func TestAccMetaDBContainer_moveRows(t *testing.T) {
	m := newMetaDBCase(t)
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is not on PATH (the restore runs it): %v", err)
	}
	a := newDockerInstance("a")
	w := m.workspace(m.config("", a), "INFO")
	m.run(w, "apply", faultApply...)
	id := m.one()

	// The new meta DB: a database of its own on the test server.
	db := randomName("moved")
	if err := adminExec("CREATE DATABASE " + pgsql.QuoteIdent(db)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := adminExec("DROP DATABASE IF EXISTS " + pgsql.QuoteIdent(db) + " WITH (FORCE)"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	dump := m.exec(id, "pg_dump", "-U", "postgraas", "-d", "postgraas", "--no-owner", "--no-privileges", "-t", "db_instance")
	admin := clusterAdmin()
	restore := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", admin.Host, "-p", fmt.Sprint(admin.Port),
		"-U", admin.User, "-d", db)
	restore.Env = append(os.Environ(), "PGPASSWORD="+admin.Password)
	restore.Stdin = strings.NewReader(dump)
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("restoring the dump with psql: %v\n%s", err, out)
	}

	// The same state, now with the server as meta DB.
	server := fmt.Sprintf("host = %s\n    port = %d\n    db_name = %s\n    username = %s\n    password = %s\n    sslmode = \"disable\"",
		hclString(admin.Host), admin.Port, hclString(db), hclString(admin.User), hclString(admin.Password))
	if err := os.WriteFile(filepath.Join(w.dir, "main.tf"), []byte(m.config(server, a)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := m.try(w, "plan-moved", "plan", "-detailed-exitcode", "-input=false", "-no-color")
	if err != nil {
		t.Fatalf("plan against the restored meta DB is not empty (%v):\n%s", err, faultTail(p.out.String(), 30))
	}
	m.run(w, "destroy", faultDestroy...)
	var n int
	moved := admin
	moved.Database = db
	if err := withConn(moved, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT count(*) FROM db_instance").Scan(&n)
	}); err != nil || n != 0 {
		t.Errorf("%d rows left in the new meta DB after destroy (%v)", n, err)
	}
	if len(m.rows(id)) != 1 {
		t.Error("the old meta DB container's row changed (it should be left as it was, for a human to retire)")
	}
}
