package provider

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/compare"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"github.com/hashicorp/terraform-plugin-testing/tfversion"
	"github.com/jackc/pgx/v5"
)

// TestAccMatrix_docker and _pgCluster are, with TestAccCredentials_docker
// and _pgCluster (the ephemeral resource), the subset of the acceptance
// tests that `make test` runs again under each CLI of the matrix (OpenTofu,
// the newest Terraform; make test-matrix runs only that; .ci/test.sh);
// _kubernetes runs under the default terraform only, since what a CLI sends
// the provider does not depend on the backend. Each is the whole life of an instance on one backend, with
// every kind of call a CLI makes to the provider. Create (plan, apply, the data sources read after
// it); read (a refresh that must see a change made to the meta DB row
// behind the CLI's back, in the resource and the data sources); rotation
// of db_password; import by name; a move to a write-only password, which
// the CLI must keep out of plan and state; destroy.
func TestAccMatrix_docker(t *testing.T) { testAccMatrix(t, "docker") }

func TestAccMatrix_pgCluster(t *testing.T) { testAccMatrix(t, "pg_cluster") }

func TestAccMatrix_kubernetes(t *testing.T) { testAccMatrix(t, "kubernetes") }

func testAccMatrix(t *testing.T, backendName string) {
	var b passwordBackend
	for _, pb := range passwordBackends() {
		if pb.name == backendName {
			b = pb
		}
	}
	if b.name == "" {
		t.Fatalf("no backend %q", backendName)
	}
	i := b.newI()
	i.label = "m"
	rotated := i
	rotated.password = "rotated \"pw\" é " + randomName("p")
	wo := i
	wo.password = "wo-" + randomName("p")
	wo.woVersion = 1
	addr := i.address()
	const moved = "moved.matrix.invalid"

	// The data sources: one by name, known at plan; one listing by regex,
	// read after the instance exists (depends_on).
	data := fmt.Sprintf(`
data "postgraas_instance" "by_name" {
  name = %s.name
}
data "postgraas_instances" "matching" {
  name_regex = %s
  depends_on = [%s]
}
`, addr, hclString("^"+regexp.QuoteMeta(i.name)+"$"), addr)
	config := func(i clusterInstance) string { return b.config(i) + data }
	byName, matching := "data.postgraas_instance.by_name", "data.postgraas_instances.matching"
	firstMatch := tfjsonpath.New("instances").AtSliceIndex(0)

	var host string // the host the instance was created with
	setHost := func(h string) {
		mustDo(t, withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
			tag, err := c.Exec(ctx, `UPDATE db_instance SET hostname = $1 WHERE postgraas_instance_name = $2`, h, i.name)
			if err == nil && tag.RowsAffected() != 1 {
				err = fmt.Errorf("%d meta DB rows named %s", tag.RowsAffected(), i.name)
			}
			return err
		}))
	}
	login := func(i *clusterInstance, password string) resource.TestCheckFunc {
		return func(s *terraform.State) error { return b.login(s, i, password) }
	}
	refused := func(i *clusterInstance, password string) resource.TestCheckFunc {
		return func(s *terraform.State) error {
			if b.login(s, i, password) == nil {
				return fmt.Errorf("the old password still logs in")
			}
			return nil
		}
	}

	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, b.env...) },
		TerraformVersionChecks:   []tfversion.TerraformVersionCheck{cliVersionIs{os.Getenv("POSTGRAAS_TEST_CLI_VERSION")}},
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             b.gone(t, &i),
		Steps: []resource.TestStep{
			{
				Config: config(i),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionCreate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("name"), knownvalue.StringExact(i.name)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("backend"), knownvalue.StringExact(b.name)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("status"), knownvalue.StringExact(b.status)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("db_password"), knownvalue.StringExact(i.password)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("connection_uri"),
						knownvalue.StringRegexp(regexp.MustCompile(`^postgres://`+regexp.QuoteMeta(i.user)+`:pw%27%40%3A%2F`))),
					statecheck.CompareValuePairs(addr, tfjsonpath.New("id"), byName, tfjsonpath.New("id"), compare.ValuesSame()),
					statecheck.CompareValuePairs(addr, tfjsonpath.New("port"), byName, tfjsonpath.New("port"), compare.ValuesSame()),
					statecheck.ExpectKnownValue(byName, tfjsonpath.New("db_name"), knownvalue.StringExact(i.db)),
					statecheck.ExpectKnownValue(byName, tfjsonpath.New("state"), knownvalue.StringExact("ready")),
					statecheck.ExpectKnownValue(matching, tfjsonpath.New("instances"), knownvalue.ListSizeExact(1)),
					statecheck.CompareValuePairs(addr, tfjsonpath.New("id"), matching, firstMatch.AtMapKey("id"), compare.ValuesSame()),
					statecheck.ExpectKnownValue(matching, firstMatch.AtMapKey("db_username"), knownvalue.StringExact(i.user)),
				},
				Check: resource.ComposeAggregateTestCheckFunc(
					login(&i, i.password),
					func(s *terraform.State) error {
						host = s.RootModule().Resources[addr].Primary.Attributes["host"]
						return nil
					},
				),
			},
			{
				// A refresh reads the instance and the data sources anew.
				PreConfig:    func() { setHost(moved) },
				RefreshState: true,
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr(addr, "host", moved),
					resource.TestMatchResourceAttr(addr, "connection_uri", regexp.MustCompile(`@`+regexp.QuoteMeta(moved)+`:\d+/`)),
					resource.TestCheckResourceAttr(byName, "host", moved),
					resource.TestCheckResourceAttr(matching, "instances.0.host", moved),
				),
			},
			{
				// Rotation (after the row is put back: the docker backend
				// logs in where the row says).
				PreConfig: func() { setHost(host) },
				Config:    config(rotated),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("db_password"), knownvalue.StringExact(rotated.password)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("host"), knownvalue.StringFunc(nonEmptyAndNot(moved))),
					statecheck.CompareValuePairs(addr, tfjsonpath.New("host"), byName, tfjsonpath.New("host"), compare.ValuesSame()),
				},
				Check: resource.ComposeAggregateTestCheckFunc(login(&i, rotated.password), refused(&i, i.password)),
			},
			{
				ResourceName:            addr,
				ImportState:             true,
				ImportStateId:           i.name,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				// From db_password to a write-only password: in neither plan
				// nor state, and the instance takes it.
				Config: config(wo),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					noSecretInPlan{[]string{wo.password}},
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					noSecretInState{[]string{wo.password}},
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("db_password"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("db_password_wo"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("db_password_wo_version"), knownvalue.Int64Exact(1)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("connection_uri"),
						knownvalue.StringRegexp(regexp.MustCompile(`^postgres://`+regexp.QuoteMeta(i.user)+`@`))),
				},
				Check: resource.ComposeAggregateTestCheckFunc(login(&i, wo.password), refused(&i, rotated.password)),
			},
		},
	})
}

// nonEmptyAndNot is a knownvalue.StringFunc check.
func nonEmptyAndNot(not string) func(string) error {
	return func(v string) error {
		if v == "" || v == not {
			return fmt.Errorf("got %q", v)
		}
		return nil
	}
}

// cliVersionIs fails a test that runs under another CLI version than want
// (make test sets POSTGRAAS_TEST_CLI_VERSION to the version of the CLI each
// run is meant to use, so a run that silently used another fails); empty
// want checks nothing.
type cliVersionIs struct{ want string }

func (c cliVersionIs) CheckTerraformVersion(_ context.Context, req tfversion.CheckTerraformVersionRequest, resp *tfversion.CheckTerraformVersionResponse) {
	if c.want == "" {
		return
	}
	want := strings.TrimPrefix(c.want, "v")
	if req.TerraformVersion == nil || req.TerraformVersion.String() != want {
		resp.Error = fmt.Errorf("the test runs under CLI version %v, want %s (POSTGRAAS_TEST_CLI_VERSION)", req.TerraformVersion, want)
	}
}
