package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// noSecretInState fails when `terraform show -json` of the state holds any
// of the secrets, anywhere.
type noSecretInState struct{ secrets []string }

func (c noSecretInState) CheckState(_ context.Context, req statecheck.CheckStateRequest, resp *statecheck.CheckStateResponse) {
	js, err := json.Marshal(req.State)
	if err != nil {
		resp.Error = err
		return
	}
	for _, s := range c.secrets {
		if strings.Contains(string(js), s) {
			resp.Error = fmt.Errorf("the state (terraform show -json) contains a write-only password")
			return
		}
	}
}

// noSecretInPlan is the same for the plan's values: planned, prior and
// changes. (Its "configuration" section echoes the configuration's
// literals, which a test has to use; real configurations pass write-only
// values from ephemeral variables or resources.)
type noSecretInPlan struct{ secrets []string }

func (c noSecretInPlan) CheckPlan(_ context.Context, req plancheck.CheckPlanRequest, resp *plancheck.CheckPlanResponse) {
	js, err := json.Marshal([]any{req.Plan.PlannedValues, req.Plan.PriorState, req.Plan.ResourceChanges,
		req.Plan.OutputChanges, req.Plan.ResourceDrift, req.Plan.RelevantAttributes})
	if err != nil {
		resp.Error = err
		return
	}
	for _, s := range c.secrets {
		if strings.Contains(string(js), s) {
			resp.Error = fmt.Errorf("the plan (terraform show -json) contains a write-only password")
			return
		}
	}
}

// passwordBackend is what the write-only and matrix tests need of one backend.
type passwordBackend struct {
	name   string
	status string // the status attribute of a new instance
	env    []string
	newI   func() clusterInstance
	config func(i clusterInstance) string
	// login proves password logs in (write, read).
	login func(s *terraform.State, i *clusterInstance, password string) error
	// changeOutOfBand sets the instance's password behind Terraform's back.
	changeOutOfBand func(s *terraform.State, i *clusterInstance, current, next string) error
	gone            func(t *testing.T, i *clusterInstance) resource.TestCheckFunc
}

func passwordBackends() []passwordBackend {
	return []passwordBackend{
		{
			name:   "pg_cluster",
			status: "ready",
			newI:   func() clusterInstance { return newClusterInstance("wo") },
			config: func(i clusterInstance) string { return clusterConfig("", i) },
			login: func(_ *terraform.State, i *clusterInstance, pw string) error {
				return writeAndRead(clusterTenant(i.db, i.user, pw))
			},
			changeOutOfBand: func(_ *terraform.State, i *clusterInstance, _, next string) error {
				return adminExec("ALTER ROLE " + pgsql.QuoteIdent(i.user) + " PASSWORD " + pgsql.QuoteLiteral(next))
			},
			gone: func(_ *testing.T, i *clusterInstance) resource.TestCheckFunc { return checkClusterGone(i) },
		},
		{
			name:   "docker",
			status: "running",
			env:    dockerEnv,
			newI:   func() clusterInstance { return newDockerInstance("wo") },
			config: func(i clusterInstance) string { return dockerConfig("", i) },
			login: func(s *terraform.State, i *clusterInstance, pw string) error {
				target, err := dockerTenant(s, i, pw)
				if err != nil {
					return err
				}
				return writeAndRead(target)
			},
			changeOutOfBand: func(s *terraform.State, i *clusterInstance, current, next string) error {
				target, err := dockerTenant(s, i, current)
				if err != nil {
					return err
				}
				return withConn(target, func(ctx context.Context, c *pgx.Conn) error {
					_, err := c.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(next))
					return err
				})
			},
			gone: func(t *testing.T, i *clusterInstance) resource.TestCheckFunc {
				var volumes []string
				return checkDockerGone(t, &volumes, i)
			},
		},
		{
			name:   "kubernetes",
			status: "running",
			env:    kubeEnv,
			newI:   func() clusterInstance { return newKubeInstance("wo") },
			config: func(i clusterInstance) string { return kubeConfig("", i) },
			login: func(s *terraform.State, i *clusterInstance, pw string) error {
				target, err := kubeTenant(s, i, pw)
				if err != nil {
					return err
				}
				return writeAndRead(target)
			},
			changeOutOfBand: func(s *terraform.State, i *clusterInstance, current, next string) error {
				target, err := kubeTenant(s, i, current)
				if err != nil {
					return err
				}
				return withConn(target, func(ctx context.Context, c *pgx.Conn) error {
					_, err := c.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(next))
					return err
				})
			},
			gone: func(t *testing.T, i *clusterInstance) resource.TestCheckFunc { return checkKubeGone(t, i) },
		},
	}
}

// With db_password_wo the password is in neither state nor plan; a new
// version rotates it in place; destroy refuses after an out-of-band change
// (the verifier in private state no longer matches the server's) and the
// password the instance accepts is taken as it is.
func TestAccInstance_writeOnlyPassword(t *testing.T) {
	for _, b := range passwordBackends() {
		t.Run(b.name, func(t *testing.T) {
			i := b.newI()
			i.password = "wo-1'@:/" + randomName("p")
			i.woVersion = 1
			v2 := i
			v2.password = "wo-2\\\"" + randomName("p")
			v2.woVersion = 2
			oob := v2
			oob.password = "oob-" + randomName("p")
			oob.woVersion = 3
			secrets := []string{i.password, v2.password, oob.password}
			var state *terraform.State
			keep := func(s *terraform.State) error { state = s; return nil }
			resource.ParallelTest(t, resource.TestCase{
				PreCheck:                 func() { testAccPreCheck(t, b.env...) },
				ProtoV6ProviderFactories: testAccProviders,
				CheckDestroy:             b.gone(t, &i),
				Steps: []resource.TestStep{
					{
						Config:            b.config(i),
						ConfigPlanChecks:  resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{noSecretInPlan{secrets}}},
						ConfigStateChecks: []statecheck.StateCheck{noSecretInState{secrets}},
						Check: resource.ComposeAggregateTestCheckFunc(
							keep,
							func(s *terraform.State) error { return b.login(s, &i, i.password) },
							resource.TestCheckNoResourceAttr(i.address(), "db_password"),
							resource.TestCheckNoResourceAttr(i.address(), "db_password_wo"),
							func(s *terraform.State) error {
								uri := s.RootModule().Resources[i.address()].Primary.Attributes["connection_uri"]
								if strings.Contains(strings.SplitN(strings.TrimPrefix(uri, "postgres://"), "@", 2)[0], ":") {
									return fmt.Errorf("connection_uri carries a password in write-only mode")
								}
								return nil
							},
						),
					},
					{
						Config: b.config(v2),
						ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
							plancheck.ExpectResourceAction(i.address(), plancheck.ResourceActionUpdate),
							noSecretInPlan{secrets},
						}},
						ConfigStateChecks: []statecheck.StateCheck{noSecretInState{secrets}},
						Check: resource.ComposeAggregateTestCheckFunc(
							keep,
							func(s *terraform.State) error { return b.login(s, &i, v2.password) },
							func(s *terraform.State) error {
								if err := b.login(s, &i, i.password); err == nil {
									return fmt.Errorf("the old password still logs in after the rotation")
								}
								return nil
							},
						),
					},
					{
						PreConfig:   func() { mustDo(t, b.changeOutOfBand(state, &i, v2.password, oob.password)) },
						Config:      b.config(v2),
						Destroy:     true,
						ExpectError: regexp.MustCompile(`Wrong instance password`),
					},
					{
						// The instance already accepts the configured password:
						// taken as it is, and the destroy that follows works.
						Config: b.config(oob),
						Check: resource.ComposeAggregateTestCheckFunc(
							func(s *terraform.State) error { return b.login(s, &i, oob.password) },
						),
					},
				},
			})
		})
	}
}

// Only the holder of the current password may change it: a rotation after
// an out-of-band change is refused (nothing changed) until the
// configuration has the password the instance accepts; a role set NOLOGIN
// is reported as that, not as a wrong password.
func TestAccInstance_pgClusterPasswordRule(t *testing.T) {
	i := newClusterInstance("rule")
	next := i
	next.password = "next-" + randomName("p")
	oob := i
	oob.password = "oob-" + randomName("p")
	final := i
	final.password = "final-" + randomName("p")
	role := pgsql.QuoteIdent(i.user)
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{Config: clusterConfig("", i)},
			{
				PreConfig:   func() { mustDo(t, adminExec("ALTER ROLE "+role+" PASSWORD "+pgsql.QuoteLiteral(oob.password))) },
				Config:      clusterConfig("", next),
				ExpectError: regexp.MustCompile(`(?s)Wrong instance password.*Nothing was changed`),
			},
			{
				PreConfig: func() {
					// The refused rotation changed nothing.
					mustDo(t, writeAndRead(clusterTenant(i.db, i.user, oob.password)))
				},
				Config: clusterConfig("", oob),
				Check:  func(*terraform.State) error { return writeAndRead(clusterTenant(i.db, i.user, oob.password)) },
			},
			{
				PreConfig:   func() { mustDo(t, adminExec("ALTER ROLE "+role+" NOLOGIN")) },
				Config:      clusterConfig("", final),
				ExpectError: regexp.MustCompile(`(?s)Instance login disabled.*NOLOGIN`),
			},
			{
				PreConfig: func() { mustDo(t, adminExec("ALTER ROLE "+role+" LOGIN")) },
				Config:    clusterConfig("", final),
				Check:     func(*terraform.State) error { return writeAndRead(clusterTenant(i.db, i.user, final.password)) },
			},
		},
	})
}

// An import takes effect only once the configured password is proven to be
// the instance's: from another working directory, a configuration with
// another password cannot silently reset it.
func TestAccInstance_pgClusterImportNeedsCurrentPassword(t *testing.T) {
	i := newClusterInstance("imp")
	wrong := i
	wrong.password = "not-the-password-" + randomName("p")
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkClusterGone(&i),
		Steps: []resource.TestStep{
			{Config: clusterConfig("")},
			{
				PreConfig:          func() { makeLegacyInstance(t, i) },
				Config:             clusterConfig("", wrong),
				ResourceName:       i.address(),
				ImportState:        true,
				ImportStateId:      i.name,
				ImportStatePersist: true,
			},
			{
				Config:      clusterConfig("", wrong),
				ExpectError: regexp.MustCompile(`(?s)Wrong instance password.*Nothing was changed`),
			},
			{
				PreConfig: func() { mustDo(t, writeAndRead(clusterTenant(i.db, i.user, i.password))) },
				Config:    clusterConfig("", i),
				Check:     resource.TestCheckResourceAttr(i.address(), "db_password", i.password),
			},
		},
	})
}
