package provider

// Ownership acceptance tests: nothing is dropped, altered or terminated unless
// it is proven, right before the act, to be what this instance's meta DB row
// made (a name is not a proof); changes are routed by the backend recorded in
// the row, not by the provider's default; legacy meta DBs with duplicate names
// keep working; rows of creates in progress are respected.

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// inDB is target connected to another database.
func inDB(target pgsql.Target, db string) pgsql.Target {
	target.Database = db
	return target
}

// metaExec runs one statement on the shared meta DB.
func metaExec(sql string, args ...any) error {
	return withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, sql, args...)
		return err
	})
}

// roleSecret reads a role's stored secret as the (superuser) cluster admin.
func roleSecret(role string) (exists bool, secret string, err error) {
	err = withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		var s *string
		err := c.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, role).Scan(&s)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		exists = true
		if s != nil {
			secret = *s
		}
		return nil
	})
	return
}

// dbOwner is the owner of a database, "" when it does not exist.
func dbOwner(db string) (string, error) {
	var owner string
	err := withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		err := c.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, db).Scan(&owner)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	return owner, err
}

// rowSummary describes the meta DB rows with that name in target's
// db_instance, to compare before and after.
func rowSummary(target pgsql.Target, name string) (string, error) {
	var s *string
	err := withConn(target, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT string_agg(id || ':' || coalesce(db_name, '') || ':' || coalesce(username, '') || ':' ||
			coalesce(hostname, '') || ':' || coalesce(port::text, '') || ':' || coalesce(container_id, ''), ',' ORDER BY id)
			FROM db_instance WHERE postgraas_instance_name = $1`, name).Scan(&s)
	})
	if s == nil {
		return "", err
	}
	return *s, err
}

// cleanupCluster removes, out of band, whatever a test may have left on the
// cluster and in the shared meta DB: all names are random and the test's own.
func cleanupCluster(t *testing.T, dbs, roles, names []string) {
	t.Cleanup(func() {
		for _, d := range dbs {
			_ = adminExec("DROP DATABASE IF EXISTS " + pgsql.QuoteIdent(d) + " WITH (FORCE)")
		}
		for _, r := range roles {
			_ = adminExec("DROP ROLE IF EXISTS " + pgsql.QuoteIdent(r))
		}
		for _, n := range names {
			_ = metaExec(`DELETE FROM db_instance WHERE postgraas_instance_name = $1`, n)
		}
	})
}

// Repro A: a DBA keeps an instance's database (and its data) but drops the
// instance's role. The database is no longer provably the instance's, so the
// next apply must refuse to take the name back by dropping it.
func TestAccOwnership_dbaKeptDatabase(t *testing.T) {
	m1 := newClusterInstance("m1")
	admin := clusterAdmin()
	cleanupCluster(t, []string{m1.db}, []string{m1.user}, []string{m1.name})
	const precious = "precious data kept by the DBA"
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{
			{
				Config: clusterConfig("", m1),
				Check:  checkTenantWorks(&m1),
			},
			{
				PreConfig: func() {
					// As the cluster admin: data first, then the database is
					// taken over and the role dropped. REASSIGN OWNED is per
					// database (plus shared objects, such as the database).
					r := pgsql.QuoteIdent(m1.user)
					to := pgsql.QuoteIdent(admin.User)
					mustDo(t, withConn(inDB(admin, m1.db), func(ctx context.Context, c *pgx.Conn) error {
						for _, s := range []string{
							"CREATE TABLE kept (v text)",
							"INSERT INTO kept VALUES (" + pgsql.QuoteLiteral(precious) + ")",
							"REASSIGN OWNED BY " + r + " TO " + to,
							"DROP OWNED BY " + r,
						} {
							if _, err := c.Exec(ctx, s); err != nil {
								return fmt.Errorf("%s: %w", s, err)
							}
						}
						return nil
					}))
					mustDo(t, adminExec(
						"REASSIGN OWNED BY "+r+" TO "+to,
						"DROP OWNED BY "+r,
						"DROP ROLE "+r,
					))
					owner, err := dbOwner(m1.db)
					mustDo(t, err)
					if owner != admin.User {
						t.Fatalf("setup: database %s owned by %q, want %q", m1.db, owner, admin.User)
					}
				},
				Config:      clusterConfig("", m1),
				ExpectError: regexp.MustCompile(`already exists`),
			},
			{
				// Nothing to apply; prove the database and its data survived.
				Config: clusterConfig(""),
				Check: func(*terraform.State) error {
					owner, err := dbOwner(m1.db)
					if err != nil {
						return err
					}
					if owner != admin.User {
						return fmt.Errorf("database %s: owner %q, want %q (dropped and recreated?)", m1.db, owner, admin.User)
					}
					var v string
					if err := withConn(inDB(admin, m1.db), func(ctx context.Context, c *pgx.Conn) error {
						return c.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v)
					}); err != nil {
						return fmt.Errorf("the DBA's data in %s is gone: %w", m1.db, err)
					}
					if v != precious {
						return fmt.Errorf("kept table holds %q", v)
					}
					if exists, _, err := roleSecret(m1.user); err != nil || exists {
						return fmt.Errorf("the refused create left role %s behind (exists=%v, %v)", m1.user, exists, err)
					}
					return nil
				},
			},
		},
	})
}

// Repro B: instance A's database and role are dropped out of band; tenant B
// then gets a database with the same name. Re-applying A must not drop B's
// database nor end B's sessions.
func TestAccOwnership_otherTenantSameDBName(t *testing.T) {
	a := newClusterInstance("a")
	b := newClusterInstance("b")
	b.db = a.db // X
	cleanupCluster(t, []string{a.db}, []string{a.user, b.user}, []string{a.name, b.name})
	var session *pgx.Conn
	t.Cleanup(func() {
		if session != nil {
			_ = session.Close(context.Background())
		}
	})
	const bData = "tenant b's rows"
	var aRowsBefore, aSecretBefore string
	var aRoleBefore bool
	forgetA := `
removed {
  from = postgraas_instance.a
  lifecycle {
    destroy = false
  }
}
`
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&a, &b),
		Steps: []resource.TestStep{
			{
				Config: clusterConfig("", a),
				Check:  checkTenantWorks(&a),
			},
			{
				// A's objects vanish; B, another tenant, is created with the
				// same database name.
				PreConfig: func() {
					mustDo(t, adminExec("DROP DATABASE "+pgsql.QuoteIdent(a.db), "DROP ROLE "+pgsql.QuoteIdent(a.user)))
				},
				Config: clusterConfig("", b) + forgetA,
				Check:  checkTenantWorks(&b),
			},
			{
				PreConfig: func() {
					var err error
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					session, err = clusterTenant(b.db, b.user, b.password).Connect(ctx)
					mustDo(t, err)
					_, err = session.Exec(ctx, `CREATE TABLE bdata (v text); INSERT INTO bdata VALUES (`+pgsql.QuoteLiteral(bData)+`)`)
					mustDo(t, err)
				},
				Config:      clusterConfig("", a, b),
				ExpectError: regexp.MustCompile(`already exists`),
			},
			{
				// B's session survived and its data is intact; then B is
				// destroyed, which must not touch A's row or role.
				PreConfig: func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					var v string
					if err := session.QueryRow(ctx, `SELECT v FROM bdata`).Scan(&v); err != nil {
						t.Fatalf("tenant B's open session did not survive the re-apply of A: %v", err)
					}
					if v != bData {
						t.Fatalf("tenant B's data: %q", v)
					}
					owner, err := dbOwner(b.db)
					mustDo(t, err)
					if owner != b.user {
						t.Fatalf("database %s owned by %q, want %q", b.db, owner, b.user)
					}
					mustDo(t, session.Close(ctx))
					session = nil
					aRowsBefore, err = rowSummary(metaDB(), a.name)
					mustDo(t, err)
					aRoleBefore, aSecretBefore, err = roleSecret(a.user)
					mustDo(t, err)
				},
				Config: clusterConfig(""),
				Check: func(*terraform.State) error {
					role, db, err := clusterObjects(b.user, b.db)
					if err != nil {
						return err
					}
					if role || db {
						return fmt.Errorf("destroy of B left role=%v db=%v", role, db)
					}
					if n, err := metaRows(b.name); err != nil || n != 0 {
						return fmt.Errorf("destroy of B left %d rows (%v)", n, err)
					}
					rows, err := rowSummary(metaDB(), a.name)
					if err != nil {
						return err
					}
					if rows != aRowsBefore {
						return fmt.Errorf("destroy of B changed A's rows: before %q, after %q", aRowsBefore, rows)
					}
					exists, secret, err := roleSecret(a.user)
					if err != nil {
						return err
					}
					if exists != aRoleBefore || secret != aSecretBefore {
						return fmt.Errorf("destroy of B changed A's role %s: existed %v -> %v, secret changed %v",
							a.user, aRoleBefore, exists, secret != aSecretBefore)
					}
					return nil
				},
			},
			{
				// The database name is free again: A is recreated.
				Config: clusterConfig("", a),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkTenantWorks(&a),
					checkMetaRow(&a),
					func(*terraform.State) error {
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

// switchedDockerConfig keeps the docker settings of dockerConfig but makes
// pg_cluster the provider's default backend.
func switchedDockerConfig(instances ...clusterInstance) string {
	s := fmt.Sprintf(`provider "postgraas" {
  backend = "pg_cluster"
  docker = {
    image        = %s
    bind_address = "127.0.0.1"
  }
}
`, hclString(os.Getenv("POSTGRAAS_TEST_IMAGE")))
	for _, i := range instances {
		s += i.hcl()
	}
	return s
}

// A docker instance keeps living on docker when the provider's default
// backend changes: its password change goes to its container, never to a
// cluster role that happens to have the same name (another tenant's).
func TestAccOwnership_updateRoutesByRecordBackend(t *testing.T) {
	i := newDockerInstance("test")
	rotated := i
	rotated.password = "rotated 'pw' " + i.name
	otherPassword := "other tenant " + randomName("pw")
	cli := dockerClient(t)
	var firstID, secretBefore string
	var volumes []string
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		_ = cli.ContainerRemove(ctx, i.name, container.RemoveOptions{Force: true, RemoveVolumes: true})
		_ = metaExec(`DELETE FROM db_instance WHERE postgraas_instance_name = $1`, i.name)
		_ = adminExec("DROP ROLE IF EXISTS " + pgsql.QuoteIdent(i.user))
	})
	clusterRoleUntouched := func() error {
		exists, secret, err := roleSecret(i.user)
		if err != nil {
			return err
		}
		if !exists {
			return fmt.Errorf("the other tenant's cluster role %s was dropped", i.user)
		}
		if secret != secretBefore {
			return fmt.Errorf("the other tenant's cluster role %s got a new password verifier", i.user)
		}
		return withConn(clusterTenant(clusterAdmin().Database, i.user, otherPassword), func(ctx context.Context, c *pgx.Conn) error {
			return c.Ping(ctx)
		})
	}
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy: resource.ComposeAggregateTestCheckFunc(
			checkDockerGone(t, &volumes, &i),
			func(*terraform.State) error { return clusterRoleUntouched() },
		),
		Steps: []resource.TestStep{
			{
				PreConfig: func() {
					mustDo(t, adminExec("CREATE ROLE "+pgsql.QuoteIdent(i.user)+" LOGIN PASSWORD "+pgsql.QuoteLiteral(otherPassword)))
					var exists bool
					var err error
					exists, secretBefore, err = roleSecret(i.user)
					mustDo(t, err)
					if !exists || !strings.HasPrefix(secretBefore, "SCRAM-SHA-256$") {
						t.Fatalf("setup: role %s exists=%v secret %.14q...", i.user, exists, secretBefore)
					}
				},
				Config: dockerConfig("", i),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkDockerInstance(t, &i, nil),
					resource.TestCheckResourceAttr(i.address(), "backend", "docker"),
					func(s *terraform.State) error {
						firstID = s.RootModule().Resources[i.address()].Primary.ID
						return nil
					},
				),
			},
			{
				Config: switchedDockerConfig(rotated),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{
						plancheck.ExpectResourceAction(i.address(), plancheck.ResourceActionUpdate),
					},
				},
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr(i.address(), "backend", "docker"),
					func(s *terraform.State) error {
						if id := s.RootModule().Resources[i.address()].Primary.ID; id != firstID {
							return fmt.Errorf("instance replaced: id %s, was %s", id, firstID)
						}
						current, err := dockerTenant(s, &i, rotated.password)
						if err != nil {
							return err
						}
						if err := writeAndRead(current); err != nil {
							return fmt.Errorf("the docker instance does not accept the new password: %w", err)
						}
						old, _ := dockerTenant(s, &i, i.password)
						if err := loginFails(old, pgsql.CodeInvalidPassword); err != nil {
							return fmt.Errorf("the docker instance's old password: %w", err)
						}
						return nil
					},
					func(*terraform.State) error { return clusterRoleUntouched() },
				),
			},
		},
	})
}

// A meta DB written by postgraas_server, with an instance name used twice:
// the provider migrates it without losing or failing on anything, refuses
// to guess which "dup" is meant, and keeps new names unique against it.
func TestAccOwnership_legacyDuplicateNames(t *testing.T) {
	legacyDB := randomName("legacy_meta")
	legacyMeta := inDB(metaDB(), legacyDB)
	base := 100000 + mrand.IntN(800000)
	ids := []int{base, base + 1, base + 2}
	kept := newClusterInstance("kept") // the objects of the first "dup"
	stale := newClusterInstance("stale")
	otherName := randomName("legacy-other")
	newInst := newClusterInstance("new")
	dupNew := newClusterInstance("dupnew")
	dupNew.name = "dup"
	imp := kept
	imp.label = "imp"
	imp.name = "dup"
	admin := clusterAdmin()

	t.Cleanup(func() {
		_ = adminExec("DROP DATABASE IF EXISTS " + pgsql.QuoteIdent(legacyDB) + " WITH (FORCE)")
	})
	cleanupCluster(t, []string{kept.db, newInst.db, dupNew.db}, []string{kept.user, newInst.user, dupNew.user}, nil)

	provider := fmt.Sprintf("provider \"postgraas\" {\n  backend = \"pg_cluster\"\n  metadb = {\n    db_name = %s\n  }\n}\n", hclString(legacyDB))
	base1 := provider + newInst.hcl() + `
data "postgraas_instances" "all" {
  depends_on = [postgraas_instance.new]
}
`
	legacyCount := func() (int, error) {
		var n int
		err := withConn(legacyMeta, func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT count(*) FROM db_instance WHERE id = ANY($1)
				AND postgraas_instance_name IN ('dup', $2)`, ids, otherName).Scan(&n)
		})
		return n, err
	}
	checkLegacyKept := func(*terraform.State) error {
		n, err := legacyCount()
		if err != nil {
			return err
		}
		if n != 3 {
			return fmt.Errorf("%d of the 3 legacy rows left", n)
		}
		return nil
	}
	idRE := func(id int) string { return `\b` + strconv.Itoa(id) + `\b` }

	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy: resource.ComposeAggregateTestCheckFunc(
			checkLegacyKept,
			func(*terraform.State) error {
				role, db, err := clusterObjects(newInst.user, newInst.db)
				if err != nil || role || db {
					return fmt.Errorf("after destroy: role=%v db=%v (%v)", role, db, err)
				}
				rows, err := rowSummary(legacyMeta, newInst.name)
				if err != nil || rows != "" {
					return fmt.Errorf("after destroy: rows %q left (%v)", rows, err)
				}
				return nil
			},
		),
		Steps: []resource.TestStep{
			{
				PreConfig: func() {
					mustDo(t, adminExec("CREATE DATABASE "+pgsql.QuoteIdent(legacyDB)+" OWNER "+pgsql.QuoteIdent(legacyMeta.User)))
					// The first "dup" is a real pg_cluster instance, made as
					// postgraas_server made them; the second is stale.
					mustDo(t, adminExec(
						"CREATE USER "+pgsql.QuoteIdent(kept.user)+" WITH PASSWORD "+pgsql.QuoteLiteral(kept.password),
						"CREATE DATABASE "+pgsql.QuoteIdent(kept.db)+" OWNER "+pgsql.QuoteIdent(kept.user),
					))
					mustDo(t, withConn(legacyMeta, func(ctx context.Context, c *pgx.Conn) error {
						// postgraas_server's table, as SQLAlchemy creates it.
						if _, err := c.Exec(ctx, `CREATE TABLE db_instance (
	id SERIAL NOT NULL,
	postgraas_instance_name VARCHAR(100),
	creation_timestamp TIMESTAMP WITHOUT TIME ZONE,
	db_name VARCHAR(100),
	username VARCHAR(500),
	password VARCHAR(100),
	hostname VARCHAR(500),
	port INTEGER,
	container_id VARCHAR(100),
	PRIMARY KEY (id)
)`); err != nil {
							return err
						}
						if _, err := c.Exec(ctx, fmt.Sprintf(`ALTER SEQUENCE db_instance_id_seq RESTART WITH %d`, base)); err != nil {
							return err
						}
						rows := []struct {
							name, db, user, host string
							port                 int
							container            any
						}{
							{"dup", kept.db, kept.user, admin.Host, admin.Port, nil},
							{"dup", stale.db, stale.user, admin.Host, admin.Port, nil},
							{otherName, "my_db", "db_user", "not implemented yet", 54648,
								"193f0d94d49fa26626fdbdb583e9453f923468b01eac5920704852831a105c03"},
						}
						for k, r := range rows {
							var id int
							if err := c.QueryRow(ctx, `INSERT INTO db_instance
								(postgraas_instance_name, creation_timestamp, db_name, username, password, hostname, port, container_id)
								VALUES ($1, '2017-03-01 10:00:00.123456', $2, $3, '', $4, $5, $6) RETURNING id`,
								r.name, r.db, r.user, r.host, r.port, r.container).Scan(&id); err != nil {
								return err
							}
							if id != ids[k] {
								return fmt.Errorf("legacy row %d got id %d, want %d", k, id, ids[k])
							}
						}
						return nil
					}))
				},
				Config: base1,
				Check: resource.ComposeAggregateTestCheckFunc(
					checkTenantWorks(&newInst),
					checkLegacyKept,
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.#", "4"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.id", strconv.Itoa(ids[0])),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.name", "dup"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.db_name", kept.db),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.1.id", strconv.Itoa(ids[1])),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.1.name", "dup"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.1.db_name", stale.db),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.2.id", strconv.Itoa(ids[2])),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.2.name", otherName),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.2.backend", "docker"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.3.name", newInst.name),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.3.backend", "pg_cluster"),
				),
			},
			{
				Config: base1 + `
data "postgraas_instance" "dup" {
  name = "dup"
}
`,
				ExpectError: regexp.MustCompile(`(?s)Ambiguous.*(` + idRE(ids[0]) + `.*` + idRE(ids[1]) + `|` +
					idRE(ids[1]) + `.*` + idRE(ids[0]) + `)`),
			},
			{
				Config:      base1 + dupNew.hcl(),
				ExpectError: regexp.MustCompile(`already taken`),
			},
			{
				Config:        base1 + imp.hcl(),
				ResourceName:  imp.address(),
				ImportState:   true,
				ImportStateId: "dup",
				ExpectError:   regexp.MustCompile(`Ambiguous`),
			},
			{
				Config:             base1 + imp.hcl(),
				ResourceName:       imp.address(),
				ImportState:        true,
				ImportStateId:      strconv.Itoa(ids[0]),
				ImportStatePersist: false,
				ImportStateVerify:  false,
				ImportStateCheck: func(states []*terraform.InstanceState) error {
					if len(states) != 1 {
						return fmt.Errorf("imported %d instances", len(states))
					}
					a := states[0].Attributes
					if a["id"] != strconv.Itoa(ids[0]) || a["name"] != "dup" || a["db_name"] != kept.db || a["db_username"] != kept.user {
						return fmt.Errorf("imported attributes: %v", a)
					}
					return nil
				},
			},
			{
				// The refused create of a new "dup" left nothing; every legacy
				// row is still there.
				Config: base1,
				Check: resource.ComposeAggregateTestCheckFunc(
					checkLegacyKept,
					checkTenantWorks(&newInst),
					func(*terraform.State) error {
						role, db, err := clusterObjects(dupNew.user, dupNew.db)
						if err != nil || role || db {
							return fmt.Errorf("the refused create of a new dup left role=%v db=%v (%v)", role, db, err)
						}
						var n int
						if err := withConn(legacyMeta, func(ctx context.Context, c *pgx.Conn) error {
							return c.QueryRow(ctx, `SELECT count(*) FROM db_instance WHERE postgraas_instance_name = 'dup'`).Scan(&n)
						}); err != nil {
							return err
						}
						if n != 2 {
							return fmt.Errorf("%d rows named dup, want the 2 legacy ones", n)
						}
						return nil
					},
				),
			},
		},
	})
}

// A row of a create in progress (state creating, live lease) is not
// importable: the instance is not made yet, and the run making it owns it.
func TestAccOwnership_importCreatingRowRefused(t *testing.T) {
	i := newClusterInstance("creating")
	var id int64
	cleanupCluster(t, nil, nil, []string{i.name})
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{
			{
				// Reading the meta DB migrates its schema.
				Config: clusterConfig("") + `
data "postgraas_instances" "none" {
  name_regex = "^$"
}
`,
			},
			{
				PreConfig: func() {
					mustDo(t, withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
						var leaseOwner, leaseExpires bool
						if err := c.QueryRow(ctx, `SELECT
							EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
								AND table_name = 'db_instance' AND column_name = 'lease_owner'),
							EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
								AND table_name = 'db_instance' AND column_name = 'lease_expires_at')`).Scan(&leaseOwner, &leaseExpires); err != nil {
							return err
						}
						cols := "postgraas_instance_name, creation_timestamp, db_name, username, password, backend, state"
						vals := "$1, now() AT TIME ZONE 'UTC', $2, $3, '', 'pg_cluster', 'creating'"
						if leaseOwner {
							cols += ", lease_owner"
							vals += ", 'another terraform run (acceptance test)'"
						}
						if leaseExpires {
							cols += ", lease_expires_at"
							vals += ", now() + interval '10 minutes'"
						}
						return c.QueryRow(ctx, `INSERT INTO db_instance (`+cols+`) VALUES (`+vals+`) RETURNING id`,
							i.name, i.db, i.user).Scan(&id)
					}))
				},
				Config:            clusterConfig("", i),
				ResourceName:      i.address(),
				ImportState:       true,
				ImportStateIdFunc: func(*terraform.State) (string, error) { return strconv.FormatInt(id, 10), nil },
				ExpectError:       regexp.MustCompile(`being created`),
			},
			{
				// The refused import left the row as it was.
				Config: clusterConfig(""),
				Check: func(*terraform.State) error {
					var state string
					err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
						return c.QueryRow(ctx, `SELECT coalesce(state, '') FROM db_instance WHERE id = $1`, id).Scan(&state)
					})
					if err != nil {
						return fmt.Errorf("the creating row %d: %w", id, err)
					}
					if state != "creating" {
						return fmt.Errorf("the creating row %d is now in state %q", id, state)
					}
					return nil
				},
			},
		},
	})
}

// Two instances with the same database name, created at once: one wins,
// the other fails with a clear conflict and leaves nothing behind.
func TestAccOwnership_sameDBNameRace(t *testing.T) {
	a := newClusterInstance("a")
	b := newClusterInstance("b")
	b.db = a.db
	cleanupCluster(t, []string{a.db}, []string{a.user, b.user}, []string{a.name, b.name})
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&a, &b),
		Steps: []resource.TestStep{
			{
				Config:      clusterConfig("", a, b),
				ExpectError: regexp.MustCompile(`already exists`),
			},
			{
				RefreshState:       true,
				ExpectNonEmptyPlan: true, // the loser is still to be created
				Check: func(s *terraform.State) error {
					res := s.RootModule().Resources
					_, aIn := res[a.address()]
					_, bIn := res[b.address()]
					if aIn == bIn {
						return fmt.Errorf("in state: a=%v b=%v, want exactly one", aIn, bIn)
					}
					winner, loser := a, b
					if bIn {
						winner, loser = b, a
					}
					if err := checkTenantWorks(&winner)(s); err != nil {
						return fmt.Errorf("winner %s: %w", winner.name, err)
					}
					if err := checkMetaRow(&winner)(s); err != nil {
						return fmt.Errorf("winner %s: %w", winner.name, err)
					}
					if n, err := metaRows(loser.name); err != nil || n != 0 {
						return fmt.Errorf("loser %s left %d rows (%v)", loser.name, n, err)
					}
					if exists, _, err := roleSecret(loser.user); err != nil || exists {
						return fmt.Errorf("loser %s left its role %s (exists=%v, %v)", loser.name, loser.user, exists, err)
					}
					return nil
				},
			},
		},
	})
}

// A docker instance whose meta DB row was deleted out of band is recorded
// again, as the same instance, by the next apply; its container is not
// mistaken for someone else's, nor replaced.
func TestAccOwnership_dockerRowDeletedOutOfBand(t *testing.T) {
	i := newDockerInstance("test")
	cli := dockerClient(t)
	var firstID, containerID string
	volumes := make([]string, 1)
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		_ = cli.ContainerRemove(ctx, i.name, container.RemoveOptions{Force: true, RemoveVolumes: true})
		_ = metaExec(`DELETE FROM db_instance WHERE postgraas_instance_name = $1`, i.name)
	})
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkDockerGone(t, &volumes, &i),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("", i),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkDockerInstance(t, &i, &volumes[0]),
					func(s *terraform.State) error {
						firstID = s.RootModule().Resources[i.address()].Primary.ID
						containerID = s.RootModule().Resources[i.address()].Primary.Attributes["container_id"]
						return nil
					},
				),
			},
			{
				PreConfig: func() {
					mustDo(t, withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
						tag, err := c.Exec(ctx, `DELETE FROM db_instance WHERE id = $1`, firstID)
						if err == nil && tag.RowsAffected() != 1 {
							err = fmt.Errorf("deleted %d rows with id %s", tag.RowsAffected(), firstID)
						}
						return err
					}))
				},
				Config: dockerConfig("", i),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkDockerInstance(t, &i, nil),
					resource.TestCheckResourceAttr(i.address(), "status", "running"),
					func(s *terraform.State) error {
						attrs := s.RootModule().Resources[i.address()].Primary.Attributes
						if attrs["id"] != firstID || attrs["container_id"] != containerID {
							return fmt.Errorf("not the same instance: id %s (was %s), container %s (was %s)",
								attrs["id"], firstID, attrs["container_id"], containerID)
						}
						return withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
							rows, err := c.Query(ctx, `SELECT id::text, coalesce(container_id, ''), coalesce(state, ''), coalesce(backend, '')
								FROM db_instance WHERE postgraas_instance_name = $1`, i.name)
							if err != nil {
								return err
							}
							type row struct{ id, container, state, backend string }
							got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
								var x row
								return x, r.Scan(&x.id, &x.container, &x.state, &x.backend)
							})
							if err != nil {
								return err
							}
							if len(got) != 1 || got[0] != (row{firstID, containerID, "ready", "docker"}) {
								return fmt.Errorf("meta DB rows named %s: %+v, want one {id %s, container %s, ready, docker}",
									i.name, got, firstID, containerID)
							}
							return nil
						})
					},
				),
			},
		},
	})
}
