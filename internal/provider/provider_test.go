package provider

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

var testAccProviders = map[string]func() (tfprotov6.ProviderServer, error){
	"postgraas": providerserver.NewProtocol6WithError(New("test")()),
}

// requiredEnv is what the acceptance tests need; `make test` starts the
// servers and exports it (.ci/testenv.sh).
var requiredEnv = []string{
	"POSTGRAAS_METADB_HOST", "POSTGRAAS_METADB_PORT", "POSTGRAAS_METADB_DB_NAME",
	"POSTGRAAS_METADB_USERNAME", "POSTGRAAS_METADB_PASSWORD",
	"POSTGRAAS_PG_CLUSTER_HOST", "POSTGRAAS_PG_CLUSTER_PORT", "POSTGRAAS_PG_CLUSTER_USERNAME",
	"POSTGRAAS_PG_CLUSTER_PASSWORD",
}

// testAccPreCheck fails, never skips, when the environment is missing: a
// suite that silently skips its acceptance tests proves nothing.
func testAccPreCheck(t *testing.T, extra ...string) {
	t.Helper()
	for _, k := range append(requiredEnv, extra...) {
		if os.Getenv(k) == "" {
			t.Fatalf("%s is not set: run the acceptance tests with `make test`, which starts PostgreSQL and Docker and exports it", k)
		}
	}
}

// randomName is unique per test run and valid as instance, database and
// role name.
func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func envTarget(prefix, dbKey string) pgsql.Target {
	port, _ := strconv.Atoi(os.Getenv(prefix + "_PORT"))
	return pgsql.Target{
		Host:     os.Getenv(prefix + "_HOST"),
		Port:     port,
		Database: os.Getenv(prefix + dbKey),
		User:     os.Getenv(prefix + "_USERNAME"),
		Password: os.Getenv(prefix + "_PASSWORD"),
		SSLMode:  "disable",
	}
}

func clusterAdmin() pgsql.Target { return envTarget("POSTGRAAS_PG_CLUSTER", "_DATABASE") }
func metaDB() pgsql.Target       { return envTarget("POSTGRAAS_METADB", "_DB_NAME") }

// withConn runs f on a fresh connection to target.
func withConn(target pgsql.Target, f func(ctx context.Context, c *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := target.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", target, err)
	}
	defer c.Close(ctx)
	return f(ctx, c)
}

// adminExec runs SQL as the cluster admin.
func adminExec(sqls ...string) error {
	return withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		for _, s := range sqls {
			if _, err := c.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
}

// tenant is a login as an instance's user.
func tenant(host string, port int, db, user, password string) pgsql.Target {
	return pgsql.Target{Host: host, Port: port, Database: db, User: user, Password: password, SSLMode: "disable"}
}

func clusterTenant(db, user, password string) pgsql.Target {
	a := clusterAdmin()
	return tenant(a.Host, a.Port, db, user, password)
}

// clusterObjects reports whether the role and the database exist.
func clusterObjects(role, db string) (roleExists, dbExists bool, err error) {
	err = withConn(clusterAdmin(), func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
			EXISTS (SELECT 1 FROM pg_database WHERE datname = $2)`, role, db).Scan(&roleExists, &dbExists)
	})
	return
}

// metaRows counts meta DB rows with that instance name.
func metaRows(name string) (int, error) {
	var n int
	err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT count(*) FROM db_instance WHERE postgraas_instance_name = $1`, name).Scan(&n)
	})
	return n, err
}

// writeAndRead proves a login works for real: create a table, write, read.
func writeAndRead(target pgsql.Target) error {
	return withConn(target, func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, `CREATE TABLE IF NOT EXISTS probe (v text); INSERT INTO probe VALUES ('hello')`); err != nil {
			return err
		}
		var v string
		if err := c.QueryRow(ctx, `SELECT v FROM probe LIMIT 1`).Scan(&v); err != nil {
			return err
		}
		if v != "hello" {
			return fmt.Errorf("read %q back, want hello", v)
		}
		return nil
	})
}

// loginFails asserts that target's login is refused with the given SQLSTATE.
func loginFails(target pgsql.Target, code string) error {
	err := withConn(target, func(ctx context.Context, c *pgx.Conn) error { return nil })
	if err == nil {
		return fmt.Errorf("login as %s succeeded, want SQLSTATE %s", target, code)
	}
	if got := pgsql.Code(err); got != code {
		return fmt.Errorf("login as %s: got %v (SQLSTATE %q), want SQLSTATE %s", target, err, got, code)
	}
	return nil
}

// hclString quotes s as an HCL string.
func hclString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`, "${", "$${", "%{", "%%{")
	return `"` + r.Replace(s) + `"`
}
