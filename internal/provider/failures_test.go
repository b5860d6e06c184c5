//go:build unix

package provider

// Failures as users meet them (issue 9): each way the servers the provider
// depends on can fail it is produced for real — a paused meta DB
// container, a closed port, a listener that never speaks the protocol,
// wrong and missing passwords, a Docker engine that never answers, an image
// whose database never appears, an operation that outlasts its timeout —
// and the diagnostic is checked: its summary ("<Component>: <reason>",
// "Timed out", "Instance did not start"), the timeout and the settings its
// detail names, and how long the run took to fail.
//
// Terraform runs as a subprocess against the provider as released
// (plainBuild) with -json, so summary and detail are read as the provider
// wrote them rather than as wrapped lines, and the time to fail is the
// whole run's, as a user waits for it. It is logged per case, and bounded
// only generously (the machine is shared): what the bounds catch is a
// failure that waits minutes, as the provider did before issue 9.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/netfake"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

const (
	// failureConnectTimeout is the cases' connect_timeout unless they set
	// one: short, so the cases that wait for it are quick, and distinct
	// from the default.
	failureConnectTimeout = 2 * time.Second
	// failureRunLimit: a run still going then is interrupted (SIGINT, so
	// the provider can remove what it made, then SIGKILL) and the case
	// fails.
	failureRunLimit = 3 * time.Minute
	// Bounds on the time to fail. Fast: what the provider can tell at once
	// (a refused connection or login), which used to wait for a timeout of
	// minutes. Start: a docker create that fails fast, the new server's
	// initialisation included (the old provider waited for the 10-minute
	// create timeout); Ready: from the server's "ready to accept
	// connections" to the failure. Connect: one connect timeout, plus
	// terraform's own start and plan.
	failureFastBound     = 30 * time.Second
	failureStartBound    = 90 * time.Second
	failureReadyBound    = 15 * time.Second
	failureConnectBound  = 3*failureConnectTimeout + 10*time.Second
	failureParallelBound = 4*failureConnectTimeout + 10*time.Second
	// failureParallel instances meet the paused meta DB in one run.
	failureParallel = 6
	failureLabel    = "postgraas.test"
)

// failureCase is one way to fail and the diagnostic it must give.
type failureCase struct {
	name    string
	backend string // backend.KindPGCluster or backend.KindDocker
	count   int    // instances in the configuration; 0 means 1, unless lookups
	lookups int    // postgraas_instance data sources, of names nothing has
	plan    bool   // run terraform plan; otherwise apply
	// setup makes the failure and says how the configuration uses it.
	setup func(t *testing.T, fx *failureFixtures) failureSetup
	// Every error diagnostic has this summary, and one names each
	// instance and each data source's name.
	summary string
	// detail lists words each detail contains, absent words none does
	// ({db} is the instance's db_name).
	detail, absent []string
	bound          time.Duration // the time to fail stays under it
}

// failureSetup is how a case's configuration uses its failure.
type failureSetup struct {
	provider string   // more lines of the provider block
	docker   string   // more lines of its docker block
	instance string   // more lines of every instance
	lookup   string   // more lines of every data source
	extra    string   // more HCL at the top level
	dropEnv  []string // prefixes of the variables the run does not inherit
	// connectTimeout is connect_timeout in seconds; 0 means
	// failureConnectTimeout.
	connectTimeout int
	// prepare runs before the run that fails, finish after it, before
	// the check that nothing is left.
	prepare, finish func(t *testing.T, w *faultWorkspace)
	// check looks at the failed run's error diagnostics.
	check func(t *testing.T, diags []failureDiag)
}

var failureCases = []failureCase{
	{
		// 1. A server that accepts the connection and never answers.
		name: "meta_db_paused", backend: backend.KindPGCluster,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			return failureSetup{provider: failureMetaDBHCL(fx.pausedMetaDB(t)), dropEnv: []string{"POSTGRAAS_METADB_"}}
		},
		summary: "Meta DB: no answer",
		detail:  []string{"2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT", "metadb.host", "POSTGRAAS_METADB_HOST"},
		absent:  []string{"timeouts.create"},
		bound:   failureConnectBound,
	},
	{
		// 2. Nothing listens.
		name: "meta_db_port_closed", backend: backend.KindPGCluster,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			m := metaDB()
			m.Port = netfake.ClosedPort(t)
			return failureSetup{provider: failureMetaDBHCL(m), dropEnv: []string{"POSTGRAAS_METADB_"}}
		},
		summary: "Meta DB: connection refused",
		detail:  []string{"metadb.host", "metadb.port", "POSTGRAAS_METADB_HOST", "POSTGRAAS_METADB_PORT"},
		bound:   failureFastBound,
	},
	{
		// 3. Something listens that is no PostgreSQL server.
		name: "meta_db_silent_listener", backend: backend.KindPGCluster,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			m := metaDB()
			var accepted func() int
			m.Port, accepted = netfake.SilentCounting(t)
			return failureSetup{provider: failureMetaDBHCL(m), dropEnv: []string{"POSTGRAAS_METADB_"},
				check: failureConnected("meta DB", accepted)}
		},
		summary: "Meta DB: no answer",
		detail:  []string{"2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT", "metadb.host", "POSTGRAAS_METADB_HOST"},
		absent:  []string{"timeouts.create"},
		bound:   failureConnectBound,
	},
	{
		name: "meta_db_wrong_password", backend: backend.KindPGCluster,
		setup:   failureMetaDBPassword("wrong-" + faultRandomHex(8)),
		summary: "Meta DB: wrong password",
		detail:  []string{"metadb.password", "POSTGRAAS_METADB_PASSWORD"},
		bound:   failureFastBound,
	},
	{
		// PGPASSWORD and PGPASSFILE are left out too: the provider must not
		// find a password elsewhere.
		name: "meta_db_no_password", backend: backend.KindPGCluster,
		setup:   failureMetaDBPassword(""),
		summary: "Meta DB: no password set",
		detail:  []string{"metadb.password", "POSTGRAAS_METADB_PASSWORD"},
		bound:   failureFastBound,
	},
	{
		name: "cluster_admin_wrong_password", backend: backend.KindPGCluster,
		setup:   failureClusterPassword("wrong-" + faultRandomHex(8)),
		summary: "pg_cluster admin: wrong password",
		detail:  []string{"pg_cluster.password", "POSTGRAAS_PG_CLUSTER_PASSWORD"},
		absent:  []string{"metadb.password"},
		bound:   failureFastBound,
	},
	{
		name: "cluster_admin_no_password", backend: backend.KindPGCluster,
		setup:   failureClusterPassword(""),
		summary: "pg_cluster admin: no password set",
		detail:  []string{"pg_cluster.password", "POSTGRAAS_PG_CLUSTER_PASSWORD"},
		bound:   failureFastBound,
	},
	{
		// 7. An engine endpoint that accepts and never answers.
		name: "docker_engine_silent", backend: backend.KindDocker,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			port, accepted := netfake.SilentCounting(t)
			return failureSetup{docker: fmt.Sprintf("host = \"tcp://127.0.0.1:%d\"", port), check: failureConnected("Docker engine", accepted)}
		},
		summary: "Docker engine: no answer",
		detail:  []string{"docker.host", "DOCKER_HOST", "2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT"},
		absent:  []string{"?.", "timeouts.create"},
		bound:   failureConnectBound,
	},
	{
		name: "docker_engine_port_closed", backend: backend.KindDocker,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			return failureSetup{docker: fmt.Sprintf("host = \"tcp://127.0.0.1:%d\"", netfake.ClosedPort(t))}
		},
		summary: "Docker engine: connection refused",
		detail:  []string{"docker.host", "DOCKER_HOST"},
		absent:  []string{"?."},
		bound:   failureFastBound,
	},
	{
		// 9. The server comes up, but the instance's database is never
		// created: waiting cannot help. "FATAL:" comes from the server's
		// log lines, which the detail must show. The run includes the new
		// server's initialisation, which takes the machine's time (40 s on
		// a busy 2-core one): what the provider adds after the server is
		// ready is bounded on its own.
		name: "docker_database_never_created", backend: backend.KindDocker,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			img := fx.image(t, "nodb", "unset POSTGRES_DB")
			return failureSetup{instance: "image = " + hclString(img), check: failureAfterReady}
		},
		summary: "Instance did not start",
		detail:  []string{`database "{db}" does not exist`, "FATAL:"},
		absent:  []string{"Timed out", "timeouts.create"},
		bound:   failureStartBound,
	},
	{
		// 10. An operation timeout, on a server that is only slow: the
		// diagnostic names the timeout that fired and no other.
		name: "docker_create_timeout", backend: backend.KindDocker,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			img := fx.image(t, "slow", "sleep 60")
			return failureSetup{instance: "image = " + hclString(img) + "\n  timeouts {\n    create = \"3s\"\n  }"}
		},
		summary: "Timed out",
		detail:  []string{"timeouts.create", "3s"},
		absent:  []string{"connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT"},
		bound:   failureFastBound,
	},
	{
		// 11. Parallel operations against the paused meta DB fail together,
		// in the plan's check...
		name: "parallel_plan", backend: backend.KindPGCluster, count: failureParallel,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			return failureSetup{provider: failureMetaDBHCL(fx.pausedMetaDB(t)), dropEnv: []string{"POSTGRAAS_METADB_"}}
		},
		summary: "Meta DB: no answer",
		detail:  []string{"2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT"},
		bound:   failureParallelBound,
	},
	{
		// ...in data sources read at plan...
		name: "parallel_data_sources", backend: backend.KindPGCluster, lookups: failureParallel, plan: true,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			return failureSetup{provider: failureMetaDBHCL(fx.pausedMetaDB(t)), dropEnv: []string{"POSTGRAAS_METADB_"}}
		},
		summary: "Meta DB: no answer",
		detail:  []string{"2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT"},
		bound:   failureParallelBound,
	},
	{
		// ...and in the refresh of instances that exist: every read needs
		// the meta DB, and they wait for one connection attempt together.
		name: "parallel_refresh", backend: backend.KindPGCluster, count: failureParallel,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			m, id := fx.metaDBContainer(t, t)
			return failureSetup{
				provider: failureMetaDBHCL(m),
				dropEnv:  []string{"POSTGRAAS_METADB_"},
				prepare: func(t *testing.T, w *faultWorkspace) {
					if p, err := w.run("apply-first", failureRunLimit, nil, faultApply...); err != nil {
						t.Fatalf("creating the instances: %v\n%s", err, faultTail(p.out.String(), 30))
					}
					fx.pause(t, id)
				},
				finish: func(t *testing.T, w *faultWorkspace) {
					fx.unpause(t, id)
					if p, err := w.run("destroy", failureRunLimit, nil, faultDestroy...); err != nil {
						t.Errorf("destroying the instances once the meta DB is back: %v\n%s", err, faultTail(p.out.String(), 30))
					}
				},
			}
		},
		summary: "Meta DB: no answer",
		detail:  []string{"2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT"},
		bound:   failureParallelBound,
	},
	{
		// A data source's read timeout shorter than the connect timeout
		// fires first, and is the one named.
		name: "data_source_read_timeout", backend: backend.KindPGCluster, lookups: 1, plan: true,
		setup: func(t *testing.T, fx *failureFixtures) failureSetup {
			return failureSetup{provider: failureMetaDBHCL(fx.pausedMetaDB(t)), dropEnv: []string{"POSTGRAAS_METADB_"},
				connectTimeout: 30, lookup: "timeouts {\n    read = \"1s\"\n  }"}
		},
		summary: "Timed out",
		detail:  []string{"timeouts.read", "1s"},
		absent:  []string{"connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT", "30s"},
		bound:   failureFastBound,
	},
	{
		// 12. A CI plan step catches refused credentials.
		name: "plan_meta_db_wrong_password", backend: backend.KindPGCluster, plan: true,
		setup:   failureMetaDBPassword("wrong-" + faultRandomHex(8)),
		summary: "Meta DB: wrong password",
		detail:  []string{"metadb.password", "POSTGRAAS_METADB_PASSWORD"},
		bound:   failureFastBound,
	},
	{
		name: "plan_cluster_admin_wrong_password", backend: backend.KindPGCluster, plan: true,
		setup:   failureClusterPassword("wrong-" + faultRandomHex(8)),
		summary: "pg_cluster admin: wrong password",
		detail:  []string{"pg_cluster.password", "POSTGRAAS_PG_CLUSTER_PASSWORD"},
		bound:   failureFastBound,
	},
}

// TestAccFailures runs the cases one after another, so each time to fail is
// not the sum of its neighbours'.
func TestAccFailures(t *testing.T) {
	faultAccPreCheck(t, dockerEnv...)
	if _, err := exec.LookPath("terraform"); err != nil {
		t.Fatalf("terraform is not on PATH: %v", err)
	}
	providerDir := plainBuild.get(t)
	fx := &failureFixtures{parent: t, cli: dockerClient(t)}
	t.Cleanup(func() { fx.report(t) })
	for _, c := range failureCases {
		t.Run(c.name, func(t *testing.T) { runFailureCase(t, providerDir, fx, c) })
	}
}

func runFailureCase(t *testing.T, providerDir string, fx *failureFixtures, c failureCase) {
	setup := c.setup(t, fx)
	count := c.count
	if count == 0 && c.lookups == 0 {
		count = 1
	}
	insts := newFailureInstances(t, c.backend, count)
	cis := make([]clusterInstance, len(insts))
	names := make([]string, 0, count+c.lookups)
	for n, i := range insts {
		cis[n] = i.clusterInstance
		cis[n].extra = setup.instance
		names = append(names, i.name)
		t.Cleanup(func() { i.sweep(t) })
	}
	lookups := make([]string, c.lookups)
	for n := range lookups {
		lookups[n] = "nobody-" + faultRandomHex(4)
	}
	names = append(names, lookups...)
	w := newFaultWorkspace(t, providerDir, failureConfig(c.backend, setup, cis, lookups), "INFO", setup.dropEnv...)
	command := "apply"
	args := faultArgs(faultApply, "-json")
	if c.plan {
		command, args = "plan", []string{"plan", "-input=false", "-no-color", "-json"}
	}
	if setup.prepare != nil {
		setup.prepare(t, w)
	}
	p, stopped := failureRun(w, command, args)
	out := p.out.String()
	diags := failureErrors(out)
	rec := failureTime{name: c.name, elapsed: p.elapsed, stopped: stopped, succeeded: p.err == nil && !stopped}
	if len(diags) > 0 {
		rec.summary = diags[0].Summary
	}
	fx.record(rec)
	t.Logf("time to fail: %s (bound %s)", rec.outcome(), c.bound)

	switch {
	case stopped:
		t.Errorf("terraform %s still running after %s; stopped it. Its messages:\n%s", command, failureRunLimit, faultTail(failureMessages(out), 30))
	case p.err == nil:
		t.Errorf("terraform %s succeeded after %s; want it to fail with %q", command, p.elapsed.Round(time.Millisecond), c.summary)
	case p.elapsed >= c.bound:
		t.Errorf("terraform %s failed after %s, want < %s", command, p.elapsed.Round(time.Millisecond), c.bound)
	}
	if problems := checkFailureDiags(diags, c, insts, names); len(problems) > 0 {
		t.Errorf("%s\nthe error diagnostics:\n%s", strings.Join(problems, "\n"), failureDiagsText(diags, out))
	}
	if setup.check != nil {
		setup.check(t, diags)
	}
	if setup.finish != nil {
		setup.finish(t, w)
	}
	for _, i := range insts {
		if left := i.leftovers(t); len(left) > 0 {
			t.Errorf("the failed %s left: %s", command, strings.Join(left, "; "))
		}
	}
}

// checkFailureDiags lists how diags differ from what c wants: every error
// has c's summary and words, and one names each of names (the instances'
// and the data sources' names).
func checkFailureDiags(diags []failureDiag, c failureCase, insts []*faultInstance, names []string) []string {
	var problems []string
	if len(diags) == 0 {
		return []string{fmt.Sprintf("no error diagnostic; want %q", c.summary)}
	}
	for _, d := range diags {
		if d.Summary != c.summary {
			problems = append(problems, fmt.Sprintf("summary %q, want %q", d.Summary, c.summary))
			continue
		}
		db := ""
		for _, i := range insts {
			if strings.Contains(d.Detail, i.name) {
				db = i.db
			}
		}
		for _, w := range c.detail {
			w = strings.ReplaceAll(w, "{db}", db)
			if !failureWord(w).MatchString(d.Detail) {
				problems = append(problems, fmt.Sprintf("%q: the detail does not say %q", d.Summary, w))
			}
		}
		for _, w := range c.absent {
			if failureWord(w).MatchString(d.Detail) {
				problems = append(problems, fmt.Sprintf("%q: the detail says %q, which did not fire", d.Summary, w))
			}
		}
	}
	for _, n := range names {
		named := false
		for _, d := range diags {
			named = named || (d.Summary == c.summary && strings.Contains(d.Detail, `"`+n+`"`))
		}
		if !named {
			problems = append(problems, fmt.Sprintf("no %q diagnostic names %q", c.summary, n))
		}
	}
	return problems
}

// failureWord matches s as a whole word ("2s" not in "12s", "metadb.host"
// not in "metadb.hostname"); an end of s that is punctuation ("?.")
// matches anywhere.
func failureWord(s string) *regexp.Regexp {
	word := regexp.MustCompile(`\w`)
	left, right := "", ""
	if s != "" && word.MatchString(s[:1]) {
		left = `(^|[^\w.])`
	}
	if s != "" && word.MatchString(s[len(s)-1:]) {
		right = `(\W|$)`
	}
	return regexp.MustCompile(left + regexp.QuoteMeta(s) + right)
}

// ---------------------------------------------------------------- configuration

func newFailureInstances(t *testing.T, kind string, n int) []*faultInstance {
	var cli *dockerclient.Client
	if kind == backend.KindDocker {
		cli = dockerClient(t)
	}
	insts := make([]*faultInstance, n)
	for k := range insts {
		name := randomName("failacc")
		i := &faultInstance{
			clusterInstance: clusterInstance{label: fmt.Sprintf("i%d", k), name: name, db: name + "_db", user: name + "_u", password: "pw'@:/" + name},
			prefix:          name,
			volumes:         map[string]bool{},
			backend:         kind,
			paused:          map[string]bool{},
			cli:             cli,
		}
		if kind == backend.KindDocker {
			i.name = "failacc-" + name[len("failacc_"):]
		}
		insts[k] = i
	}
	return insts
}

func failureConfig(kind string, s failureSetup, insts []clusterInstance, lookups []string) string {
	var b strings.Builder
	b.WriteString(faultTerraformBlock)
	connectTimeout := s.connectTimeout
	if connectTimeout == 0 {
		connectTimeout = int(failureConnectTimeout / time.Second)
	}
	fmt.Fprintf(&b, "provider \"postgraas\" {\n  backend = %q\n  connect_timeout = %d\n", kind, connectTimeout)
	if s.provider != "" {
		b.WriteString("  " + s.provider + "\n")
	}
	if kind == backend.KindDocker {
		fmt.Fprintf(&b, "  docker = {\n    image        = %s\n    bind_address = \"127.0.0.1\"\n    %s\n  }\n",
			hclString(os.Getenv("POSTGRAAS_TEST_IMAGE")), s.docker)
	}
	b.WriteString("}\n")
	b.WriteString(s.extra)
	for _, i := range insts {
		b.WriteString(i.hcl())
	}
	for n, name := range lookups {
		fmt.Fprintf(&b, "\ndata \"postgraas_instance\" \"d%d\" {\n  name = %s\n  %s\n}\n", n, hclString(name), s.lookup)
	}
	return b.String()
}

// failureMetaDBHCL is a metadb block for target, without a password when
// target has none.
func failureMetaDBHCL(target pgsql.Target) string {
	s := fmt.Sprintf("metadb = {\n    host     = %s\n    port     = %d\n    db_name  = %s\n    username = %s\n    sslmode  = \"disable\"\n",
		hclString(target.Host), target.Port, hclString(target.Database), hclString(target.User))
	if target.Password != "" {
		s += "    password = " + hclString(target.Password) + "\n"
	}
	return s + "  }"
}

// failureMetaDBPassword: the shared meta DB with another password ("" for
// none), and nothing from the environment.
func failureMetaDBPassword(password string) func(*testing.T, *failureFixtures) failureSetup {
	return func(*testing.T, *failureFixtures) failureSetup {
		m := metaDB()
		m.Password = password
		return failureSetup{provider: failureMetaDBHCL(m), dropEnv: []string{"POSTGRAAS_METADB_", "PGPASSWORD=", "PGPASSFILE="}}
	}
}

// failureClusterPassword: the shared cluster with another admin password
// ("" for none), and nothing from the environment.
func failureClusterPassword(password string) func(*testing.T, *failureFixtures) failureSetup {
	return func(*testing.T, *failureFixtures) failureSetup {
		a := clusterAdmin()
		pw := ""
		if password != "" {
			pw = "password = " + hclString(password)
		}
		return failureSetup{provider: fmt.Sprintf("pg_cluster = {\n    host     = %s\n    port     = %d\n    database = %s\n"+
			"    username = %s\n    sslmode  = \"disable\"\n    %s\n  }",
			hclString(a.Host), a.Port, hclString(a.Database), hclString(a.User), pw),
			dropEnv: []string{"POSTGRAAS_PG_CLUSTER_", "PGPASSWORD=", "PGPASSFILE="}}
	}
}

// ---------------------------------------------------------------- terraform runs

// failureRun runs terraform to its end; past failureRunLimit it is
// interrupted as a user would (Ctrl-C), then killed.
func failureRun(w *faultWorkspace, run string, args []string) (p *faultTF, stopped bool) {
	p = w.start(run, nil, args...)
	if _ = p.wait(failureRunLimit); p.exited() {
		return p, false
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p, true
}

// failureDiag is a diagnostic of terraform's -json output; Detail with its
// whitespace normalised, At when terraform printed it.
type failureDiag struct {
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
	Detail   string `json:"detail"`
	Address  string `json:"address"`
	At       time.Time
}

// failureErrors returns the error diagnostics of terraform's -json output.
func failureErrors(out string) []failureDiag {
	var diags []failureDiag
	for _, line := range strings.Split(out, "\n") {
		var m struct {
			Type       string       `json:"type"`
			Timestamp  time.Time    `json:"@timestamp"`
			Diagnostic *failureDiag `json:"diagnostic"`
		}
		if json.Unmarshal([]byte(line), &m) != nil || m.Type != "diagnostic" || m.Diagnostic == nil || m.Diagnostic.Severity != "error" {
			continue
		}
		d := *m.Diagnostic
		d.Detail = strings.Join(strings.Fields(d.Detail), " ")
		d.At = m.Timestamp
		diags = append(diags, d)
	}
	return diags
}

// failureMessages is terraform's -json output as the messages it would
// have printed, one a line.
func failureMessages(out string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		var m struct {
			Message string `json:"@message"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Message != "" {
			line = strings.TrimSpace(m.Message)
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

func failureDiagsText(diags []failureDiag, out string) string {
	if len(diags) == 0 {
		return "(none); terraform's last messages:\n" + faultTail(failureMessages(out), 20)
	}
	var b strings.Builder
	for _, d := range diags {
		fmt.Fprintf(&b, "  %s [%s]: %s\n", d.Summary, d.Address, d.Detail)
	}
	return b.String()
}

// ---------------------------------------------------------------- fixtures

// failureFixtures are what the cases share: the paused meta DB container
// (made by the first case that needs it) and the times to fail.
type failureFixtures struct {
	parent *testing.T
	cli    *dockerclient.Client
	paused *pgsql.Target

	mu         sync.Mutex
	times      []failureTime
	sigstopped map[string]bool // containers pause stopped with SIGSTOP
}

type failureTime struct {
	name               string
	elapsed            time.Duration
	stopped, succeeded bool
	summary            string // of the first error
}

func (r failureTime) outcome() string {
	d := r.elapsed.Round(100 * time.Millisecond)
	switch {
	case r.stopped:
		return fmt.Sprintf("> %s (still running, stopped)", failureRunLimit)
	case r.succeeded:
		return fmt.Sprintf("%s, did not fail", d)
	case r.summary == "":
		return fmt.Sprintf("%s, failed without a diagnostic", d)
	}
	return fmt.Sprintf("%s, %q", d, r.summary)
}

func (fx *failureFixtures) record(r failureTime) {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	fx.times = append(fx.times, r)
}

func (fx *failureFixtures) report(t *testing.T) {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	var b strings.Builder
	for _, r := range fx.times {
		fmt.Fprintf(&b, "  %-34s %s\n", r.name, r.outcome())
	}
	t.Logf("times to fail (connect_timeout %s):\n%s", failureConnectTimeout, b.String())
}

// pausedMetaDB is a meta DB container that answered once and was then
// paused (docker pause): its port accepts connections and nothing ever
// answers on them. The cases share it; it is removed when the test ends.
func (fx *failureFixtures) pausedMetaDB(t *testing.T) pgsql.Target {
	t.Helper()
	if fx.paused == nil {
		target, id := fx.metaDBContainer(t, fx.parent)
		fx.pause(t, id)
		fx.paused = &target
	}
	return *fx.paused
}

// metaDBContainer runs a PostgreSQL container of the test image, published
// on loopback, and returns its login once it takes it; the container is
// removed when owner ends.
func (fx *failureFixtures) metaDBContainer(t, owner *testing.T) (pgsql.Target, string) {
	t.Helper()
	target := pgsql.Target{Host: "127.0.0.1", Database: "postgraas", User: "postgraas", Password: "pw-" + faultRandomHex(8), SSLMode: "disable"}
	ctx, cancel := dockerCtx()
	defer cancel()
	port := nat.Port("5432/tcp")
	c, err := fx.cli.ContainerCreate(ctx, &container.Config{
		Image:        os.Getenv("POSTGRAAS_TEST_IMAGE"),
		Env:          []string{"POSTGRES_USER=" + target.User, "POSTGRES_PASSWORD=" + target.Password, "POSTGRES_DB=" + target.Database},
		ExposedPorts: nat.PortSet{port: {}},
		Labels:       map[string]string{failureLabel: "TestAccFailures"},
	}, &container.HostConfig{PortBindings: nat.PortMap{port: {{HostIP: "127.0.0.1"}}}}, nil, nil, "postgraas-test-metadb-"+faultRandomHex(4))
	if err != nil {
		t.Fatalf("creating the meta DB container: %v", err)
	}
	owner.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		_ = fx.cli.ContainerUnpause(ctx, c.ID)
		if err := fx.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			owner.Errorf("removing the meta DB container: %v", err)
		}
	})
	if err := fx.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatalf("starting the meta DB container: %v", err)
	}
	ins, err := fx.cli.ContainerInspect(ctx, c.ID)
	if err != nil || len(ins.NetworkSettings.Ports[port]) == 0 {
		t.Fatalf("the meta DB container's published port: %v", err)
	}
	if target.Port, err = strconv.Atoi(ins.NetworkSettings.Ports[port][0].HostPort); err != nil {
		t.Fatalf("the meta DB container's published port: %v", err)
	}
	start := time.Now()
	for {
		actx, acancel := context.WithTimeout(context.Background(), 3*time.Second)
		conn, err := target.ConnectOnce(actx)
		if err == nil {
			_ = conn.Close(actx)
			acancel()
			break
		}
		acancel()
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("the meta DB container did not take logins within 2 minutes: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("meta DB container %s on port %d took logins after %s", c.ID[:12], target.Port, time.Since(start).Round(time.Millisecond))
	return target, c.ID
}

// pause freezes the container (docker pause). The cgroup freezer can fail
// on a loaded machine ("unable to freeze"): pause is tried again, then the
// server's postmaster is stopped with SIGSTOP instead, which leaves the
// port in the same state (connections accepted, never answered).
func (fx *failureFixtures) pause(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	var err error
	for range 3 {
		if err = fx.cli.ContainerPause(ctx, id); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Logf("pausing the meta DB container failed (%v): stopping its postmaster with SIGSTOP instead", err)
	if err := fx.cli.ContainerKill(ctx, id, "SIGSTOP"); err != nil {
		t.Fatalf("SIGSTOP to the meta DB container: %v", err)
	}
	fx.mu.Lock()
	defer fx.mu.Unlock()
	if fx.sigstopped == nil {
		fx.sigstopped = map[string]bool{}
	}
	fx.sigstopped[id] = true
}

// unpause undoes pause.
func (fx *failureFixtures) unpause(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := dockerCtx()
	defer cancel()
	fx.mu.Lock()
	stopped := fx.sigstopped[id]
	delete(fx.sigstopped, id)
	fx.mu.Unlock()
	if stopped {
		if err := fx.cli.ContainerKill(ctx, id, "SIGCONT"); err != nil {
			t.Fatalf("SIGCONT to the meta DB container: %v", err)
		}
		return
	}
	if err := fx.cli.ContainerUnpause(ctx, id); err != nil {
		t.Fatalf("unpausing the meta DB container: %v", err)
	}
}

// image builds, FROM the test image, an image whose entrypoint runs script
// and then the test image's entrypoint with its arguments; it is removed
// when the case ends.
func (fx *failureFixtures) image(t *testing.T, what, script string) string {
	t.Helper()
	base := os.Getenv("POSTGRAAS_TEST_IMAGE")
	ctx, cancel := dockerCtx()
	defer cancel()
	ins, err := fx.cli.ImageInspect(ctx, base)
	if err != nil {
		t.Fatalf("inspecting %s: %v", base, err)
	}
	quote := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	entry := make([]string, len(ins.Config.Entrypoint))
	for n, a := range ins.Config.Entrypoint {
		entry[n] = quote(a)
	}
	wrapper := fmt.Sprintf("#!/bin/sh\n%s\nexec %s \"$@\"\n", script, strings.Join(entry, " "))
	// An ENTRYPOINT resets the inherited CMD: repeat it.
	dockerfile := fmt.Sprintf("FROM %s\nCOPY entrypoint.sh /usr/local/bin/postgraas-test-entrypoint.sh\n"+
		"ENTRYPOINT [\"/usr/local/bin/postgraas-test-entrypoint.sh\"]\n", base)
	if len(ins.Config.Cmd) > 0 {
		cmd, _ := json.Marshal(ins.Config.Cmd)
		dockerfile += fmt.Sprintf("CMD %s\n", cmd)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name, body string
		mode       int64
	}{{"Dockerfile", dockerfile, 0o644}, {"entrypoint.sh", wrapper, 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tag := "postgraas-test/" + what + ":" + faultRandomHex(4)
	start := time.Now()
	resp, err := fx.cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true,
		Labels: map[string]string{failureLabel: "TestAccFailures"}})
	if err != nil {
		t.Fatalf("building %s: %v", tag, err)
	}
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		if _, err := fx.cli.ImageRemove(ctx, tag, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("removing image %s: %v", tag, err)
		}
	})
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("building %s: reading the output: %v", tag, err)
		}
		if msg.Error != "" || msg.ErrorDetail.Message != "" {
			t.Fatalf("building %s: %s %s", tag, msg.Error, msg.ErrorDetail.Message)
		}
	}
	if _, err := fx.cli.ImageInspect(ctx, tag); err != nil {
		t.Fatalf("image %s missing after its build: %v", tag, err)
	}
	t.Logf("built %s (FROM %s, entrypoint: %s) in %s", tag, base, script, time.Since(start).Round(time.Millisecond))
	return tag
}

// failureConnected checks that the provider did connect to the listener
// standing in for what: the silence it met was that listener's.
func failureConnected(what string, accepted func() int) func(*testing.T, []failureDiag) {
	return func(t *testing.T, _ []failureDiag) {
		if n := accepted(); n == 0 {
			t.Errorf("the provider never connected to the silent listener standing in for the %s", what)
		} else {
			t.Logf("the silent %s listener accepted %d connection(s)", what, n)
		}
	}
}

// failureReady finds, in a detail's log lines, when the server last said
// it was ready (PostgreSQL's default log line prefix is "%m [%p] ").
var failureReady = regexp.MustCompile(`(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC \[\d+\] LOG: database system is ready to accept connections`)

// failureAfterReady bounds the time from the new server's last "ready to
// accept connections" to the diagnostic: what the provider itself spends
// on a database that will never appear, whatever the server's start took.
func failureAfterReady(t *testing.T, diags []failureDiag) {
	for _, d := range diags {
		m := failureReady.FindAllStringSubmatch(d.Detail, -1)
		if len(m) == 0 {
			t.Errorf("the detail's log lines never say the server was ready to accept connections: %s", d.Detail)
			continue
		}
		ready, err := time.Parse("2006-01-02 15:04:05.999999999", m[len(m)-1][1])
		if err != nil {
			t.Errorf("the server's ready time %q: %v", m[len(m)-1][1], err)
			continue
		}
		after := d.At.Sub(ready)
		t.Logf("failed %s after the server was ready (bound %s)", after.Round(100*time.Millisecond), failureReadyBound)
		if after < 0 || after >= failureReadyBound {
			t.Errorf("failed %s after the server was ready at %s, want within [0, %s)", after, ready, failureReadyBound)
		}
	}
}
