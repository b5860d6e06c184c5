package provider

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgserver"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

type clusterInstance struct {
	label, name, db, user, password string
	extra                           string // more attributes, HCL
	// woVersion > 0 sets the password write-only, with this version.
	woVersion int
}

func newClusterInstance(label string) clusterInstance {
	n := randomName("acc")
	return clusterInstance{label: label, name: n, db: n + "_db", user: n + "_u", password: "pw'@:/" + n}
}

func (i clusterInstance) hcl() string {
	pw := "db_password = " + hclString(i.password)
	if i.woVersion > 0 {
		pw = fmt.Sprintf("db_password_wo = %s\n  db_password_wo_version = %d", hclString(i.password), i.woVersion)
	}
	return fmt.Sprintf(`
resource "postgraas_instance" %q {
  name        = %s
  db_name     = %s
  db_username = %s
  %s
  %s
}
`, i.label, hclString(i.name), hclString(i.db), hclString(i.user), pw, i.extra)
}

func (i clusterInstance) address() string { return "postgraas_instance." + i.label }

// clusterConfig is a configuration on the pg_cluster backend; everything
// else comes from the environment `make test` exports.
func clusterConfig(providerExtra string, instances ...clusterInstance) string {
	s := fmt.Sprintf("provider \"postgraas\" {\n  backend = \"pg_cluster\"\n  %s\n}\n", providerExtra)
	for _, i := range instances {
		s += i.hcl()
	}
	return s
}

// checkClusterGone is a CheckDestroy proving role, database and row gone.
func checkClusterGone(insts ...*clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		for _, i := range insts {
			role, db, err := clusterObjects(i.user, i.db)
			if err != nil {
				return err
			}
			if role || db {
				return fmt.Errorf("after destroy of %s: role exists=%v, database exists=%v", i.name, role, db)
			}
			n, err := metaRows(i.name)
			if err != nil {
				return err
			}
			if n != 0 {
				return fmt.Errorf("after destroy of %s: %d meta DB rows left", i.name, n)
			}
		}
		return nil
	}
}

func checkTenantWorks(i *clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		if err := writeAndRead(clusterTenant(i.db, i.user, i.password)); err != nil {
			return err
		}
		return withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
			var super, createdb, createrole, login bool
			if err := c.QueryRow(ctx, `SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1`,
				i.user).Scan(&super, &createdb, &createrole, &login); err != nil {
				return err
			}
			if super || createdb || createrole || !login {
				return fmt.Errorf("role %s: super=%v createdb=%v createrole=%v login=%v", i.user, super, createdb, createrole, login)
			}
			var owner string
			if err := c.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, i.db).Scan(&owner); err != nil {
				return err
			}
			if owner != i.user {
				return fmt.Errorf("database %s owned by %s, want %s", i.db, owner, i.user)
			}
			return nil
		})
	}
}

func TestAccInstance_pgClusterLifecycle(t *testing.T) {
	i := newClusterInstance("test")
	rotated := i
	rotated.password = "new pw\\with \"quotes\" é"
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{
				Config: clusterConfig("", i),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttrSet(i.address(), "id"),
					resource.TestCheckResourceAttr(i.address(), "backend", "pg_cluster"),
					resource.TestCheckResourceAttr(i.address(), "host", clusterAdmin().Host),
					resource.TestCheckResourceAttr(i.address(), "port", strconv.Itoa(clusterAdmin().Port)),
					resource.TestCheckNoResourceAttr(i.address(), "container_id"),
					resource.TestCheckNoResourceAttr(i.address(), "image"),
					resource.TestCheckResourceAttr(i.address(), "status", "ready"),
					resource.TestCheckResourceAttr(i.address(), "force_destroy", "false"),
					resource.TestMatchResourceAttr(i.address(), "created_at", regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)),
					// The test cluster offers no TLS: clients must not ask for it.
					resource.TestCheckResourceAttr(i.address(), "sslmode", "disable"),
					resource.TestCheckResourceAttr(i.address(), "connection_uri", fmt.Sprintf("postgres://%s:pw%%27%%40%%3A%%2F%s@%s:%d/%s?sslmode=disable",
						i.user, i.name, clusterAdmin().Host, clusterAdmin().Port, i.db)),
					checkTenantWorks(&i),
					checkMetaRow(&i),
				),
			},
			{
				ResourceName:            i.address(),
				ImportState:             true,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				ResourceName:            i.address(),
				ImportState:             true,
				ImportStateId:           i.name,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				Config: clusterConfig("", rotated),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(i.address(), tfjsonpath.New("db_password"), knownvalue.StringExact(rotated.password)),
				},
				Check: resource.ComposeAggregateTestCheckFunc(
					func(*terraform.State) error {
						if err := loginFails(clusterTenant(i.db, i.user, i.password), pgsql.CodeInvalidPassword); err != nil {
							return fmt.Errorf("old password: %w", err)
						}
						return writeAndRead(clusterTenant(i.db, i.user, rotated.password))
					},
				),
			},
		},
	})
}

// checkMetaRow checks the row as postgraas_server would read it: no
// password, the cluster as host.
func checkMetaRow(i *clusterInstance) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		return withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
			var password, user, host, backend, state string
			var port int
			var container *string
			err := c.QueryRow(ctx, `SELECT password, username, hostname, port, container_id, backend, state
				FROM db_instance WHERE postgraas_instance_name = $1`, i.name).Scan(&password, &user, &host, &port, &container, &backend, &state)
			if err != nil {
				return err
			}
			if password != "" || user != i.user || host != clusterAdmin().Host || port != clusterAdmin().Port ||
				container != nil || backend != "pg_cluster" || state != "ready" {
				return fmt.Errorf("meta DB row: password=%q user=%q host=%q port=%d container=%v backend=%q state=%q",
					password, user, host, port, container, backend, state)
			}
			return nil
		})
	}
}

func TestAccInstance_pgClusterNameConflict(t *testing.T) {
	a := newClusterInstance("a")
	b := newClusterInstance("b")
	b.name = a.name
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&a, &b),
		Steps: []resource.TestStep{
			{Config: clusterConfig("", a)},
			{
				Config:      clusterConfig("", a, b),
				ExpectError: regexp.MustCompile(`(?s)Instance name already taken.*` + regexp.QuoteMeta(a.name)),
			},
			{
				// b left nothing behind, and a is untouched.
				Config: clusterConfig("", a),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkTenantWorks(&a),
					func(*terraform.State) error {
						role, db, err := clusterObjects(b.user, b.db)
						if err != nil || role || db {
							return fmt.Errorf("conflicting create left role=%v db=%v (%v)", role, db, err)
						}
						if n, err := metaRows(a.name); err != nil || n != 1 {
							return fmt.Errorf("%d rows named %s (%v)", n, a.name, err)
						}
						return nil
					},
				),
			},
		},
	})
}

// An existing role or database is never taken over, changed or dropped.
func TestAccInstance_pgClusterExistingObjectsUntouched(t *testing.T) {
	role := newClusterInstance("role")
	db := newClusterInstance("db")
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{
			{
				PreConfig: func() {
					mustDo(t, adminExec(
						"CREATE ROLE "+pgsql.QuoteIdent(role.user)+" LOGIN CREATEDB PASSWORD 'original'",
						"CREATE DATABASE "+pgsql.QuoteIdent(db.db),
						"COMMENT ON DATABASE "+pgsql.QuoteIdent(db.db)+" IS 'pre-existing'",
					))
					t.Cleanup(func() {
						_ = adminExec("DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(db.db), "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(role.user))
					})
				},
				Config:      clusterConfig("", role),
				ExpectError: regexp.MustCompile(`(?s)The role already exists.*` + regexp.QuoteMeta(role.user)),
			},
			{
				Config:      clusterConfig("", db),
				ExpectError: regexp.MustCompile(`(?s)The database already exists.*` + regexp.QuoteMeta(db.db)),
				Check:       nil,
			},
			{
				// Nothing to apply: prove the pre-existing objects are as
				// they were and the failed creates left nothing.
				Config: clusterConfig(""),
				Check: func(*terraform.State) error {
					if err := withConn(clusterTenant("postgres", role.user, "original"), func(ctx context.Context, c *pgx.Conn) error {
						return c.Ping(ctx)
					}); err != nil {
						return fmt.Errorf("pre-existing role changed: %w", err)
					}
					err := withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
						var createdb bool
						var comment *string
						if err := c.QueryRow(ctx, `SELECT rolcreatedb FROM pg_roles WHERE rolname = $1`, role.user).Scan(&createdb); err != nil {
							return err
						}
						if err := c.QueryRow(ctx, `SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1`,
							db.db).Scan(&comment); err != nil {
							return err
						}
						if !createdb || comment == nil || *comment != "pre-existing" {
							return fmt.Errorf("pre-existing objects changed: createdb=%v comment=%v", createdb, comment)
						}
						return nil
					})
					if err != nil {
						return err
					}
					for _, i := range []clusterInstance{role, db} {
						r, d, err := clusterObjects(i.user, i.db)
						if err != nil {
							return err
						}
						if (i.label == "role" && d) || (i.label == "db" && r) {
							return fmt.Errorf("failed create of %s left role=%v db=%v", i.name, r, d)
						}
						if n, err := metaRows(i.name); err != nil || n != 0 {
							return fmt.Errorf("failed create of %s left %d rows (%v)", i.name, n, err)
						}
					}
					return nil
				},
			},
		},
	})
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAccInstance_pgClusterWrongPasswordOnDestroy(t *testing.T) {
	i := newClusterInstance("test")
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{Config: clusterConfig("", i)},
			{
				PreConfig: func() {
					mustDo(t, adminExec("ALTER ROLE "+pgsql.QuoteIdent(i.user)+" PASSWORD 'changed-outside'"))
				},
				Config:      clusterConfig("", i),
				Destroy:     true,
				ExpectError: regexp.MustCompile(`Wrong instance password`),
			},
			{
				PreConfig: func() {
					// Nothing was removed by the refused destroy.
					mustDo(t, writeAndRead(clusterTenant(i.db, i.user, "changed-outside")))
					mustDo(t, adminExec("ALTER ROLE "+pgsql.QuoteIdent(i.user)+" PASSWORD "+pgsql.QuoteLiteral(i.password)))
				},
				Config: clusterConfig("", i),
				Check:  checkMetaRow(&i),
			},
		},
	})
}

func TestAccInstance_pgClusterSessionsBlockDestroy(t *testing.T) {
	i := newClusterInstance("test")
	forced := i
	forced.extra = "force_destroy = true"
	var session *pgx.Conn
	t.Cleanup(func() {
		if session != nil {
			_ = session.Close(context.Background())
		}
	})
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{Config: clusterConfig("", i)},
			{
				PreConfig: func() {
					var err error
					session, err = clusterTenant(i.db, i.user, i.password).Connect(context.Background())
					mustDo(t, err)
				},
				Config:      clusterConfig("", i),
				Destroy:     true,
				ExpectError: regexp.MustCompile(`(?s)Instance still in use.*1 other session`),
			},
			{
				Config: clusterConfig("", forced),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr(i.address(), "force_destroy", "true"),
					checkTenantWorks(&i),
				),
			},
			{
				// The session is still open; force_destroy terminates it.
				Config:  clusterConfig("", forced),
				Destroy: true,
				Check: func(*terraform.State) error {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					if err := session.Ping(ctx); err == nil {
						return fmt.Errorf("the open session survived a forced destroy")
					}
					return nil
				},
			},
		},
	})
}

// One tenant cannot connect to another's database (postgraas_server issue #20).
func TestAccInstance_pgClusterTenantIsolation(t *testing.T) {
	a := newClusterInstance("a")
	b := newClusterInstance("b")
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&a, &b),
		Steps: []resource.TestStep{{
			Config: clusterConfig("", a, b),
			Check: resource.ComposeAggregateTestCheckFunc(
				checkTenantWorks(&a),
				checkTenantWorks(&b),
				func(*terraform.State) error {
					if err := loginFails(clusterTenant(b.db, a.user, a.password), pgsql.CodeInsufficientPrivilege); err != nil {
						return err
					}
					return loginFails(clusterTenant(a.db, b.user, b.password), pgsql.CodeInsufficientPrivilege)
				},
			),
		}},
	})
}

// A database dropped outside Terraform (its role left behind) is noticed on
// refresh, and the next apply recreates the instance under the same name
// (taking its row over) without anyone editing the meta DB.
func TestAccInstance_pgClusterOutOfBandDrop(t *testing.T) {
	i := newClusterInstance("test")
	var firstID string
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{
				Config: clusterConfig("", i),
				Check: func(s *terraform.State) error {
					firstID = s.RootModule().Resources[i.address()].Primary.ID
					return nil
				},
			},
			{
				PreConfig: func() { mustDo(t, adminExec("DROP DATABASE "+pgsql.QuoteIdent(i.db))) },
				Config:    clusterConfig("", i),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkTenantWorks(&i),
					func(s *terraform.State) error {
						// The row is taken over in place: same id, new
						// objects (checkTenantWorks found the database again).
						if id := s.RootModule().Resources[i.address()].Primary.ID; id != firstID {
							return fmt.Errorf("row not taken over in place: id %s, was %s", id, firstID)
						}
						if n, err := metaRows(i.name); err != nil || n != 1 {
							return fmt.Errorf("%d rows named %s (%v)", n, i.name, err)
						}
						return nil
					},
				),
			},
		},
	})
}

// The admin needs only CREATEDB and CREATEROLE, not superuser.
func TestAccInstance_pgClusterLimitedAdmin(t *testing.T) {
	testAccPreCheck(t, "POSTGRAAS_TEST_LIMITED_ADMIN_USERNAME", "POSTGRAAS_TEST_LIMITED_ADMIN_PASSWORD")
	i := newClusterInstance("test")
	admin := fmt.Sprintf("pg_cluster = {\n    username = %s\n    password = %s\n    sslmode = \"disable\"\n  }",
		hclString(os.Getenv("POSTGRAAS_TEST_LIMITED_ADMIN_USERNAME")), hclString(os.Getenv("POSTGRAAS_TEST_LIMITED_ADMIN_PASSWORD")))
	var session *pgx.Conn
	t.Cleanup(func() {
		if session != nil {
			_ = session.Close(context.Background())
		}
	})
	forced := i
	forced.extra = "force_destroy = true"
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{
				Config: clusterConfig(admin, i),
				Check:  resource.ComposeAggregateTestCheckFunc(checkTenantWorks(&i), checkMetaRow(&i)),
			},
			{
				// Rotation and a forced destroy work without superuser too.
				PreConfig: func() {
					var err error
					session, err = clusterTenant(i.db, i.user, i.password).Connect(context.Background())
					mustDo(t, err)
				},
				Config: clusterConfig(admin, forced),
			},
			{Config: clusterConfig(admin, forced), Destroy: true},
		},
	})
}

// IPv6 literals work with and without brackets: the meta DB as "[::1]",
// the cluster as "::1"; the instance's host is the bare address and its
// connection_uri brackets it, and a client logs in with that URI.
func TestAccInstance_ipv6Hosts(t *testing.T) {
	testAccPreCheck(t)
	srv := startPrivateServer(t, "IPv6", pgserver.Options{Conf: "listen_addresses = '127.0.0.1, ::1'"})
	a := srv.Target
	providerHCL := fmt.Sprintf(`metadb = {
    host = "[::1]", port = %d, db_name = "postgres", username = %s, password = %s, sslmode = "disable"
  }
  pg_cluster = {
    host = "::1", port = %d, database = "postgres", username = %s, password = %s, sslmode = "disable"
  }`, a.Port, hclString(a.User), hclString(a.Password), a.Port, hclString(a.User), hclString(a.Password))
	i := newClusterInstance("v6")
	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{{
			Config: clusterConfig(providerHCL, i),
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue(i.address(), tfjsonpath.New("host"), knownvalue.StringExact("::1")),
			},
			Check: func(s *terraform.State) error {
				uri := s.RootModule().Resources[i.address()].Primary.Attributes["connection_uri"]
				if !strings.Contains(uri, fmt.Sprintf("@[::1]:%d/", a.Port)) {
					return fmt.Errorf("connection_uri %q does not bracket the IPv6 host", uri)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c, err := pgx.Connect(ctx, uri) // it carries sslmode=disable
				if err != nil {
					return fmt.Errorf("logging in with connection_uri: %w", err)
				}
				return c.Close(ctx)
			},
		}},
	})
}
