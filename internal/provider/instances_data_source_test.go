package provider

import (
	"context"
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// legacyRow is a row as postgraas_server's SQLAlchemy model wrote it: empty
// password, no backend or state column values, local creation time.
type legacyRow struct {
	name, db, user, host, container string
	port                            int
}

func insertLegacyRows(t *testing.T, rows ...legacyRow) {
	t.Helper()
	// The provider's migrations must have run once so the columns exist;
	// the rows leave the new columns NULL, as postgraas_server would.
	mustDo(t, withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		for _, r := range rows {
			var container any
			if r.container != "" {
				container = r.container
			}
			if _, err := c.Exec(ctx, `INSERT INTO db_instance
				(postgraas_instance_name, creation_timestamp, db_name, username, password, hostname, port, container_id)
				VALUES ($1, '2016-07-06 23:38:38.367493', $2, $3, '', $4, $5, $6)`,
				r.name, r.db, r.user, r.host, r.port, container); err != nil {
				return err
			}
		}
		return nil
	}))
	t.Cleanup(func() {
		_ = withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
			for _, r := range rows {
				_, _ = c.Exec(ctx, `DELETE FROM db_instance WHERE postgraas_instance_name = $1`, r.name)
			}
			return nil
		})
	})
}

func TestAccInstancesDataSource_legacyRows(t *testing.T) {
	prefix := randomName("legacy")
	dockerRow := legacyRow{name: prefix + "-docker", db: "my_db", user: "db_user", host: "not implemented yet",
		port: 54648, container: "193f0d94d49fa26626fdbdb583e9453f923468b01eac5920704852831a105c03"}
	clusterRow := legacyRow{name: prefix + "-cluster", db: "other_db", user: "other_user@azure-1", host: "db.example.com", port: 5432}
	config := clusterConfig("") + fmt.Sprintf(`
data "postgraas_instances" "all" {
  name_regex = %s
}
data "postgraas_instances" "docker" {
  name_regex = %s
  backend    = "docker"
}
data "postgraas_instance" "by_name" {
  name = %s
}
data "postgraas_instance" "by_id" {
  id = data.postgraas_instance.by_name.id
}
`, hclString("^"+regexp.QuoteMeta(prefix)), hclString("^"+regexp.QuoteMeta(prefix)), hclString(dockerRow.name))

	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{
			{
				// Applying an empty configuration migrates the meta DB.
				Config: clusterConfig(""),
			},
			{
				PreConfig: func() { insertLegacyRows(t, dockerRow, clusterRow) },
				Config:    config,
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.#", "2"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.name", dockerRow.name),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.backend", "docker"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.container_id", dockerRow.container),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.port", "54648"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.state", "ready"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.0.created_at", "2016-07-06T23:38:38Z"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.1.name", clusterRow.name),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.1.backend", "pg_cluster"),
					resource.TestCheckResourceAttr("data.postgraas_instances.all", "instances.1.db_username", clusterRow.user),
					resource.TestCheckNoResourceAttr("data.postgraas_instances.all", "instances.1.container_id"),
					resource.TestCheckResourceAttr("data.postgraas_instances.docker", "instances.#", "1"),
					resource.TestCheckResourceAttr("data.postgraas_instance.by_name", "db_name", dockerRow.db),
					resource.TestCheckResourceAttr("data.postgraas_instance.by_name", "host", dockerRow.host),
					resource.TestCheckResourceAttrPair("data.postgraas_instance.by_id", "name", "data.postgraas_instance.by_name", "name"),
					resource.TestCheckResourceAttrPair("data.postgraas_instance.by_id", "id", "data.postgraas_instance.by_name", "id"),
					// No password anywhere, not even an empty one.
					resource.TestCheckNoResourceAttr("data.postgraas_instance.by_name", "password"),
					resource.TestCheckNoResourceAttr("data.postgraas_instances.all", "instances.0.password"),
				),
			},
		},
	})
}

// A pg_cluster instance that postgraas_server created (role, database and a
// legacy row) can be imported by name, adopted and destroyed.
// makeLegacyInstance makes i as postgraas_server did (a plaintext password,
// the database owned by the role) with its legacy meta DB row.
func makeLegacyInstance(t *testing.T, i clusterInstance) {
	t.Helper()
	admin := clusterAdmin()
	mustDo(t, adminExec(
		"CREATE USER "+pgsql.QuoteIdent(i.user)+" WITH PASSWORD "+pgsql.QuoteLiteral(i.password),
		"CREATE DATABASE "+pgsql.QuoteIdent(i.db)+" OWNER "+pgsql.QuoteIdent(i.user),
	))
	insertLegacyRows(t, legacyRow{name: i.name, db: i.db, user: i.user, host: admin.Host, port: admin.Port})
}

func TestAccInstance_pgClusterImportLegacy(t *testing.T) {
	i := newClusterInstance("legacy")
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{Config: clusterConfig("")},
			{
				PreConfig:          func() { makeLegacyInstance(t, i) },
				Config:             clusterConfig("", i),
				ResourceName:       i.address(),
				ImportState:        true,
				ImportStateId:      i.name,
				ImportStatePersist: true,
				ImportStateCheck: func(states []*terraform.InstanceState) error {
					if len(states) != 1 {
						return fmt.Errorf("imported %d instances", len(states))
					}
					a := states[0].Attributes
					if a["db_name"] != i.db || a["db_username"] != i.user || a["backend"] != "pg_cluster" || a["status"] != "ready" {
						return fmt.Errorf("imported attributes: %v", a)
					}
					return nil
				},
			},
			{
				// db_password now comes from the configuration.
				Config: clusterConfig("", i),
				Check:  resource.ComposeAggregateTestCheckFunc(resource.TestCheckResourceAttr(i.address(), "db_password", i.password)),
			},
		},
	})
}
