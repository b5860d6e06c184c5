package provider

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/hashicorp/terraform-plugin-testing/echoprovider"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfversion"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// The ephemeral resource's tests use it the way it is meant to be used:
// its outputs feed other configuration during the same run. Two consumers:
//
//   - the echo provider (from terraform-plugin-testing) is configured with
//     the whole result and copies it into the state of its echo resource,
//     so the test can read what was handed out (only tests do this:
//     ephemeral values are otherwise never stored);
//   - a terraform_data resource whose local-exec provisioner logs in with
//     psql, the login passed in PG* environment variables, and records who
//     it was. This is the login working during the run: by the time a
//     check runs, Terraform has closed the ephemeral resource.
//
// The checks then prove that the login was the temporary one acting as
// the instance's user, and that Close removed it.

var credentialsProviders = map[string]func() (tfprotov6.ProviderServer, error){
	"postgraas": testAccProviders["postgraas"],
	"echo":      echoprovider.NewProviderServer(),
}

// credentialsConfig is an instance's configuration plus the ephemeral
// resource, its echo and the login during the run.
func credentialsConfig(base string, i clusterInstance) string {
	return base + fmt.Sprintf(`
ephemeral "postgraas_credentials" "c" {
  instance_id = %[1]s.id
  ttl         = "10m"
}

provider "echo" {
  data = ephemeral.postgraas_credentials.c
}

resource "echo" "c" {}

resource "terraform_data" "login" {
  provisioner "local-exec" {
    command = "psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE TABLE ephemeral_probe AS SELECT session_user::text AS login, current_user::text AS acting'"
    environment = {
      PGHOST            = ephemeral.postgraas_credentials.c.host
      PGPORT            = ephemeral.postgraas_credentials.c.port
      PGDATABASE        = ephemeral.postgraas_credentials.c.db_name
      PGUSER            = ephemeral.postgraas_credentials.c.username
      PGPASSWORD        = ephemeral.postgraas_credentials.c.password
      PGSSLMODE         = "disable"
      PGCONNECT_TIMEOUT = "10"
    }
  }
}
`, i.address())
}

// handedOut is the echoed result of the ephemeral resource.
type handedOut struct {
	host, db, username, password, uri, ttl, expiresAt, sslmode string
	port                                                       int
}

// checkCredentials reads what the ephemeral resource handed out from the
// echo resource's state and runs check on it.
type checkCredentials func(handedOut) error

func (f checkCredentials) CheckState(_ context.Context, req statecheck.CheckStateRequest, resp *statecheck.CheckStateResponse) {
	if req.State == nil || req.State.Values == nil || req.State.Values.RootModule == nil {
		resp.Error = fmt.Errorf("no state")
		return
	}
	for _, r := range req.State.Values.RootModule.Resources {
		if r.Address != "echo.c" {
			continue
		}
		data, ok := r.AttributeValues["data"].(map[string]any)
		if !ok {
			resp.Error = fmt.Errorf("echo.c.data is %T, want an object", r.AttributeValues["data"])
			return
		}
		str := func(k string) string { s, _ := data[k].(string); return s }
		// terraform-json decodes numbers as json.Number.
		port, _ := strconv.Atoi(fmt.Sprint(data["port"]))
		resp.Error = f(handedOut{
			host: str("host"), port: port, db: str("db_name"), username: str("username"), password: str("password"),
			uri: str("connection_uri"), ttl: str("ttl"), expiresAt: str("expires_at"), sslmode: str("sslmode"),
		})
		return
	}
	resp.Error = fmt.Errorf("echo.c not in state")
}

// checkHandedOut checks the result against the instance and proves, with
// owner (the instance's own login), that the login worked during the run
// as the temporary role acting as the instance's user, and that it was
// removed when the run closed it.
func checkHandedOut(i *clusterInstance, owner func() (pgsql.Target, error), tempRoles func(pgsql.Target) (int, error)) checkCredentials {
	return func(h handedOut) error {
		o, err := owner()
		if err != nil {
			return err
		}
		if h.host != o.Host && !(h.host == "localhost" && o.Host == "127.0.0.1") || h.port != o.Port || h.db != i.db {
			return fmt.Errorf("handed out %s:%d/%s, want the instance's %s:%d/%s", h.host, h.port, h.db, o.Host, o.Port, i.db)
		}
		if !pgsql.IsTempRoleOf(i.user, h.username) || len(h.password) != 32 || h.ttl != "10m" {
			return fmt.Errorf("handed out user %q, a %d-character password, ttl %q", h.username, len(h.password), h.ttl)
		}
		exp, err := time.Parse(time.RFC3339, h.expiresAt)
		if err != nil || time.Until(exp) < 8*time.Minute || time.Until(exp) > 11*time.Minute {
			return fmt.Errorf("expires_at %q (%v), want about 10 minutes from now", h.expiresAt, err)
		}
		// The test cluster runs without TLS.
		if h.sslmode != "disable" {
			return fmt.Errorf("sslmode %q, want disable", h.sslmode)
		}
		if want := connectionURI(h.username, h.password, h.host, h.port, h.db, h.sslmode); h.uri != want {
			return fmt.Errorf("connection_uri does not match the other attributes")
		}
		if u, err := url.Parse(h.uri); err != nil || u.User.Username() != h.username {
			return fmt.Errorf("connection_uri does not parse back to the login (%v)", err)
		}

		// What the provisioner's psql recorded, read as the instance's user.
		var login, acting string
		err = withConn(o, func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT login, acting FROM ephemeral_probe`).Scan(&login, &acting)
		})
		if err != nil {
			return fmt.Errorf("reading what the login during the run recorded: %w", err)
		}
		if login != h.username || acting != i.user {
			return fmt.Errorf("during the run psql logged in as %q acting as %q, want %q acting as %q", login, acting, h.username, i.user)
		}

		// Closed: the login is refused and no temporary role of the
		// instance is left (neither the plan's nor the apply's).
		gone := o
		gone.User, gone.Password = h.username, h.password
		if err := loginFails(gone, pgsql.CodeInvalidPassword); err != nil {
			return fmt.Errorf("after the run: %w", err)
		}
		n, err := tempRoles(o)
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%d temporary login role(s) of %s left after the run", n, i.user)
		}
		return nil
	}
}

// countTempRoles counts, through target, the roles spelled like temporary
// logins of user.
func countTempRoles(user string) func(pgsql.Target) (int, error) {
	return func(target pgsql.Target) (int, error) {
		var n int
		err := withConn(target, func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE left(rolname, length($1)) = $1`,
				pgsql.TempRolePrefix(user)+"_tmp_").Scan(&n)
		})
		return n, err
	}
}

func credentialsPreCheck(t *testing.T, extra ...string) {
	testAccPreCheck(t, extra...)
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is not on PATH (the test logs in with it during the run): %v", err)
	}
}

// Ephemeral resources need Terraform 1.10; a test run with an older one
// fails rather than skips.
var credentialsVersions = []tfversion.TerraformVersionCheck{tfversion.RequireAbove(tfversion.Version1_10_0)}

func TestAccCredentials_pgCluster(t *testing.T) {
	i := newClusterInstance("test")
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { credentialsPreCheck(t) },
		TerraformVersionChecks:   credentialsVersions,
		ProtoV6ProviderFactories: credentialsProviders,
		CheckDestroy: resource.ComposeAggregateTestCheckFunc(
			checkClusterGone(&i),
			func(*terraform.State) error {
				if n, err := countTempRoles(i.user)(clusterAdmin()); err != nil || n != 0 {
					return fmt.Errorf("%d temporary login role(s) left after destroy (%v)", n, err)
				}
				return nil
			},
		),
		Steps: []resource.TestStep{
			{
				Config: credentialsConfig(clusterConfig("", i), i),
				ConfigStateChecks: []statecheck.StateCheck{
					checkHandedOut(&i, func() (pgsql.Target, error) {
						return clusterTenant(i.db, i.user, i.password), nil
					}, countTempRoles(i.user)),
				},
			},
		},
	})
}

func TestAccCredentials_docker(t *testing.T) {
	i := newDockerInstance("test")
	var port int
	var volumes []string
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { credentialsPreCheck(t, dockerEnv...) },
		TerraformVersionChecks:   credentialsVersions,
		ProtoV6ProviderFactories: credentialsProviders,
		CheckDestroy:             checkDockerGone(t, &volumes, &i),
		Steps: []resource.TestStep{
			{
				Config: credentialsConfig(dockerConfig("", i), i),
				// The legacy checks run before the state checks: the port.
				Check: func(s *terraform.State) error {
					var err error
					port, err = strconv.Atoi(s.RootModule().Resources[i.address()].Primary.Attributes["port"])
					return err
				},
				ConfigStateChecks: []statecheck.StateCheck{
					checkHandedOut(&i, func() (pgsql.Target, error) {
						return tenant("127.0.0.1", port, i.db, i.user, i.password), nil
					}, countTempRoles(i.user)),
				},
			},
		},
	})
}

// TestAccCredentials_kubernetes: the temporary login is made by psql in the
// instance's pod (pods/exec) and reached at the Service's address.
func TestAccCredentials_kubernetes(t *testing.T) {
	i := newKubeInstance("test")
	var target pgsql.Target
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { credentialsPreCheck(t, kubeEnv...) },
		TerraformVersionChecks:   credentialsVersions,
		ProtoV6ProviderFactories: credentialsProviders,
		CheckDestroy:             checkKubeGone(t, &i),
		Steps: []resource.TestStep{
			{
				Config: credentialsConfig(kubeConfig("", i), i),
				Check: func(s *terraform.State) error {
					var err error
					target, err = kubeTenant(s, &i, i.password)
					return err
				},
				ConfigStateChecks: []statecheck.StateCheck{
					checkHandedOut(&i, func() (pgsql.Target, error) { return target, nil }, countTempRoles(i.user)),
				},
			},
		},
	})
}

// TestAccCredentials_errors: an unknown instance and a bad ttl are refused
// with diagnostics that name them, and nothing is made.
func TestAccCredentials_errors(t *testing.T) {
	use := `
provider "echo" {
  data = ephemeral.postgraas_credentials.c
}

resource "echo" "c" {}
`
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { credentialsPreCheck(t) },
		TerraformVersionChecks:   credentialsVersions,
		ProtoV6ProviderFactories: credentialsProviders,
		Steps: []resource.TestStep{
			{
				Config: clusterConfig("") + `
ephemeral "postgraas_credentials" "c" {
  instance_id = "999999999999"
}
` + use,
				ExpectError: regexp.MustCompile(`(?s)Instance not found.*no instance with id 999999999999`),
			},
			{
				Config: clusterConfig("") + `
ephemeral "postgraas_credentials" "c" {
  instance_id = "1"
  ttl         = "25h"
}
` + use,
				ExpectError: regexp.MustCompile(`(?s)Invalid duration.*from 1s to 24h, got "25h"`),
			},
			{
				Config: clusterConfig("") + `
ephemeral "postgraas_credentials" "c" {
  instance_id = "ci-1234"
}
` + use,
				ExpectError: regexp.MustCompile(`(?s)instance_id.*must be a meta DB id`),
			},
		},
	})
}
