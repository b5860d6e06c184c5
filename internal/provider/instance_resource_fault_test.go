//go:build unix

package provider

// Fault injection: the provider is killed (SIGKILL) or asked to stop
// (SIGTERM) while paused at a named point of the create path
// (internal/faultinject), and the meta DB is killed in the middle of a large
// apply. Terraform runs as a subprocess against a provider binary built with
// the faultinject tag, so the kill hits that process and not the test.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	dockerclient "github.com/docker/docker/client"
	"github.com/jackc/pgx/v5"
	"k8s.io/client-go/kubernetes"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgserver"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Pause points of the create path (internal/faultinject).
const (
	pointReserved         = "create.reserved"
	pointRoleCreated      = "pgcluster.role_created"
	pointDatabaseCreated  = "pgcluster.database_created"
	pointContainerCreated = "docker.container_created"
	pointStarted          = "docker.started"
	pointBackendDone      = "create.backend_done"
	pointPoolClaimed      = "create.pool_claimed"
	pointPoolPersonal     = "docker.pool_personalised"
)

const (
	faultLeaseTTL  = "4s"             // lease of the killed run, so the next run need not wait 30 s
	faultPauseWait = 60 * time.Second // until the provider reaches the pause point
	faultExitWait  = 90 * time.Second // until the provider, then terraform, exit after the signal (the provider waits up to 60 s for undos)
	// faultRecoverLimit only catches a recovery that hangs: how fast one
	// converges (seconds on a quiet machine, 4 s of it the dead run's lease)
	// is logged, not asserted, since the suite shares 2 cores with
	// everything else (a wall-clock bound would measure the neighbours).
	faultRecoverLimit = 3 * time.Minute
	faultRunLimit     = 4 * time.Minute // any other terraform run; killed past it
	faultLabelName    = "postgraas.instance.name"
	faultProviderAddr = "postgraas/postgraas"
)

// faultTerraformBlock makes Terraform take the provider from the
// dev_overrides of the CLI configuration rather than from a registry.
const faultTerraformBlock = `terraform {
  required_providers {
    postgraas = { source = "` + faultProviderAddr + `" }
  }
}
`

// ---------------------------------------------------------------- provider binary

// providerBuild is a provider binary for tests that run Terraform as a
// subprocess, with a CLI configuration pointing Terraform at it: built once
// while any test using it runs, removed when the last one ends.
type providerBuild struct {
	tags string // go build -tags
	mu   sync.Mutex
	refs int
	dir  string // terraform-provider-postgraas and cli.tfrc
}

// faultBuild pauses where POSTGRAAS_FAULT_PAUSE says; plainBuild is the
// provider as released.
var (
	faultBuild = &providerBuild{tags: "faultinject"}
	plainBuild = &providerBuild{}
)

// faultProviderDir returns the directory of the fault-injecting provider
// and of a CLI configuration that points Terraform at it.
func faultProviderDir(t *testing.T) string { return faultBuild.get(t) }

// get returns the directory of the binary and its cli.tfrc.
func (pb *providerBuild) get(t *testing.T) string {
	t.Helper()
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if pb.dir == "" {
		dir, err := os.MkdirTemp("", "postgraas-test-provider-")
		if err != nil {
			t.Fatal(err)
		}
		root, err := filepath.Abs(filepath.Join("..", ".."))
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "terraform-provider-postgraas")
		start := time.Now()
		cmd := exec.Command("go", "build", "-tags", pb.tags, "-o", bin, ".")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			_ = os.RemoveAll(dir)
			t.Fatalf("building the provider with -tags %q in %s: %v\n%s", pb.tags, root, err, out)
		}
		// A binary without the tag would never pause: say so here rather
		// than as a timeout later.
		if pb.tags != "" {
			out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("-tags="+pb.tags)) {
				_ = os.RemoveAll(dir)
				t.Fatalf("%s was not built with the %s tag (%v):\n%s", bin, pb.tags, err, out)
			}
		}
		cfg := fmt.Sprintf("provider_installation {\n  dev_overrides {\n    %q = %s\n  }\n  direct {}\n}\n",
			faultProviderAddr, hclString(dir))
		if err := os.WriteFile(filepath.Join(dir, "cli.tfrc"), []byte(cfg), 0o644); err != nil {
			_ = os.RemoveAll(dir)
			t.Fatal(err)
		}
		t.Logf("built the provider with -tags %q in %s", pb.tags, time.Since(start).Round(time.Millisecond))
		pb.dir = dir
	}
	pb.refs++
	t.Cleanup(func() {
		pb.mu.Lock()
		defer pb.mu.Unlock()
		if pb.refs--; pb.refs == 0 {
			_ = os.RemoveAll(pb.dir)
			pb.dir = ""
		}
	})
	return pb.dir
}

// ---------------------------------------------------------------- terraform runs

type faultBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *faultBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *faultBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// faultTF is one terraform command running in the background.
type faultTF struct {
	name    string
	cmd     *exec.Cmd
	out     *faultBuffer
	started time.Time
	done    chan struct{}
	err     error         // after done
	elapsed time.Duration // after done
}

func (p *faultTF) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait returns terraform's result, or an error naming the run when it has
// not exited within limit.
func (p *faultTF) wait(limit time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(limit):
		return fmt.Errorf("terraform %s still running after %s; output so far:\n%s", p.name, limit, p.out.String())
	}
}

// faultWorkspace is one Terraform working directory with its configuration.
type faultWorkspace struct {
	t         *testing.T
	dir       string
	cliConfig string
	logLevel  string   // TF_LOG_PROVIDER
	dropEnv   []string // prefixes of inherited variables to leave out
}

func newFaultWorkspace(t *testing.T, providerDir, config, logLevel string, dropEnv ...string) *faultWorkspace {
	t.Helper()
	w := &faultWorkspace{t: t, dir: t.TempDir(), cliConfig: filepath.Join(providerDir, "cli.tfrc"), logLevel: logLevel, dropEnv: dropEnv}
	if err := os.WriteFile(filepath.Join(w.dir, "main.tf"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered after TempDir, so it runs before the directory goes.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		keep, err := os.MkdirTemp("", "postgraas-fault-logs-")
		if err != nil {
			return
		}
		entries, _ := os.ReadDir(w.dir)
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			if b, err := os.ReadFile(filepath.Join(w.dir, e.Name())); err == nil {
				_ = os.WriteFile(filepath.Join(keep, e.Name()), b, 0o600)
			}
		}
		t.Logf("terraform outputs, logs (TF_LOG_PROVIDER=%s), configuration and state kept in %s", w.logLevel, keep)
	})
	return w
}

func faultHasPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// env is the inherited environment, without what this file sets itself
// (this machine's TF_CLI_CONFIG_FILE names a file that does not exist), plus
// the CLI configuration, a provider log per run and extra.
func (w *faultWorkspace) env(run string, extra []string) []string {
	drop := append([]string{"TF_CLI_CONFIG_FILE=", "TF_LOG", "TF_IN_AUTOMATION=", "CHECKPOINT_DISABLE=",
		"POSTGRAAS_FAULT_", "POSTGRAAS_LEASE_"}, w.dropEnv...)
	var env []string
	for _, kv := range os.Environ() {
		if !faultHasPrefix(kv, drop) {
			env = append(env, kv)
		}
	}
	env = append(env, "TF_CLI_CONFIG_FILE="+w.cliConfig, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1",
		"TF_LOG_PROVIDER="+w.logLevel, "TF_LOG_PATH="+filepath.Join(w.dir, run+".log"))
	return append(env, extra...)
}

// start runs terraform args in the background; the test's cleanup kills it
// if it is still running then.
func (w *faultWorkspace) start(run string, extraEnv []string, args ...string) *faultTF {
	w.t.Helper()
	p := &faultTF{name: run, out: &faultBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("terraform", args...)
	p.cmd.Dir = w.dir
	p.cmd.Env = w.env(run, extraEnv)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		w.t.Fatalf("starting terraform %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.elapsed = time.Since(p.started)
		_ = os.WriteFile(filepath.Join(w.dir, run+".out"), []byte(p.out.String()), 0o600)
		close(p.done)
	}()
	w.t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
			}
		}
	})
	return p
}

// run runs terraform args to the end (killed past limit).
func (w *faultWorkspace) run(run string, limit time.Duration, extraEnv []string, args ...string) (*faultTF, error) {
	w.t.Helper()
	p := w.start(run, extraEnv, args...)
	err := p.wait(limit)
	if !p.exited() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p, err
}

var faultApply = []string{"apply", "-auto-approve", "-input=false", "-no-color"}
var faultDestroy = []string{"destroy", "-auto-approve", "-input=false", "-no-color"}

func faultArgs(base []string, more ...string) []string { return append(slices.Clone(base), more...) }

// faultTail is the end of terraform's output, for messages.
func faultTail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = append([]string{"[...]"}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "\n")
}

// faultStateAttributes reads the attributes of postgraas_instance.<label> from
// the local state.
func faultStateAttributes(dir, label string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "terraform.tfstate"))
	if err != nil {
		return nil, err
	}
	var st struct {
		Resources []struct {
			Mode, Type, Name string
			Instances        []struct {
				Attributes map[string]any `json:"attributes"`
			} `json:"instances"`
		} `json:"resources"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("reading terraform.tfstate: %w", err)
	}
	for _, r := range st.Resources {
		if r.Mode != "managed" || r.Type != "postgraas_instance" || r.Name != label || len(r.Instances) != 1 {
			continue
		}
		attrs := map[string]string{}
		for k, v := range r.Instances[0].Attributes {
			if v != nil {
				attrs[k] = fmt.Sprint(v)
			}
		}
		return attrs, nil
	}
	return nil, fmt.Errorf("postgraas_instance.%s not in terraform.tfstate", label)
}

// ---------------------------------------------------------------- processes

// faultWaitForPause waits for the pid file the provider writes at point.
func faultWaitForPause(p *faultTF, pauseDir, point string) (int, error) {
	f := filepath.Join(pauseDir, point+".pid")
	deadline := time.Now().Add(faultPauseWait)
	for {
		if b, err := os.ReadFile(f); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return pid, nil
			}
		}
		if p.exited() {
			return 0, fmt.Errorf("terraform %s exited (%v) after %s without any provider pausing at %q "+
				"(no %s): is the pause point wired into the create path?\nterraform output:\n%s",
				p.name, p.err, p.elapsed.Round(time.Millisecond), point, f, faultTail(p.out.String(), 30))
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no provider paused at %q within %s (no %s): is the pause point wired into "+
				"the create path?\nterraform output so far:\n%s", point, faultPauseWait, f, faultTail(p.out.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultProcessGone reports whether pid has exited (a zombie has).
func faultProcessGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return os.IsNotExist(err)
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] == 'Z' || b[i+2] == 'X'
	}
	return false
}

// isFaultProvider reports whether pid is still a provider process (so a
// recycled pid is never signalled).
func isFaultProvider(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte("terraform-provider-postgraas"))
}

// faultKillAtCleanup makes sure the paused provider does not outlive the
// test, whatever happened to it.
func faultKillAtCleanup(t *testing.T, pid int) {
	t.Cleanup(func() {
		if !faultProcessGone(pid) && isFaultProvider(pid) {
			t.Logf("provider %d still running at the end of the test: SIGKILL", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

func faultWaitUntil(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func faultSigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// ---------------------------------------------------------------- meta DB and cluster

type faultRow struct {
	id    int64
	state string
}

// faultMetaRows lists the rows with that instance name.
func faultMetaRows(target pgsql.Target, name string) ([]faultRow, error) {
	var rows []faultRow
	err := withConn(target, func(ctx context.Context, c *pgx.Conn) error {
		r, err := c.Query(ctx, `SELECT id, coalesce(state, '') FROM db_instance WHERE postgraas_instance_name = $1 ORDER BY id`, name)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(r, func(row pgx.CollectableRow) (faultRow, error) {
			var f faultRow
			return f, row.Scan(&f.id, &f.state)
		})
		return err
	})
	return rows, err
}

// faultClusterObjects lists the cluster's roles and databases whose
// names start with prefix.
func faultClusterObjects(prefix string) (roles, dbs []string, err error) {
	err = withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT
			coalesce((SELECT array_agg(rolname::text ORDER BY rolname) FROM pg_roles WHERE starts_with(rolname, $1)), '{}'),
			coalesce((SELECT array_agg(datname::text ORDER BY datname) FROM pg_database WHERE starts_with(datname, $1)), '{}')`,
			prefix).Scan(&roles, &dbs)
	})
	return
}

func faultRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// faultPublicMayConnect returns the databases that a role with no grants (a
// throwaway one, i.e. PUBLIC) may connect to.
func faultPublicMayConnect(dbs ...string) ([]string, error) {
	probe := randomName("fltprobe")
	var open []string
	err := withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "CREATE ROLE "+pgsql.QuoteIdent(probe)+" NOLOGIN"); err != nil {
			return err
		}
		defer func() { _, _ = c.Exec(context.WithoutCancel(ctx), "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(probe)) }()
		for _, db := range dbs {
			var may bool
			if err := c.QueryRow(ctx, `SELECT has_database_privilege($1, $2, 'CONNECT')`, probe, db).Scan(&may); err != nil {
				return fmt.Errorf("has_database_privilege(%s, %s): %w", probe, db, err)
			}
			if may {
				open = append(open, db)
			}
		}
		return nil
	})
	return open, err
}

// faultCheckDatabaseClosed runs while the provider is paused right after CREATE
// DATABASE: neither another tenant nor the instance's own user may connect
// to the database yet.
func faultCheckDatabaseClosed(t *testing.T, i clusterInstance) {
	t.Helper()
	probe, probePW := randomName("fltprobe"), "probe-"+faultRandomHex(8)
	if err := adminExec("CREATE ROLE " + pgsql.QuoteIdent(probe) + " LOGIN PASSWORD " + pgsql.QuoteLiteral(probePW)); err != nil {
		t.Errorf("creating throwaway login role: %v", err)
		return
	}
	defer func() {
		if err := adminExec("DROP ROLE IF EXISTS " + pgsql.QuoteIdent(probe)); err != nil {
			t.Errorf("dropping throwaway role %s: %v", probe, err)
		}
	}()
	for _, target := range []pgsql.Target{clusterTenant(i.db, probe, probePW), clusterTenant(i.db, i.user, i.password)} {
		err := withConn(target, func(context.Context, *pgx.Conn) error { return nil })
		switch {
		case err == nil:
			t.Errorf("paused at %s: login as %s succeeded; the database must accept no login before PUBLIC's rights are revoked",
				pointDatabaseCreated, target)
		case pgsql.Code(err) == "":
			t.Errorf("paused at %s: login as %s failed without a refusal from the server: %v", pointDatabaseCreated, target, err)
		default:
			t.Logf("paused at %s: login as %s refused as it must be (SQLSTATE %s: %v)", pointDatabaseCreated, target, pgsql.Code(err), err)
		}
	}
}

// ---------------------------------------------------------------- docker

// faultDockerObjects returns the containers carrying the instance's name
// (label or container name) and the volumes they mount or that carry the
// label.
func faultDockerObjects(cli *dockerclient.Client, name string) (containers []container.Summary, volumes []string, err error) {
	ctx, cancel := dockerCtx()
	defer cancel()
	containers, err = cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", faultLabelName+"="+name))})
	if err != nil {
		return nil, nil, fmt.Errorf("listing containers labelled %s=%s: %w", faultLabelName, name, err)
	}
	// A container of that name without the label counts too.
	byName, err := cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("name", "^/"+name+"$"))})
	if err != nil {
		return nil, nil, fmt.Errorf("listing containers named %s: %w", name, err)
	}
	for _, c := range byName {
		if !slices.ContainsFunc(containers, func(o container.Summary) bool { return o.ID == c.ID }) {
			containers = append(containers, c)
		}
	}
	seen := map[string]bool{}
	for _, c := range containers {
		for _, m := range c.Mounts {
			if m.Type == "volume" && m.Name != "" && !seen[m.Name] {
				seen[m.Name] = true
				volumes = append(volumes, m.Name)
			}
		}
	}
	labelled, err := cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", faultLabelName+"="+name))})
	if err != nil {
		return nil, nil, fmt.Errorf("listing volumes labelled %s=%s: %w", faultLabelName, name, err)
	}
	for _, v := range labelled.Volumes {
		if !seen[v.Name] {
			seen[v.Name] = true
			volumes = append(volumes, v.Name)
		}
	}
	return containers, volumes, nil
}

func faultContainerIDs(cs []container.Summary) []string {
	ids := make([]string, len(cs))
	for n, c := range cs {
		ids[n] = c.ID[:12] + "(" + c.State + ")"
	}
	return ids
}

func faultVolumeExists(cli *dockerclient.Client, name string) (bool, error) {
	ctx, cancel := dockerCtx()
	defer cancel()
	_, err := cli.VolumeInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// ---------------------------------------------------------------- kill cases

type faultCase struct {
	backend string // "pg_cluster", "docker" or "kubernetes"
	sig     syscall.Signal
	point   string
	// pool: the docker instance claims from a warm pool of size 1 that the
	// same configuration makes first.
	pool bool
}

// faultInstance is one case's instance and what the test saw of it.
type faultInstance struct {
	clusterInstance
	prefix  string          // every role and database of the case starts with it
	volumes map[string]bool // docker volumes seen mounted by the instance's containers
	cli     *dockerclient.Client
	kube    kubernetes.Interface
	backend string
	pool    *warmPool // the pool it claims from, if any
	// What the paused run had made (container IDs; "role"/"database" ->
	// OID): the recovering run must remove it and create anew.
	paused map[string]bool
}

func newFaultInstance(t *testing.T, backend string) *faultInstance {
	n := randomName("flt")
	i := &faultInstance{
		clusterInstance: clusterInstance{label: "test", name: n, db: n + "_db", user: n + "_u", password: "pw'@:/" + n},
		prefix:          n,
		volumes:         map[string]bool{},
		backend:         backend,
		paused:          map[string]bool{},
	}
	switch backend {
	case "docker":
		i.name = "flt-" + n[len("flt_"):]
		i.cli = dockerClient(t)
	case "kubernetes":
		i.name = "flt-" + n[len("flt_"):]
		i.kube = kubeClient(t)
	}
	return i
}

func (i *faultInstance) config() string {
	if i.backend == "kubernetes" {
		return faultTerraformBlock + kubeConfig("", i.clusterInstance)
	}
	if i.backend == "docker" && i.pool != nil {
		return faultTerraformBlock + dockerConfig("", i.clusterInstance) + i.pool.hcl()
	}
	if i.backend == "docker" {
		return faultTerraformBlock + dockerConfig("", i.clusterInstance)
	}
	return faultTerraformBlock + clusterConfig("", i.clusterInstance)
}

// observe records the volumes of the instance's containers, so that a
// volume left dangling by a removal is found later.
func (i *faultInstance) observe(t *testing.T) []container.Summary {
	t.Helper()
	if i.backend != "docker" {
		return nil
	}
	cs, vols, err := faultDockerObjects(i.cli, i.name)
	if err != nil {
		t.Errorf("%v", err)
		return nil
	}
	for _, v := range vols {
		i.volumes[v] = true
	}
	return cs
}

// recordPaused notes what the paused run has made so far.
func (i *faultInstance) recordPaused(t *testing.T) {
	t.Helper()
	if i.backend == "kubernetes" {
		i.kubeRecordPaused(t)
		return
	}
	if i.backend == "docker" {
		cs := i.observe(t)
		for _, c := range cs {
			i.paused[c.ID] = true
		}
		if i.pool != nil {
			// A claimed container keeps its pool name until the claim
			// renames it: the row's claim says which it is.
			err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
				var id string
				err := c.QueryRow(ctx, `SELECT coalesce(container_id, '') FROM db_instance
					WHERE postgraas_instance_name = $1 AND pool_member IS NOT NULL`, i.name).Scan(&id)
				if err != nil {
					return fmt.Errorf("the paused run's claim: %w", err)
				}
				i.paused[id] = true
				t.Logf("paused: claimed container %s", id[:12])
				return nil
			})
			if err != nil {
				t.Errorf("%v", err)
			}
		}
		if len(cs) > 0 {
			t.Logf("paused: containers %v, volumes %v", faultContainerIDs(cs), faultSortedKeys(i.volumes))
		}
		return
	}
	oids, err := i.clusterOIDs()
	if err != nil {
		t.Errorf("%v", err)
	}
	for _, o := range oids {
		i.paused[o] = true
	}
	if len(oids) > 0 {
		t.Logf("paused: %v", oids)
	}
}

// clusterOIDs names the instance's role and database with their OIDs, as
// "role 16384", "database 16385".
func (i *faultInstance) clusterOIDs() ([]string, error) {
	var oids []string
	err := withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT 'role ' || oid FROM pg_roles WHERE rolname = $1
			UNION ALL SELECT 'database ' || oid FROM pg_database WHERE datname = $2`, i.user, i.db)
		if err != nil {
			return err
		}
		oids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return oids, err
}

// leftovers describes what exists of the instance: rows, cluster objects
// with the case's prefix, containers, and seen volumes still there.
func (i *faultInstance) leftovers(t *testing.T) []string {
	t.Helper()
	var left []string
	rows, err := faultMetaRows(metaDB(), i.name)
	if err != nil {
		t.Errorf("reading the meta DB: %v", err)
	}
	for _, r := range rows {
		left = append(left, fmt.Sprintf("meta DB row id %d state %q", r.id, r.state))
	}
	if i.backend == "kubernetes" {
		return append(left, i.kubeLeftovers(t)...)
	}
	if i.backend == "pg_cluster" {
		roles, dbs, err := faultClusterObjects(i.prefix)
		if err != nil {
			t.Errorf("listing cluster objects: %v", err)
		}
		for _, r := range roles {
			left = append(left, "role "+r)
		}
		for _, d := range dbs {
			left = append(left, "database "+d)
		}
		return left
	}
	cs := i.observe(t)
	for _, c := range cs {
		left = append(left, fmt.Sprintf("container %s %s (%s)", c.ID[:12], strings.Join(c.Names, ","), c.State))
	}
	left = append(left, i.pausedContainersLeft(t, cs)...)
	for _, v := range faultSortedKeys(i.volumes) {
		ok, err := faultVolumeExists(i.cli, v)
		if err != nil {
			t.Errorf("inspecting volume %s: %v", v, err)
		}
		if ok {
			left = append(left, "volume "+v)
		}
	}
	return left
}

// pausedContainersLeft names the containers the paused run had made (or
// claimed) that still exist and are not among seen: a claimed container
// still under its pool name is found only by its ID.
func (i *faultInstance) pausedContainersLeft(t *testing.T, seen []container.Summary) []string {
	t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	var left []string
	for _, id := range faultSortedKeys(i.paused) {
		if slices.ContainsFunc(seen, func(c container.Summary) bool { return c.ID == id }) {
			continue
		}
		c, err := i.cli.ContainerInspect(ctx, id)
		if cerrdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			t.Errorf("inspecting container %s: %v", id, err)
			continue
		}
		left = append(left, fmt.Sprintf("container %s %s of the paused run", id[:12], c.Name))
	}
	return left
}

func faultSortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// sweep removes whatever a failed case left, so a failure does not leak
// into the shared servers; it reports what it had to remove.
func (i *faultInstance) sweep(t *testing.T) {
	var swept []string
	if err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		tag, err := c.Exec(ctx, `DELETE FROM db_instance WHERE postgraas_instance_name = $1`, i.name)
		if err == nil && tag.RowsAffected() > 0 {
			swept = append(swept, fmt.Sprintf("%d meta DB rows", tag.RowsAffected()))
		}
		return err
	}); err != nil {
		t.Logf("sweep: meta DB: %v", err)
	}
	if i.backend == "kubernetes" {
		swept = append(swept, i.kubeSweep(t)...)
	} else if i.backend == "pg_cluster" {
		swept = append(swept, faultSweepCluster(t, i.prefix)...)
	} else {
		ctx, cancel := dockerCtx()
		defer cancel()
		cs, vols, err := faultDockerObjects(i.cli, i.name)
		if err != nil {
			t.Logf("sweep: %v", err)
		}
		for _, v := range vols {
			i.volumes[v] = true
		}
		for _, c := range cs {
			if err := i.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err == nil {
				swept = append(swept, "container "+c.ID[:12])
			}
		}
		for _, v := range faultSortedKeys(i.volumes) {
			if ok, _ := faultVolumeExists(i.cli, v); ok {
				if err := i.cli.VolumeRemove(ctx, v, true); err == nil {
					swept = append(swept, "volume "+v)
				}
			}
		}
	}
	if len(swept) > 0 {
		t.Logf("sweep after the test removed: %s", strings.Join(swept, ", "))
	}
}

// faultSweepCluster drops the databases and roles whose names start with
// prefix.
func faultSweepCluster(t *testing.T, prefix string) []string {
	var swept []string
	roles, dbs, err := faultClusterObjects(prefix)
	if err != nil {
		t.Logf("sweep: %v", err)
		return nil
	}
	for _, d := range dbs {
		if err := adminExec("DROP DATABASE IF EXISTS " + pgsql.QuoteIdent(d) + " WITH (FORCE)"); err != nil {
			t.Logf("sweep: %v", err)
		} else {
			swept = append(swept, "database "+d)
		}
	}
	for _, r := range roles {
		if err := adminExec("DROP ROLE IF EXISTS " + pgsql.QuoteIdent(r)); err != nil {
			t.Logf("sweep: %v", err)
		} else {
			swept = append(swept, "role "+r)
		}
	}
	return swept
}

// checkConverged checks the instance after the recovering apply: one ready
// row, a working login, no public access, nothing else with its name.
func (i *faultInstance) checkConverged(t *testing.T, w *faultWorkspace) {
	t.Helper()
	attrs, err := faultStateAttributes(w.dir, i.label)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	rows, err := faultMetaRows(metaDB(), i.name)
	switch {
	case err != nil:
		t.Errorf("reading the meta DB: %v", err)
	case len(rows) != 1 || rows[0].state != "ready":
		t.Errorf("meta DB rows named %s: %+v, want exactly one in state ready", i.name, rows)
	case strconv.FormatInt(rows[0].id, 10) != attrs["id"]:
		t.Errorf("meta DB row id %d, state id %s", rows[0].id, attrs["id"])
	default:
		t.Logf("recovered into meta DB row %d", rows[0].id)
	}
	if i.backend == "kubernetes" {
		i.kubeCheckConverged(t, attrs)
		return
	}
	if i.backend == "pg_cluster" {
		if err := writeAndRead(clusterTenant(i.db, i.user, i.password)); err != nil {
			t.Errorf("instance login after recovery: %v", err)
		}
		if open, err := faultPublicMayConnect(i.db); err != nil {
			t.Errorf("%v", err)
		} else if len(open) > 0 {
			t.Errorf("PUBLIC may connect to %v after recovery", open)
		}
		roles, dbs, err := faultClusterObjects(i.prefix)
		if err != nil {
			t.Errorf("%v", err)
		} else if !slices.Equal(roles, []string{i.user}) || !slices.Equal(dbs, []string{i.db}) {
			t.Errorf("cluster objects with prefix %s: roles %v, databases %v; want only role %s and database %s",
				i.prefix, roles, dbs, i.user, i.db)
		}
		oids, err := i.clusterOIDs()
		if err != nil {
			t.Errorf("%v", err)
		}
		for _, o := range oids {
			if i.paused[o] {
				t.Errorf("%s is the one the killed run made: the recovering run must remove it and create anew", o)
			}
		}
		return
	}
	port, err := strconv.Atoi(attrs["port"])
	if err != nil {
		t.Errorf("port in state %q: %v", attrs["port"], err)
	} else if err := writeAndRead(tenant(attrs["host"], port, i.db, i.user, i.password)); err != nil {
		t.Errorf("instance login via %s:%d from state after recovery: %v", attrs["host"], port, err)
	}
	before := faultSortedKeys(i.volumes) // the dead run's and ones seen so far
	cs := i.observe(t)
	if len(cs) != 1 || cs[0].ID != attrs["container_id"] {
		t.Errorf("containers of %s: %v, want only the one in state (%s)", i.name, faultContainerIDs(cs), attrs["container_id"])
	}
	if i.paused[attrs["container_id"]] {
		t.Errorf("container %s is the one the killed run made: the recovering run must remove it and create anew", attrs["container_id"])
	}
	if left := i.pausedContainersLeft(t, cs); len(left) > 0 {
		t.Errorf("after recovery: %s", strings.Join(left, "; "))
	}
	if i.pool != nil {
		if _, err := idleMembers(t, i.pool.name, i.pool.size); err != nil {
			t.Errorf("the pool after recovery: %v", err)
		}
	}
	mounted := map[string]bool{}
	for _, c := range cs {
		for _, m := range c.Mounts {
			mounted[m.Name] = true
		}
	}
	for _, v := range before {
		ok, err := faultVolumeExists(i.cli, v)
		if err != nil {
			t.Errorf("%v", err)
		} else if ok && !mounted[v] {
			t.Errorf("volume %s (mounted by a container of the killed run) left dangling after recovery", v)
		}
	}
}

func runFaultCase(t *testing.T, providerDir string, c faultCase) {
	if c.backend == "docker" {
		testAccPreCheck(t, dockerEnv...)
	} else if c.backend == "kubernetes" {
		testAccPreCheck(t, kubeEnv...)
	} else {
		testAccPreCheck(t)
	}
	i := newFaultInstance(t, c.backend)
	if c.pool {
		p := newWarmPool(t, 1)
		i.pool = &p
		i.clusterInstance = p.claiming(i.clusterInstance)
		t.Cleanup(func() { sweepPool(t, p) })
	}
	t.Cleanup(func() { i.sweep(t) }) // last: after the processes are gone
	w := newFaultWorkspace(t, providerDir, i.config(), "DEBUG")
	t.Logf("instance %s, workspace %s", i.name, w.dir)

	// 1. An apply whose provider pauses at the point, then gets the signal.
	pauseDir := filepath.Join(w.dir, "pause")
	if err := os.Mkdir(pauseDir, 0o755); err != nil {
		t.Fatal(err)
	}
	killed := w.start("killed-apply", []string{"POSTGRAAS_FAULT_PAUSE=" + c.point, "POSTGRAAS_FAULT_DIR=" + pauseDir,
		"POSTGRAAS_LEASE_TTL=" + faultLeaseTTL}, faultApply...)
	pid, err := faultWaitForPause(killed, pauseDir, c.point)
	if err != nil {
		t.Fatalf("%v", err)
	}
	faultKillAtCleanup(t, pid)
	t.Logf("provider %d paused at %s, %s after terraform started", pid, c.point, time.Since(killed.started).Round(time.Millisecond))
	if c.point == pointDatabaseCreated {
		faultCheckDatabaseClosed(t, i.clusterInstance)
	}
	i.recordPaused(t)

	sent := time.Now()
	if err := syscall.Kill(pid, c.sig); err != nil {
		t.Fatalf("sending %s to provider %d: %v", faultSigName(c.sig), pid, err)
	}
	if !faultWaitUntil(faultExitWait, func() bool { return faultProcessGone(pid) }) {
		t.Fatalf("provider %d still running %s after %s; terraform output so far:\n%s",
			pid, faultExitWait, faultSigName(c.sig), faultTail(killed.out.String(), 30))
	}
	providerExit := time.Since(sent)
	if err := killed.wait(faultExitWait); !killed.exited() {
		t.Fatalf("%v", err)
	}
	t.Logf("%s: provider exited %s after the signal, terraform %s after (exit: %v); terraform said:\n%s",
		faultSigName(c.sig), providerExit.Round(time.Millisecond), time.Since(sent).Round(time.Millisecond), killed.err,
		faultTail(killed.out.String(), 12))
	if killed.err == nil {
		t.Fatalf("the apply whose provider got %s at %s succeeded; want an error", faultSigName(c.sig), c.point)
	}

	left := i.leftovers(t)
	if c.sig == syscall.SIGTERM {
		// The provider undoes what it made before it exits.
		if len(left) > 0 {
			t.Errorf("after %s at %s the provider left: %s", faultSigName(c.sig), c.point, strings.Join(left, "; "))
		}
	} else {
		if len(left) == 0 {
			left = []string{"nothing"}
		}
		t.Logf("left by the killed run: %s", strings.Join(left, "; "))
	}

	if i.pool != nil {
		// The replacement member the killed claim added is the pool's to
		// refill once its lease runs out; the recovering apply's refresh
		// must see that, or it leaves the pool short (refilled later).
		if !faultWaitUntil(time.Minute, func() bool { n, err := liveWarming(i.pool.name); return err == nil && n == 0 }) {
			t.Fatalf("pool %s: a warming member's lease still runs after a minute", i.pool.name)
		}
	}

	// 2. A plain apply converges: waits out the lease, takes over, creates.
	rec, err := w.run("recover-apply", faultRunLimit, nil, faultApply...)
	if err != nil {
		t.Fatalf("recovering apply after %s at %s failed after %s: %v\n%s", faultSigName(c.sig), c.point,
			rec.elapsed.Round(time.Millisecond), err, faultTail(rec.out.String(), 40))
	}
	t.Logf("recovering apply took %s", rec.elapsed.Round(time.Millisecond))
	if rec.elapsed >= faultRecoverLimit {
		t.Errorf("recovering apply took %s, want < %s", rec.elapsed.Round(time.Millisecond), faultRecoverLimit)
	}
	i.checkConverged(t, w)

	// 3. Destroy leaves nothing.
	d, err := w.run("destroy", faultRunLimit, nil, faultDestroy...)
	if err != nil {
		t.Fatalf("destroy failed after %s: %v\n%s", d.elapsed.Round(time.Millisecond), err, faultTail(d.out.String(), 40))
	}
	t.Logf("destroy took %s", d.elapsed.Round(time.Millisecond))
	if left := i.leftovers(t); len(left) > 0 {
		t.Errorf("after destroy: %s", strings.Join(left, "; "))
	}
	if i.pool != nil {
		if err := checkPoolGone(t, *i.pool, nil)(nil); err != nil {
			t.Errorf("after destroy: %v", err)
		}
	}
}

// faultAccPreCheck: like every acceptance test (resource.Test), these run
// only with TF_ACC set; then a missing environment fails them.
func faultAccPreCheck(t *testing.T, extra ...string) {
	t.Helper()
	if os.Getenv("TF_ACC") == "" {
		t.Skip("Acceptance tests skipped unless env 'TF_ACC' set")
	}
	t.Parallel()
	testAccPreCheck(t, extra...)
}

func faultCases(backend string, points ...string) []faultCase {
	var cs []faultCase
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		for _, p := range points {
			cs = append(cs, faultCase{backend: backend, sig: sig, point: p})
		}
	}
	return cs
}

func runFaultCases(t *testing.T, cases []faultCase) {
	providerDir := faultProviderDir(t)
	for _, c := range cases {
		t.Run(faultSigName(c.sig)+"_at_"+c.point, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			runFaultCase(t, providerDir, c)
			t.Logf("case took %s", time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestAccFault_pgClusterKill: the provider killed (SIGKILL) or stopped
// (SIGTERM) at each point of a pg_cluster create.
func TestAccFault_pgClusterKill(t *testing.T) {
	faultAccPreCheck(t)
	runFaultCases(t, faultCases("pg_cluster", pointReserved, pointRoleCreated, pointDatabaseCreated, pointBackendDone))
}

// TestAccFault_dockerKill: the same at each point of a docker create.
func TestAccFault_dockerKill(t *testing.T) {
	faultAccPreCheck(t, dockerEnv...)
	dangling := faultDanglingVolumes(t)
	since := time.Now()
	// Informational: the engine is shared, so a new dangling volume cannot
	// be pinned on these tests; the cases check the volumes they saw.
	t.Cleanup(func() {
		var created []string
		for name, at := range faultDanglingVolumes(t) {
			if _, old := dangling[name]; !old && !at.Before(since.Add(-time.Second)) {
				created = append(created, name)
			}
		}
		if len(created) > 0 {
			sort.Strings(created)
			t.Logf("note: %d dangling volume(s) appeared on the engine while these tests ran (maybe not theirs): %v", len(created), created)
		}
	})
	runFaultCases(t, faultCases("docker", pointReserved, pointContainerCreated, pointStarted, pointBackendDone))
}

// faultDanglingVolumes lists the engine's dangling volumes with their creation
// time.
func faultDanglingVolumes(t *testing.T) map[string]time.Time {
	ctx, cancel := dockerCtx()
	defer cancel()
	l, err := dockerClient(t).VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("dangling", "true"))})
	if err != nil {
		t.Logf("listing dangling volumes: %v", err)
		return nil
	}
	out := map[string]time.Time{}
	for _, v := range l.Volumes {
		at, err := time.Parse(time.RFC3339, v.CreatedAt)
		if err != nil {
			at = time.Now() // unknown: counted as new
		}
		out[v.Name] = at
	}
	return out
}

// ---------------------------------------------------------------- meta DB killed mid-apply

// faultMetaServer is a PostgreSQL 15 server of the test's own, for the meta DB
// only, so it can be killed without disturbing the other tests.
type faultMetaServer struct {
	*pgserver.Server
	target pgsql.Target
}

func startFaultMetaServer(t *testing.T) *faultMetaServer {
	t.Helper()
	srv := startPrivateServer(t, "meta DB", pgserver.Options{Superuser: "postgraas", MaxConnections: 200})
	return &faultMetaServer{Server: srv, target: srv.Target}
}

// startPrivateServer starts a PostgreSQL server of the test's own, removed
// when the test ends (with the end of its log when the test failed).
func startPrivateServer(t *testing.T, what string, opts pgserver.Options) *pgserver.Server {
	t.Helper()
	srv, err := pgserver.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("private %s server log (end):\n%s", what, srv.LogTail(40))
		}
		if err := srv.Remove(); err != nil {
			t.Log(err)
		}
	})
	return srv
}

func (p *faultMetaServer) start() error { return p.Start() }
func (p *faultMetaServer) kill() error  { return p.Kill() }

func (p *faultMetaServer) hcl() string {
	t := p.target
	return fmt.Sprintf(`metadb = {
    host     = %s
    port     = %d
    db_name  = %s
    username = %s
    password = %s
    sslmode  = "disable"
  }`, hclString(t.Host), t.Port, hclString(t.Database), hclString(t.User), hclString(t.Password))
}

// faultRowCounts counts the rows whose names start with prefix, in all and by
// state.
func faultRowCounts(target pgsql.Target, prefix string) (total int, byState map[string]int, err error) {
	err = withConn(target, func(ctx context.Context, c *pgx.Conn) error {
		total, byState, err = faultRowCountsOn(c, prefix)
		return err
	})
	return
}

func faultRowCountsOn(c *pgx.Conn, prefix string) (total int, byState map[string]int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	byState = map[string]int{}
	rows, err := c.Query(ctx, `SELECT coalesce(state, ''), count(*) FROM db_instance
		WHERE starts_with(postgraas_instance_name, $1) GROUP BY 1`, prefix)
	if err != nil {
		return 0, nil, err
	}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			return 0, nil, err
		}
		byState[s] = n
		total += n
	}
	return total, byState, rows.Err()
}

// TestAccFault_metaDBKilledMidApply: the meta DB dies (immediate shutdown)
// while 60 pg_cluster instances are being created 30 at a time; once it is
// back, the same apply converges with nothing orphaned, and destroy leaves
// nothing.
func TestAccFault_metaDBKilledMidApply(t *testing.T) {
	faultAccPreCheck(t)
	const count, killAt = 60, 20
	providerDir := faultProviderDir(t)
	meta := startFaultMetaServer(t)
	prefix := randomName("fmd")
	t.Cleanup(func() {
		if swept := faultSweepCluster(t, prefix); len(swept) > 0 {
			t.Logf("sweep after the test removed: %s", strings.Join(swept, ", "))
		}
	})
	insts := make([]clusterInstance, count)
	wantRoles, wantDBs := make([]string, count), make([]string, count)
	for n := range insts {
		name := fmt.Sprintf("%s_%02d", prefix, n)
		insts[n] = clusterInstance{label: fmt.Sprintf("i%02d", n), name: name, db: name + "_db", user: name + "_u", password: "pw-" + name}
		wantRoles[n], wantDBs[n] = insts[n].user, insts[n].db
	}
	sort.Strings(wantRoles)
	sort.Strings(wantDBs)
	// The provider block names every metadb setting; the shared meta DB's
	// variables are left out so nothing can reach it.
	w := newFaultWorkspace(t, providerDir, faultTerraformBlock+clusterConfig(meta.hcl(), insts...), "INFO", "POSTGRAAS_METADB_")
	env := []string{"POSTGRAAS_LEASE_TTL=" + faultLeaseTTL}
	apply := faultArgs(faultApply, "-parallelism=30")

	// 1. Kill the meta DB once about killAt rows exist. Rows come in
	// bursts, so the count is polled on one connection without pause.
	first := w.start("apply-1", env, apply...)
	var seen int
	var seenStates map[string]int
	var watch *pgx.Conn
	defer func() {
		if watch != nil {
			_ = watch.Close(context.Background())
		}
	}()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if watch == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			watch, _ = meta.target.Connect(ctx)
			cancel()
		}
		if watch != nil {
			if n, states, err := faultRowCountsOn(watch, prefix); err == nil {
				seen, seenStates = n, states
				if n >= killAt {
					break
				}
			} else if pgsql.Code(err) == "" { // not "no table yet": reconnect
				_ = watch.Close(context.Background())
				watch = nil
			}
		}
		if first.exited() {
			t.Fatalf("the apply ended (%v) after %s before %d rows existed (saw %d %v):\n%s", first.err,
				first.elapsed.Round(time.Millisecond), killAt, seen, seenStates, faultTail(first.out.String(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d rows after 3 minutes (saw %d %v):\n%s", killAt, seen, seenStates, faultTail(first.out.String(), 30))
		}
		time.Sleep(time.Millisecond)
	}
	killStart := time.Now()
	if err := meta.kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("meta DB stopped (immediate) %s into the apply, with %d rows %v; the stop took %s",
		killStart.Sub(first.started).Round(time.Millisecond), seen, seenStates, time.Since(killStart).Round(time.Millisecond))
	if err := first.wait(5 * time.Minute); !first.exited() {
		t.Fatalf("%v", err)
	}
	t.Logf("the first apply exited %s after the meta DB died (exit: %v); its end:\n%s",
		time.Since(killStart).Round(time.Millisecond), first.err, faultTail(first.out.String(), 15))
	if first.err == nil {
		t.Fatalf("the apply succeeded although its meta DB died in the middle")
	}

	// 2. The meta DB comes back; see what the dead run left.
	if err := meta.start(); err != nil {
		t.Fatal(err)
	}
	total, states, err := faultRowCounts(meta.target, prefix)
	if err != nil {
		t.Fatalf("counting rows after restart: %v", err)
	}
	roles, dbs, err := faultClusterObjects(prefix)
	if err != nil {
		t.Fatal(err)
	}
	inState := 0
	if b, err := os.ReadFile(filepath.Join(w.dir, "terraform.tfstate")); err == nil {
		inState = bytes.Count(b, []byte(`"type": "postgraas_instance"`))
	}
	t.Logf("after restart, before re-apply: %d rows %v (%d blocked, i.e. not ready), %d roles and %d databases on the cluster, %d instances in state",
		total, states, total-states["ready"], len(roles), len(dbs), inState)

	// 3. The same apply again converges.
	rec, err := w.run("apply-2", faultRunLimit, env, apply...)
	if err != nil {
		t.Fatalf("re-apply failed after %s: %v\n%s", rec.elapsed.Round(time.Millisecond), err, faultTail(rec.out.String(), 60))
	}
	t.Logf("recovering apply took %s", rec.elapsed.Round(time.Millisecond))
	total, states, err = faultRowCounts(meta.target, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if total != count || states["ready"] != count {
		t.Errorf("after re-apply: %d rows %v, want %d ready", total, states, count)
	}
	for _, i := range insts {
		if rows, err := faultMetaRows(meta.target, i.name); err != nil || len(rows) != 1 || rows[0].state != "ready" {
			t.Errorf("rows named %s: %+v (%v), want one ready", i.name, rows, err)
		}
		if err := writeAndRead(clusterTenant(i.db, i.user, i.password)); err != nil {
			t.Errorf("login to %s: %v", i.name, err)
		}
	}
	if open, err := faultPublicMayConnect(wantDBs...); err != nil {
		t.Error(err)
	} else if len(open) > 0 {
		t.Errorf("PUBLIC may connect to %v", open)
	}
	roles, dbs, err = faultClusterObjects(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(roles, wantRoles) || !slices.Equal(dbs, wantDBs) {
		t.Errorf("after re-apply: roles %v, databases %v; want exactly the %d instances' (orphans or missing ones)", roles, dbs, count)
	}

	// 4. Destroy leaves nothing.
	d, err := w.run("destroy", faultRunLimit, env, faultArgs(faultDestroy, "-parallelism=30")...)
	if err != nil {
		t.Fatalf("destroy failed after %s: %v\n%s", d.elapsed.Round(time.Millisecond), err, faultTail(d.out.String(), 40))
	}
	t.Logf("destroy took %s", d.elapsed.Round(time.Millisecond))
	total, states, err = faultRowCounts(meta.target, prefix)
	if err != nil || total != 0 {
		t.Errorf("after destroy: %d rows %v (%v)", total, states, err)
	}
	roles, dbs, err = faultClusterObjects(prefix)
	if err != nil || len(roles)+len(dbs) > 0 {
		t.Errorf("after destroy: roles %v, databases %v (%v)", roles, dbs, err)
	}
}

// TestAccFault_rotationKilledAfterAlter: SIGKILL right after a write-only
// rotation's ALTER ROLE, before Terraform records the new verifier. The
// server has the new password, state the old verifier; the re-apply finds
// the instance already accepting the configured password (no other proof
// is needed), records it, and the destroy that follows authenticates.
func TestAccFault_rotationKilledAfterAlter(t *testing.T) {
	faultAccPreCheck(t)
	const point = "rotate.password_set"
	i := newClusterInstance("rot")
	i.name = "flt_" + faultRandomHex(4)
	i.db, i.user = i.name+"_db", i.name+"_u"
	t.Cleanup(func() {
		_ = adminExec("DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(i.db)+" WITH (FORCE)", "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(i.user))
		_ = withConnExec(metaDB(), "DELETE FROM db_instance WHERE postgraas_instance_name = "+pgsql.QuoteLiteral(i.name))
	})
	config := func(password string, version int) string {
		v := i
		v.password, v.woVersion = password, version
		return "terraform {\n  required_providers {\n    postgraas = { source = \"postgraas/postgraas\" }\n  }\n}\n" +
			clusterConfig("", v)
	}
	pw1, pw2 := "rot-1-"+faultRandomHex(6), "rot-2-"+faultRandomHex(6)
	w := newFaultWorkspace(t, faultProviderDir(t), config(pw1, 1), "DEBUG")
	write := func(cfg string) {
		if err := os.WriteFile(filepath.Join(w.dir, "main.tf"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := w.run("apply-1", faultRunLimit, nil, faultApply...); err != nil {
		t.Fatalf("first apply: %v\n%s", err, faultTail(p.out.String(), 30))
	}

	write(config(pw2, 2))
	pauseDir := filepath.Join(w.dir, "pause")
	if err := os.Mkdir(pauseDir, 0o755); err != nil {
		t.Fatal(err)
	}
	killed := w.start("killed-rotate", []string{"POSTGRAAS_FAULT_PAUSE=" + point, "POSTGRAAS_FAULT_DIR=" + pauseDir}, faultApply...)
	pid, err := faultWaitForPause(killed, pauseDir, point)
	if err != nil {
		t.Fatalf("%v", err)
	}
	faultKillAtCleanup(t, pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := killed.wait(faultExitWait); !killed.exited() {
		t.Fatalf("%v", err)
	}
	if killed.err == nil {
		t.Fatal("the killed rotation's apply succeeded; want an error")
	}
	// The kill landed after the act: the server already has pw2.
	mustDo(t, writeAndRead(clusterTenant(i.db, i.user, pw2)))

	if p, err := w.run("recover-rotate", faultRunLimit, nil, faultApply...); err != nil {
		t.Fatalf("re-apply after the killed rotation: %v\n%s", err, faultTail(p.out.String(), 30))
	}
	mustDo(t, writeAndRead(clusterTenant(i.db, i.user, pw2)))
	if p, err := w.run("destroy", faultRunLimit, nil, faultDestroy...); err != nil {
		t.Fatalf("destroy after recovery: %v\n%s", err, faultTail(p.out.String(), 30))
	}
	role, db, err := clusterObjects(i.user, i.db)
	if err != nil || role || db {
		t.Fatalf("after destroy: role %v, database %v (%v)", role, db, err)
	}
	if n, err := metaRows(i.name); err != nil || n != 0 {
		t.Fatalf("after destroy: %d rows (%v)", n, err)
	}
}

// TestAccFault_dockerPoolClaimKill: the provider killed (SIGKILL) or stopped
// (SIGTERM) right after a create claimed a warm container (the meta DB row
// records the claim; the container still has its pool name and bootstrap
// role), and after it renamed and personalised it (the instance's name and
// role, the row still creating). The next apply removes the claimed
// container by the claim's proof, creates the instance anew, and refills
// the pool.
func TestAccFault_dockerPoolClaimKill(t *testing.T) {
	faultAccPreCheck(t, dockerEnv...)
	cases := faultCases("docker", pointPoolClaimed, pointPoolPersonal)
	for k := range cases {
		cases[k].pool = true
	}
	runFaultCases(t, cases)
}

// liveWarming counts the pool's warming members whose maker may be alive.
func liveWarming(pool string) (int, error) {
	var n int
	err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT count(*) FROM postgraas_pool_member
			WHERE pool = $1 AND state = 'warming' AND lease_expires_at > now()`, pool).Scan(&n)
	})
	return n, err
}

// sweepPool removes what a failed case left of a pool: its rows and the
// containers labelled as its.
func sweepPool(t *testing.T, p warmPool) {
	var swept []string
	if err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		tag, err := c.Exec(ctx, `DELETE FROM postgraas_pool_member WHERE pool = $1`, p.name)
		if err == nil && tag.RowsAffected() > 0 {
			swept = append(swept, fmt.Sprintf("%d pool member rows", tag.RowsAffected()))
		}
		if err == nil {
			_, err = c.Exec(ctx, `DELETE FROM postgraas_warm_pool WHERE name = $1`, p.name)
		}
		return err
	}); err != nil {
		t.Logf("sweep: meta DB: %v", err)
	}
	cs, err := poolContainers(t, p.name)
	if err != nil {
		t.Logf("sweep: %v", err)
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	for id := range cs {
		if err := dockerClient(t).ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true}); err == nil {
			swept = append(swept, "pool container "+id[:12])
		}
	}
	if len(swept) > 0 {
		t.Logf("sweep after the test removed: %s", strings.Join(swept, ", "))
	}
}
