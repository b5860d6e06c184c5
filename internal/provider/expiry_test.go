//go:build unix

package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// The expiry tests each get a meta DB database of their own: every run
// that uses a meta DB reaps it, so tests sharing one would reap each
// other's instances and could not tell which run removed what. The runs
// Terraform makes for the test steps set reap_limit = 0; the reaping is
// done by the runs and commands each test starts on purpose.

// freshMetaDB creates an empty meta DB database owned by the meta DB login
// and returns its login.
func freshMetaDB(t *testing.T) pgsql.Target {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	meta := metaDB()
	meta.Database = "postgraas_exp_" + hex.EncodeToString(b)
	mustDo(t, adminExec("CREATE DATABASE "+pgsql.QuoteIdent(meta.Database)+" OWNER "+pgsql.QuoteIdent(meta.User)))
	t.Cleanup(func() {
		_ = adminExec("DROP DATABASE IF EXISTS " + pgsql.QuoteIdent(meta.Database) + " WITH (FORCE)")
	})
	return meta
}

// expiryProvider is a pg_cluster provider block on meta, reaping as
// reapLimit says ("" for the default).
func expiryProvider(meta pgsql.Target, reapLimit string) string {
	extra := "metadb = { db_name = " + hclString(meta.Database) + " }"
	if reapLimit != "" {
		extra += "\n  reap_limit = " + reapLimit
	}
	return extra
}

// rowsIn counts the rows named name in meta.
func rowsIn(meta pgsql.Target, name string) (int, error) {
	var n int
	err := withConn(meta, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT count(*) FROM db_instance WHERE postgraas_instance_name = $1`, name).Scan(&n)
	})
	return n, err
}

// waitExpired polls until the named rows are expired by the meta DB's
// clock (expires_after = "2s" needs no long sleep).
func waitExpired(t *testing.T, meta pgsql.Target, names ...string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		mustDo(t, withConn(meta, func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT count(*) FROM db_instance WHERE postgraas_instance_name = ANY($1)
				AND expires_at < now()`, names).Scan(&n)
		}))
		if n == len(names) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v not all expired after a minute (%d are)", names, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkClusterIntact: the instance's row is in meta, and it logs in.
func checkClusterIntact(meta pgsql.Target, insts ...*clusterInstance) error {
	for _, i := range insts {
		if n, err := rowsIn(meta, i.name); err != nil || n != 1 {
			return fmt.Errorf("%s: %d rows (%v)", i.name, n, err)
		}
		if err := writeAndRead(clusterTenant(i.db, i.user, i.password)); err != nil {
			return fmt.Errorf("%s no longer works: %w", i.name, err)
		}
	}
	return nil
}

// checkClusterReaped: role, database and row of each instance are gone.
func checkClusterReaped(meta pgsql.Target, insts ...*clusterInstance) error {
	for _, i := range insts {
		role, db, err := clusterObjects(i.user, i.db)
		if err != nil {
			return err
		}
		n, err := rowsIn(meta, i.name)
		if err != nil {
			return err
		}
		if role || db || n != 0 {
			return fmt.Errorf("%s: role %v, database %v, %d rows left", i.name, role, db, n)
		}
	}
	return nil
}

// checkExpiresAfter: expires_at is created_at plus d.
func checkExpiresAfter(i *clusterInstance, d time.Duration) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		attrs := s.RootModule().Resources[i.address()].Primary.Attributes
		created, err := time.Parse(time.RFC3339, attrs["created_at"])
		if err != nil {
			return err
		}
		if want := created.Add(d).UTC().Format(time.RFC3339); attrs["expires_at"] != want {
			return fmt.Errorf("%s: expires_at %q, want created_at %s + %s = %s", i.name, attrs["expires_at"], attrs["created_at"], d, want)
		}
		return nil
	}
}

// reapCommand runs the provider binary's reap subcommand against meta.
func reapCommand(t *testing.T, bin string, meta pgsql.Target, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"reap"}, args...)...)
	cmd.Env = append(cmd.Environ(), "POSTGRAAS_METADB_DB_NAME="+meta.Database)
	if kc := os.Getenv("POSTGRAAS_TEST_KUBECONFIG"); kc != "" {
		// The kubernetes backend, configured as a CI cleanup job would.
		cmd.Env = append(cmd.Env, "POSTGRAAS_KUBECONFIG="+kc, "POSTGRAAS_KUBE_NAMESPACE="+kubeNamespace)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%w; stderr: %s", err, errOut.String())
	}
	return out.String(), err
}

// removedNames are the names on the lines of reap output starting with verb.
func removedNames(out, verb string) []string {
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(l, "\t")
		if len(f) >= 3 && f[0] == verb {
			names = append(names, f[2])
		}
	}
	sort.Strings(names)
	return names
}

func sortedNames(insts ...*clusterInstance) []string {
	var out []string
	for _, i := range insts {
		out = append(out, i.name)
	}
	sort.Strings(out)
	return out
}

// An instance with expires_after = "2s" is removed by a later, unrelated
// run (another configuration, another working directory, which only reads
// a data source) that uses the meta DB, and that run names it in a
// warning. An instance without expiry is never touched. The configuration
// that made the expired instance sees it as removed outside Terraform and
// creates it anew on apply.
func TestAccExpiry_unrelatedRun(t *testing.T) {
	testAccPreCheck(t)
	meta := freshMetaDB(t)
	a, b := newClusterInstance("a"), newClusterInstance("b")
	a.extra = `expires_after = "2s"` + "\n  labels = { run = " + hclString(a.name) + " }"
	config := clusterConfig(expiryProvider(meta, "0"), a, b)
	unrelated := faultTerraformBlock + clusterConfig(expiryProvider(meta, "")) + `
data "postgraas_instances" "mine" {
  labels = { run = "unrelated" }
}
`
	var firstA, firstB string
	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{
			{
				Config: config,
				Check: resource.ComposeAggregateTestCheckFunc(
					checkExpiresAfter(&a, 2*time.Second),
					resource.TestCheckResourceAttr(a.address(), "labels.run", a.name),
					resource.TestCheckNoResourceAttr(b.address(), "expires_at"),
					resource.TestCheckNoResourceAttr(b.address(), "labels"),
					func(s *terraform.State) error {
						firstA = s.RootModule().Resources[a.address()].Primary.ID
						firstB = s.RootModule().Resources[b.address()].Primary.ID
						return nil
					},
				),
			},
			{
				PreConfig: func() {
					waitExpired(t, meta, a.name)
					w := newFaultWorkspace(t, plainBuild.get(t), unrelated, "")
					p, err := w.run("plan", faultRunLimit, nil, "plan", "-input=false", "-no-color")
					if err != nil {
						t.Fatalf("the unrelated run failed: %v\n%s", err, p.out.String())
					}
					out := p.out.String()
					if !regexp.MustCompile(`Expired instance removed[\s\S]*` + regexp.QuoteMeta(a.name)).MatchString(out) {
						t.Fatalf("the unrelated run did not warn that it removed %s:\n%s", a.name, out)
					}
					if strings.Contains(out, b.name) {
						t.Fatalf("the unrelated run names %s, which never expires:\n%s", b.name, out)
					}
					mustDo(t, checkClusterReaped(meta, &a))
					mustDo(t, checkClusterIntact(meta, &b))
				},
				Config:             config,
				PlanOnly:           true,
				ExpectNonEmptyPlan: true, // a is to be created anew
			},
			{
				Config: config,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(a.address(), plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction(b.address(), plancheck.ResourceActionNoop),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					checkExpiresAfter(&a, 2*time.Second),
					func(s *terraform.State) error {
						if id := s.RootModule().Resources[a.address()].Primary.ID; id == firstA {
							return fmt.Errorf("%s kept its id %s: not created anew", a.name, id)
						}
						if id := s.RootModule().Resources[b.address()].Primary.ID; id != firstB {
							return fmt.Errorf("%s changed id from %s to %s", b.name, firstB, id)
						}
						return checkClusterIntact(meta, &a, &b)
					},
				),
			},
		},
	})
}

// The reap command removes expired instances without any configuration,
// printing one line per instance; -dry-run lists and removes nothing. Two
// commands at once remove each expired instance exactly once; one with a
// session open is removed all the same, its session terminated. Instances
// without expiry or expiring later, and a legacy row (postgraas_server's,
// with an expiry written by hand), are never touched.
func TestAccExpiry_reapCommand(t *testing.T) {
	testAccPreCheck(t)
	meta := freshMetaDB(t)
	bin := filepath.Join(plainBuild.get(t), "terraform-provider-postgraas")
	var expiring []*clusterInstance
	for _, l := range []string{"x1", "x2", "x3"} {
		i := newClusterInstance(l)
		i.extra = `expires_after = "2s"`
		expiring = append(expiring, &i)
	}
	never, later := newClusterInstance("never"), newClusterInstance("later")
	later.extra = `expires_after = "1h"`
	// Legacy instances (role, database and a row as postgraas_server wrote
	// them): one as it was, one with an expiry in the past written by hand.
	var legacies []*clusterInstance
	for _, p := range []string{"legacy", "legacyexp"} {
		l := clusterInstance{name: randomName(p), password: "legacy-pw"}
		l.db, l.user = l.name+"_db", l.name+"_u"
		legacies = append(legacies, &l)
	}
	legacy := legacies[0]
	config := clusterConfig(expiryProvider(meta, "0"), *expiring[0], *expiring[1], *expiring[2], never, later)

	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy: func(*terraform.State) error {
			return checkClusterReaped(meta, append(expiring, &never, &later)...)
		},
		Steps: []resource.TestStep{
			{Config: config},
			{
				PreConfig: func() {
					for k, l := range legacies {
						mustDo(t, adminExec(
							"CREATE USER "+pgsql.QuoteIdent(l.user)+" WITH PASSWORD "+pgsql.QuoteLiteral(l.password),
							"CREATE DATABASE "+pgsql.QuoteIdent(l.db)+" OWNER "+pgsql.QuoteIdent(l.user)))
						t.Cleanup(func() {
							_ = adminExec("DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(l.db)+" WITH (FORCE)",
								"DROP ROLE IF EXISTS "+pgsql.QuoteIdent(l.user))
						})
						mustDo(t, withConn(meta, func(ctx context.Context, c *pgx.Conn) error {
							_, err := c.Exec(ctx, `INSERT INTO db_instance (postgraas_instance_name, creation_timestamp,
								db_name, username, password, hostname, port, expires_at)
								VALUES ($1, '2016-07-06 23:38:38', $2, $3, '', $4, $5,
								CASE WHEN $6 THEN now() - interval '1 day' END)`,
								l.name, l.db, l.user, clusterAdmin().Host, clusterAdmin().Port, k == 1)
							return err
						}))
					}
					// A session on x1, kept open through the reap.
					session, err := clusterTenant(expiring[0].db, expiring[0].user, expiring[0].password).Connect(context.Background())
					mustDo(t, err)
					defer session.Close(context.Background())

					waitExpired(t, meta, expiring[0].name, expiring[1].name, expiring[2].name)
					out, err := reapCommand(t, bin, meta, "-dry-run")
					mustDo(t, err)
					if got, want := removedNames(out, "expired"), sortedNames(expiring...); !slicesEqual(got, want) {
						t.Fatalf("reap -dry-run listed %v, want %v:\n%s", got, want, out)
					}
					mustDo(t, checkClusterIntact(meta, expiring...))

					outs := make([]string, 2)
					errs := make([]error, 2)
					done := make(chan int)
					for k := range outs {
						go func() {
							outs[k], errs[k] = reapCommand(t, bin, meta)
							done <- k
						}()
					}
					<-done
					<-done
					var got []string
					for k := range outs {
						mustDo(t, errs[k])
						got = append(got, removedNames(outs[k], "removed")...)
					}
					sort.Strings(got)
					if want := sortedNames(expiring...); !slicesEqual(got, want) {
						t.Fatalf("the two reap commands removed %v together, want each of %v exactly once:\n%s\n---\n%s",
							got, want, outs[0], outs[1])
					}
					for _, l := range strings.Split(strings.TrimSpace(outs[0]+outs[1]), "\n") {
						if l != "" && !regexp.MustCompile(`^removed\t\d+\t\S+\tpg_cluster\texpired \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(l) {
							t.Fatalf("reap output line %q", l)
						}
					}
					if err := session.Ping(context.Background()); err == nil {
						t.Fatal("the session on x1 survived its reaping")
					}
					mustDo(t, checkClusterReaped(meta, expiring...))
					mustDo(t, checkClusterIntact(meta, &never, &later))
					for _, l := range legacies {
						if n, err := rowsIn(meta, l.name); err != nil || n != 1 {
							t.Fatalf("legacy row %s: %d (%v)", l.name, n, err)
						}
						mustDo(t, writeAndRead(clusterTenant(l.db, l.user, l.password)))
					}
					// Nothing left to reap: the legacy rows are not listed.
					out, err = reapCommand(t, bin, meta, "-dry-run")
					if err != nil || strings.TrimSpace(out) != "" {
						t.Fatalf("reap -dry-run after the reap: %q %v", out, err)
					}
				},
				Config:             config,
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
			{
				// The legacy row is shown without labels or expiry.
				Config: config + fmt.Sprintf(`
data "postgraas_instance" "legacy" {
  name = %s
}
`, hclString(legacy.name)),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("data.postgraas_instance.legacy", "name", legacy.name),
					resource.TestCheckNoResourceAttr("data.postgraas_instance.legacy", "labels"),
					resource.TestCheckNoResourceAttr("data.postgraas_instance.legacy", "expires_at"),
				),
			},
		},
	})
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

// postgraas_instances filters by labels (every given pair must match);
// both data sources show labels and expires_at; changing labels and the
// expiry is an update in place (the same row), a configured expires_at
// keeps its spelling, and an import brings labels and expires_at from the
// row.
func TestAccExpiry_labels(t *testing.T) {
	testAccPreCheck(t)
	meta := freshMetaDB(t)
	run := randomName("run")
	i1, i2, i3, i4 := newClusterInstance("i1"), newClusterInstance("i2"), newClusterInstance("i3"), newClusterInstance("i4")
	labels := func(team string) string {
		return fmt.Sprintf("labels = { run = %s, team = %q }", hclString(run), team)
	}
	i1.extra = labels("a") + "\n  expires_after = \"1h\""
	i2.extra = labels("b")
	i3.extra = `labels = { run = "other" }` + "\n  expires_at = \"2098-06-01T12:00:00+02:00\""
	dataSources := fmt.Sprintf(`
data "postgraas_instances" "run" {
  labels     = { run = %[1]s }
  depends_on = [postgraas_instance.i1, postgraas_instance.i2, postgraas_instance.i3, postgraas_instance.i4]
}
data "postgraas_instances" "team_b" {
  labels     = { run = %[1]s, team = "b" }
  depends_on = [postgraas_instance.i1, postgraas_instance.i2, postgraas_instance.i3, postgraas_instance.i4]
}
data "postgraas_instances" "none" {
  labels     = { run = %[1]s, team = "z" }
  depends_on = [postgraas_instance.i1, postgraas_instance.i2, postgraas_instance.i3, postgraas_instance.i4]
}
data "postgraas_instance" "i1" {
  name       = postgraas_instance.i1.name
  depends_on = [postgraas_instance.i1]
}
data "postgraas_instance" "i3" {
  id = postgraas_instance.i3.id
}
`, hclString(run))
	config := clusterConfig(expiryProvider(meta, "0"), i1, i2, i3, i4) + dataSources
	changed1, changed2 := i1, i2
	changed1.extra = labels("c") + "\n  expires_at = \"2099-01-01T00:00:00Z\""
	changed2.extra = labels("b") + "\n  expires_at = \"2099-01-01T00:00:00+01:00\""
	config2 := clusterConfig(expiryProvider(meta, "0"), changed1, changed2, i3, i4) + dataSources

	var id1 string
	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy: func(*terraform.State) error {
			return checkClusterReaped(meta, &i1, &i2, &i3, &i4)
		},
		Steps: []resource.TestStep{
			{
				Config: config,
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("data.postgraas_instances.run", "instances.#", "2"),
					checkListed("data.postgraas_instances.run", i1.name, map[string]string{"labels.%": "2", "labels.team": "a"}),
					checkListed("data.postgraas_instances.run", i2.name, map[string]string{"labels.%": "2", "labels.team": "b",
						"labels.run": run, "expires_at": ""}),
					resource.TestCheckResourceAttr("data.postgraas_instances.team_b", "instances.#", "1"),
					checkListed("data.postgraas_instances.team_b", i2.name, map[string]string{"labels.team": "b"}),
					resource.TestCheckResourceAttr("data.postgraas_instances.none", "instances.#", "0"),
					resource.TestCheckResourceAttr("data.postgraas_instance.i1", "labels.team", "a"),
					resource.TestCheckResourceAttr("data.postgraas_instance.i3", "expires_at", "2098-06-01T10:00:00Z"),
					resource.TestCheckResourceAttrPair("data.postgraas_instance.i1", "expires_at", i1.address(), "expires_at"),
					func(s *terraform.State) error {
						want := s.RootModule().Resources[i1.address()].Primary.Attributes["expires_at"]
						return checkListed("data.postgraas_instances.run", i1.name, map[string]string{"expires_at": want})(s)
					},
					checkExpiresAfter(&i1, time.Hour),
					// Set at create: kept as written, shown in UTC by the data source.
					resource.TestCheckResourceAttr(i3.address(), "expires_at", "2098-06-01T12:00:00+02:00"),
					resource.TestCheckNoResourceAttr(i4.address(), "labels"),
					resource.TestCheckNoResourceAttr(i4.address(), "expires_at"),
					func(s *terraform.State) error {
						id1 = s.RootModule().Resources[i1.address()].Primary.ID
						return nil
					},
				),
			},
			{
				Config: config2,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(i1.address(), plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction(i2.address(), plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction(i3.address(), plancheck.ResourceActionNoop),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttrPtr(i1.address(), "id", &id1),
					resource.TestCheckResourceAttr(i1.address(), "labels.team", "c"),
					resource.TestCheckResourceAttr(i1.address(), "expires_at", "2099-01-01T00:00:00Z"),
					resource.TestCheckResourceAttr(i2.address(), "expires_at", "2099-01-01T00:00:00+01:00"),
					checkListed("data.postgraas_instances.run", i2.name, map[string]string{"expires_at": "2098-12-31T23:00:00Z"}),
					resource.TestCheckResourceAttr("data.postgraas_instances.team_b", "instances.#", "1"),
					resource.TestCheckResourceAttr("data.postgraas_instance.i1", "labels.team", "c"),
					func(*terraform.State) error { return checkClusterIntact(meta, &i1, &i2) },
				),
			},
			{
				ResourceName:            i1.address(),
				ImportState:             true,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				// Back to no labels and no expiry: null in the row again.
				Config: clusterConfig(expiryProvider(meta, "0"), i1WithoutExtra(i1), i2, i3, i4),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttrPtr(i1.address(), "id", &id1),
					resource.TestCheckNoResourceAttr(i1.address(), "labels"),
					resource.TestCheckNoResourceAttr(i1.address(), "expires_at"),
					func(*terraform.State) error {
						var labels, expires *string
						err := withConn(meta, func(ctx context.Context, c *pgx.Conn) error {
							return c.QueryRow(ctx, `SELECT labels::text, expires_at::text FROM db_instance
								WHERE postgraas_instance_name = $1`, i1.name).Scan(&labels, &expires)
						})
						if err == nil && (labels != nil || expires != nil) {
							err = fmt.Errorf("row of %s: labels %v, expires_at %v", i1.name, labels, expires)
						}
						return err
					},
				),
			},
		},
	})
}

// checkListed checks attributes of the element of a postgraas_instances
// data source's list that is named name ("" for an attribute that must be
// absent), whatever its place in the list.
func checkListed(ds, name string, want map[string]string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		rs, ok := s.RootModule().Resources[ds]
		if !ok {
			return fmt.Errorf("%s not in state", ds)
		}
		attrs := rs.Primary.Attributes
		for k := 0; attrs[fmt.Sprintf("instances.%d.name", k)] != ""; k++ {
			if attrs[fmt.Sprintf("instances.%d.name", k)] != name {
				continue
			}
			for a, v := range want {
				if got := attrs[fmt.Sprintf("instances.%d.%s", k, a)]; got != v {
					return fmt.Errorf("%s: %s of %s is %q, want %q", ds, a, name, got, v)
				}
			}
			return nil
		}
		return fmt.Errorf("%s does not list %s", ds, name)
	}
}

func i1WithoutExtra(i clusterInstance) clusterInstance {
	i.extra = ""
	return i
}

// Plan-time validation of labels and expiry, before anything connects.
func TestAccExpiry_validation(t *testing.T) {
	testAccPreCheck(t)
	i := newClusterInstance("v")
	cases := []struct{ extra, err string }{
		{`expires_after = "0s"`, `duration`},
		{`expires_after = "soon"`, `duration`},
		{`expires_after = "2h"` + "\n  expires_at = \"2030-01-01T00:00:00Z\"", `cannot be specified when`},
		{`expires_at = "tomorrow"`, `RFC 3339`},
		{`labels = { "-bad" = "x" }`, `letters, digits`},
		{`labels = { ok = "line\nbreak" }`, `control characters`},
	}
	var steps []resource.TestStep
	for _, c := range cases {
		v := i
		v.extra = c.extra
		steps = append(steps, resource.TestStep{
			Config:      clusterConfig("reap_limit = 0", v),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(c.err),
		})
	}
	resource.ParallelTest(t, resource.TestCase{ProtoV6ProviderFactories: testAccProviders, Steps: steps})
}

// A docker instance that expired with a session open is removed by the
// reap command: container and row gone, the session cut.
func TestAccExpiry_docker(t *testing.T) {
	testAccPreCheck(t, dockerEnv...)
	meta := freshMetaDB(t)
	bin := filepath.Join(plainBuild.get(t), "terraform-provider-postgraas")
	i := newDockerInstance("d")
	i.extra = `expires_after = "2s"`
	config := fmt.Sprintf(`provider "postgraas" {
  backend    = "docker"
  reap_limit = 0
  metadb     = { db_name = %s }
  docker     = {
    image        = %s
    bind_address = "127.0.0.1"
  }
}
`, hclString(meta.Database), hclString(os.Getenv("POSTGRAAS_TEST_IMAGE"))) + i.hcl()
	var session *pgx.Conn
	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy: func(*terraform.State) error {
			ctx, cancel := dockerCtx()
			defer cancel()
			if _, err := dockerClient(t).ContainerInspect(ctx, i.name); !cerrdefs.IsNotFound(err) {
				return fmt.Errorf("container %s still there (%v)", i.name, err)
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: config,
				Check: func(s *terraform.State) error {
					target, err := dockerTenant(s, &i, i.password)
					if err != nil {
						return err
					}
					session, err = target.Connect(context.Background())
					return err
				},
			},
			{
				PreConfig: func() {
					defer session.Close(context.Background())
					waitExpired(t, meta, i.name)
					out, err := reapCommand(t, bin, meta)
					mustDo(t, err)
					if got := removedNames(out, "removed"); !slicesEqual(got, []string{i.name}) {
						t.Fatalf("reap removed %v, want [%s]:\n%s", got, i.name, out)
					}
					if !strings.Contains(out, "\tdocker\t") {
						t.Fatalf("reap output does not name the docker backend: %q", out)
					}
					ctx, cancel := dockerCtx()
					defer cancel()
					if _, err := dockerClient(t).ContainerInspect(ctx, i.name); !cerrdefs.IsNotFound(err) {
						t.Fatalf("container %s still there after the reap (%v)", i.name, err)
					}
					if n, err := rowsIn(meta, i.name); err != nil || n != 0 {
						t.Fatalf("%d rows after the reap (%v)", n, err)
					}
					if err := session.Ping(context.Background()); err == nil {
						t.Fatal("the session survived the reap")
					}
				},
				Config:             config,
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
		},
	})
}

// A kubernetes instance that expired with a session open is removed by
// the reap command: its objects and row gone, the session cut.
func TestAccExpiry_kubernetes(t *testing.T) {
	testAccPreCheck(t, kubeEnv...)
	meta := freshMetaDB(t)
	bin := filepath.Join(plainBuild.get(t), "terraform-provider-postgraas")
	i := newKubeInstance("k")
	i.extra = `expires_after = "2s"`
	config := fmt.Sprintf(`provider "postgraas" {
  backend    = "kubernetes"
  reap_limit = 0
  metadb     = { db_name = %s }
  kubernetes = {
    kubeconfig = %s
    image      = %s
    namespace  = %q
  }
}
`, hclString(meta.Database), hclString(os.Getenv("POSTGRAAS_TEST_KUBECONFIG")), hclString(os.Getenv("POSTGRAAS_TEST_KUBE_IMAGE")),
		kubeNamespace) + i.hcl()
	var session *pgx.Conn
	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkKubeGone(t, &i),
		Steps: []resource.TestStep{
			{
				Config: config,
				Check: func(s *terraform.State) error {
					target, err := kubeTenant(s, &i, i.password)
					if err != nil {
						return err
					}
					session, err = target.Connect(context.Background())
					return err
				},
			},
			{
				PreConfig: func() {
					defer session.Close(context.Background())
					waitExpired(t, meta, i.name)
					start := time.Now()
					out, err := reapCommand(t, bin, meta, "-timeout", "2m")
					mustDo(t, err)
					t.Logf("reaping the kubernetes instance with a session open took %s", time.Since(start).Round(time.Millisecond))
					if got := removedNames(out, "removed"); !slicesEqual(got, []string{i.name}) {
						t.Fatalf("reap removed %v, want [%s]:\n%s", got, i.name, out)
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					left, err := kubeObjects(ctx, kubeClient(t), i.name)
					mustDo(t, err)
					if len(left) > 0 {
						t.Fatalf("left after the reap: %v", left)
					}
					if n, err := rowsIn(meta, i.name); err != nil || n != 0 {
						t.Fatalf("%d rows after the reap (%v)", n, err)
					}
					if err := session.Ping(context.Background()); err == nil {
						t.Fatal("the session survived the reap")
					}
				},
				Config:             config,
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
		},
	})
}
