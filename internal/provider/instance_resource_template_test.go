package provider

import (
	"context"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// goldenMigrated is a Check that plays the golden instance's migrations:
// its tenant makes a table with two rows, and closes its session.
func goldenMigrated(g *clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		return withConn(clusterTenant(g.db, g.user, g.password), func(ctx context.Context, c *pgx.Conn) error {
			_, err := c.Exec(ctx, `CREATE TABLE IF NOT EXISTS migrated (id serial PRIMARY KEY, v text);
INSERT INTO migrated (v) VALUES ('one'), ('two')`)
			return err
		})
	}
}

// checkClone: the clone has the golden's rows, owns what it copied, and
// neither tenant can connect to the other's database.
func checkClone(g, c *clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		err := withConn(clusterTenant(c.db, c.user, c.password), func(ctx context.Context, conn *pgx.Conn) error {
			var n int
			var owner string
			if err := conn.QueryRow(ctx, `SELECT count(*), (SELECT tableowner FROM pg_tables WHERE tablename = 'migrated')
FROM migrated`).Scan(&n, &owner); err != nil {
				return fmt.Errorf("reading the clone: %w", err)
			}
			if n != 2 || owner != c.user {
				return fmt.Errorf("clone: %d rows, table owned by %q; want 2 rows owned by %q", n, owner, c.user)
			}
			_, err := conn.Exec(ctx, "INSERT INTO migrated (v) VALUES ('clone')")
			return err
		})
		if err != nil {
			return err
		}
		if err := loginFails(clusterTenant(g.db, c.user, c.password), pgsql.CodeInsufficientPrivilege); err != nil {
			return fmt.Errorf("the clone's role reaches the golden database: %w", err)
		}
		if err := loginFails(clusterTenant(c.db, g.user, g.password), pgsql.CodeInsufficientPrivilege); err != nil {
			return fmt.Errorf("the golden's role reaches the clone: %w", err)
		}
		return checkGoldenIntact(g)(nil)
	}
}

// checkGoldenIntact: the golden database is still its role's, with its
// rows only.
func checkGoldenIntact(g *clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		return withConn(clusterTenant(g.db, g.user, g.password), func(ctx context.Context, conn *pgx.Conn) error {
			var n int
			var owner string
			if err := conn.QueryRow(ctx, `SELECT count(*), (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database())
FROM migrated`).Scan(&n, &owner); err != nil {
				return fmt.Errorf("reading the golden instance: %w", err)
			}
			if n != 2 || owner != g.user {
				return fmt.Errorf("golden: %d rows, database owned by %q; want 2 rows owned by %q", n, owner, g.user)
			}
			return nil
		})
	}
}

func checkNothingLeft(c *clusterInstance) error {
	role, db, err := clusterObjects(c.user, c.db)
	if err != nil {
		return err
	}
	n, err := metaRows(c.name)
	if err != nil {
		return err
	}
	if role || db || n != 0 {
		return fmt.Errorf("failed clone left role=%v database=%v rows=%d", role, db, n)
	}
	return nil
}

func TestAccInstance_pgClusterTemplateClone(t *testing.T) {
	g := newClusterInstance("golden")
	c := newClusterInstance("clone")
	c.woVersion = 1 // the write-only password works for clones too
	c.extra = "template_instance = postgraas_instance.golden.id"
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&g, &c),
		Steps: []resource.TestStep{
			{Config: clusterConfig("", g), Check: goldenMigrated(&g)},
			{
				Config: clusterConfig("", g, c),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttrPair(c.address(), "template_instance", g.address(), "id"),
					checkClone(&g, &c),
				),
			},
			{
				// Destroying the clone leaves the golden instance as it was.
				Config: clusterConfig("", g),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkGoldenIntact(&g),
					func(*terraform.State) error { return checkNothingLeft(&c) },
				),
			},
		},
	})
}

func TestAccInstance_pgClusterTemplateBusy(t *testing.T) {
	g := newClusterInstance("golden")
	c := newClusterInstance("clone")
	c.extra = "template_instance = postgraas_instance.golden.id"
	waiting := c
	waiting.extra += "\n  template_wait = \"2m\""
	var session *pgx.Conn
	t.Cleanup(func() {
		if session != nil {
			_ = session.Close(context.Background())
		}
	})
	var start time.Time
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&g, &c),
		Steps: []resource.TestStep{
			{Config: clusterConfig("", g), Check: goldenMigrated(&g)},
			{
				PreConfig: func() {
					var err error
					session, err = clusterTenant(g.db, g.user, g.password).Connect(context.Background())
					mustDo(t, err)
				},
				Config:      clusterConfig("", g, c),
				ExpectError: regexp.MustCompile(`(?s)Template instance in use.*` + regexp.QuoteMeta(g.name) + `.*1\s+other\s+session`),
			},
			{
				PreConfig: func() {
					mustDo(t, checkNothingLeft(&c))
					s := session
					go func() {
						// Past the server's own 5 s wait, so the create's retry is what succeeds.
						time.Sleep(7 * time.Second)
						_ = s.Close(context.Background())
					}()
					start = time.Now()
				},
				Config: clusterConfig("", g, waiting),
				Check: resource.ComposeAggregateTestCheckFunc(
					func(*terraform.State) error {
						t.Logf("apply with template_wait took %s", time.Since(start).Round(time.Millisecond))
						return nil
					},
					checkClone(&g, &c),
				),
			},
		},
	})
}

// Only pg_cluster copies databases: a template on docker is refused at
// plan time, on the attribute.
func TestAccInstance_templateOnDockerAtPlan(t *testing.T) {
	i := newClusterInstance("v")
	i.extra = "backend = \"docker\"\n  template_instance = \"1\""
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{{
			Config:      clusterConfig("", i),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`(?s)Invalid instance settings for the docker backend.*template_instance.*cannot\s+copy`),
		}},
	})
}
