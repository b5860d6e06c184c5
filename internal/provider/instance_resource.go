package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/resourcevalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

var (
	_ resource.Resource                = (*instanceResource)(nil)
	_ resource.ResourceWithConfigure   = (*instanceResource)(nil)
	_ resource.ResourceWithImportState = (*instanceResource)(nil)
	_ resource.ResourceWithModifyPlan  = (*instanceResource)(nil)

	_ resource.ResourceWithConfigValidators = (*instanceResource)(nil)
)

// Default timeouts: a docker create pulls an image and waits for initdb; a
// pg_cluster create takes well under a second.
const (
	defaultCreateTimeout = 10 * time.Minute
	defaultUpdateTimeout = 2 * time.Minute
	defaultDeleteTimeout = 5 * time.Minute
	defaultReadTimeout   = 2 * time.Minute
	// importTimeout bounds an import, which has no timeouts block.
	importTimeout = 2 * time.Minute
)

// NewInstanceResource is the postgraas_instance resource.
func NewInstanceResource() resource.Resource { return &instanceResource{} }

type instanceResource struct {
	client *client
}

type instanceResourceModel struct {
	ID            types.String   `tfsdk:"id"`
	Name          types.String   `tfsdk:"name"`
	DBName        types.String   `tfsdk:"db_name"`
	DBUsername    types.String   `tfsdk:"db_username"`
	DBPassword    types.String   `tfsdk:"db_password"`
	DBPasswordWO  types.String   `tfsdk:"db_password_wo"`
	WOVersion     types.Int64    `tfsdk:"db_password_wo_version"`
	ForceDestroy  types.Bool     `tfsdk:"force_destroy"`
	Image         types.String   `tfsdk:"image"`
	Backend       types.String   `tfsdk:"backend"`
	Host          types.String   `tfsdk:"host"`
	Port          types.Int64    `tfsdk:"port"`
	ContainerID   types.String   `tfsdk:"container_id"`
	Status        types.String   `tfsdk:"status"`
	CreatedAt     types.String   `tfsdk:"created_at"`
	ConnectionURI types.String   `tfsdk:"connection_uri"`
	SSLMode       types.String   `tfsdk:"sslmode"`
	Template      types.String   `tfsdk:"template_instance"`
	TemplateWait  types.String   `tfsdk:"template_wait"`
	Labels        types.Map      `tfsdk:"labels"`
	ExpiresAfter  types.String   `tfsdk:"expires_after"`
	ExpiresAt     types.String   `tfsdk:"expires_at"`
	Timeouts      timeouts.Value `tfsdk:"timeouts"`
}

func (r *instanceResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_instance"
}

func (r *instanceResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		MarkdownDescription: "A PostgreSQL database for one user, recorded in the meta DB: a whole PostgreSQL server in " +
			"its own container on the `docker` backend, or a role and a database on the shared cluster on the " +
			"`pg_cluster` backend. `terraform apply` returns when the database accepts logins; destroy first checks " +
			"`db_password` as a login would, as postgraas_server's delete did, and refuses while other sessions are " +
			"connected unless `force_destroy` is set.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				MarkdownDescription: "The meta DB row id (postgraas_server's `postgraas_instance_id`).",
				Computed:            true,
				PlanModifiers:       keep,
			},
			"name": schema.StringAttribute{
				MarkdownDescription: "Instance name (`postgraas_instance_name`), unique in the meta DB; also the container " +
					"name on the docker backend. 1 to 63 letters, digits, `_`, `.` and `-`, starting with a letter or digit. " +
					"Changing it replaces the instance.",
				Required:      true,
				Validators:    instanceNameValidators(),
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"db_name": schema.StringAttribute{
				MarkdownDescription: "Name of the database to create: 1 to 63 bytes, no control characters. Changing it replaces the instance.",
				Required:            true,
				Validators:          identifierValidators(),
				PlanModifiers:       []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"db_username": schema.StringAttribute{
				MarkdownDescription: "Login role to create, owner of the database: 1 to 63 bytes, no control characters, not " +
					"`postgres` or `postgres@...`, not starting with `pg_`, not `public`, `none`, `current_user`, " +
					"`session_user` or `current_role`. On a `pg_cluster` with `server` set it may be `user` or " +
					"`user@server`; without `server` it may not contain `@`. Changing it replaces the instance.",
				Required:   true,
				Validators: usernameValidators(),
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIf(r.usernameChangeReplaces,
					"Changing the role replaces the instance.", "Changing the role replaces the instance.")},
			},
			"db_password": schema.StringAttribute{
				MarkdownDescription: "Password of `db_username`. Never stored in the meta DB and never sent to a server in " +
					"plain text (a SCRAM-SHA-256 verifier is), but kept in Terraform state, as is `connection_uri`. " +
					"Changing it rotates the password in place, which needs the current one (the one in state, or the " +
					"instance must already accept the new one). Exactly one of `db_password` and `db_password_wo` is required.",
				Optional:   true,
				Sensitive:  true,
				Validators: passwordValidators(),
			},
			"db_password_wo": schema.StringAttribute{
				MarkdownDescription: "Write-only password of `db_username` (Terraform 1.11 or later): used at create and " +
					"rotation, never stored in state or plan; `connection_uri` then carries no password. The provider keeps " +
					"only the password's SCRAM verifier (which does not let anyone log in) in private state, so that " +
					"destroy and rotation can still prove the instance's password is the one this configuration set last. " +
					"Change `db_password_wo_version` to rotate it.",
				Optional:   true,
				Sensitive:  true,
				WriteOnly:  true,
				Validators: passwordValidators(),
			},
			"db_password_wo_version": schema.Int64Attribute{
				MarkdownDescription: "Version of `db_password_wo`; required with it. Terraform cannot see a write-only value " +
					"change, so changing this number is what rotates the password in place.",
				Optional: true,
			},
			"force_destroy": schema.BoolAttribute{
				MarkdownDescription: "Destroy even when other sessions are connected, terminating them. Default `false`: " +
					"destroy then fails and says how many sessions there are.",
				Optional: true,
				Computed: true,
				Default:  booldefault.StaticBool(false),
			},
			"image": schema.StringAttribute{
				MarkdownDescription: "Docker backend only: the image to run, overriding the provider's `docker.image`. Any image " +
					"honouring the official `postgres` image's environment contract. Changing it replaces the instance.",
				Optional: true,
				Computed: true,
				PlanModifiers: []planmodifier.String{
					stringplanmodifier.UseStateForUnknown(),
					stringplanmodifier.RequiresReplaceIfConfigured(),
				},
				Validators: identifierValidators()[1:],
			},
			"backend": schema.StringAttribute{
				MarkdownDescription: "The backend that holds the instance: `docker`, `pg_cluster` or `kubernetes`. Defaults to the " +
					"provider's `backend`; an existing instance stays where it is when the provider's default changes. " +
					"Setting it to another backend replaces the instance.",
				Optional:   true,
				Computed:   true,
				Validators: []validator.String{stringvalidator.OneOf(backendKinds()...)},
				PlanModifiers: []planmodifier.String{
					stringplanmodifier.UseStateForUnknown(),
					stringplanmodifier.RequiresReplaceIfConfigured(),
				},
			},
			"template_instance": schema.StringAttribute{
				MarkdownDescription: "`pg_cluster` only: the `id` of another `pg_cluster` instance (e.g. " +
					"`postgraas_instance.golden.id`) whose database this one starts as a copy of (`CREATE DATABASE ... " +
					"TEMPLATE`), instead of an empty one. The template is proven to be that instance's own right before it " +
					"is copied; in the copy, everything the template's role owned goes to this instance's `db_username` and " +
					"the template's role keeps no privilege, so neither tenant can reach the other's database. PostgreSQL " +
					"copies a database only while nobody else is connected to it: with other sessions on the template the " +
					"create fails (after the server's own 5 s wait) and names the template and the session count, unless " +
					"`template_wait` gives them time to end. Changing it replaces the instance.",
				Optional:      true,
				Validators:    []validator.String{stringvalidator.LengthAtLeast(1)},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"template_wait": schema.StringAttribute{
				MarkdownDescription: "With `template_instance`: how long the create keeps trying while other sessions are " +
					"connected to the template, as a duration such as `30s` or `5m` (each try itself waits up to 5 s), " +
					"within `timeouts.create`. Default: no wait, the create fails at the first refusal. Only read at create.",
				Optional:   true,
				Validators: []validator.String{durationBetween{0, time.Hour}},
			},
			"labels": schema.MapAttribute{
				MarkdownDescription: labelsDescription + " Recorded in the meta DB and shown by both data sources; " +
					"`postgraas_instances` filters by them. Changing them updates the meta DB row in place.",
				ElementType: types.StringType,
				Optional:    true,
				Validators:  labelsValidators(),
			},
			"expires_after": schema.StringAttribute{
				MarkdownDescription: "How long after its creation the instance expires, as a duration such as `2h`, " +
					"`90m` or `30s` (from 1s): `expires_at` becomes `created_at` plus this. An expired instance is " +
					"removed, its sessions terminated and no password asked, by the next provider run (plan, apply or " +
					"the `reap` command) that uses the same meta DB, whoever runs it; this configuration then sees it " +
					"as removed outside Terraform and creates it anew on apply. For CI: what a killed pipeline left is " +
					"cleaned up without it. Changing it moves the expiry in place (from `created_at`). Conflicts with `expires_at`.",
				Optional: true,
				Validators: []validator.String{
					durationBetween{time.Second, maxExpiresAfter},
					stringvalidator.ConflictsWith(path.MatchRoot("expires_at")),
				},
			},
			"expires_at": schema.StringAttribute{
				MarkdownDescription: "When the instance expires, RFC 3339 (`2030-01-31T18:00:00Z`); see `expires_after` " +
					"for what happens then. Set it, or let `expires_after` compute it; null means the instance never " +
					"expires. Changing it updates the meta DB row in place. Not for instances recorded by " +
					"postgraas_server or older providers (no ownership proof).",
				Optional:      true,
				Computed:      true,
				Validators:    []validator.String{rfc3339Validator{}},
				PlanModifiers: keep,
			},
			"host": schema.StringAttribute{
				MarkdownDescription: "Host to connect to.",
				Computed:            true,
				PlanModifiers:       keep,
			},
			"port": schema.Int64Attribute{
				MarkdownDescription: "Port to connect to.",
				Computed:            true,
				PlanModifiers:       []planmodifier.Int64{int64planmodifier.UseStateForUnknown()},
			},
			"container_id": schema.StringAttribute{
				MarkdownDescription: "Docker container id; on `kubernetes` the UID of the instance's StatefulSet; null on `pg_cluster`.",
				Computed:            true,
				PlanModifiers:       keep,
			},
			"status": schema.StringAttribute{
				MarkdownDescription: "State of the instance as last read: the container's state on `docker` (`running`, " +
					"`exited`, ...), `ready` on `pg_cluster`, the pod's on `kubernetes` (`running`, `starting`, `crashloopbackoff`, ...); `unrecorded` when its meta DB row was deleted outside " +
					"Terraform while its objects, still carrying its ownership proof, remain (the next apply records it again).",
				Computed: true,
			},
			"created_at": schema.StringAttribute{
				MarkdownDescription: "When the instance was created, RFC 3339 in UTC.",
				Computed:            true,
				PlanModifiers:       keep,
			},
			"sslmode": schema.StringAttribute{
				MarkdownDescription: sslmodeDescription,
				Computed:            true,
				PlanModifiers:       keep,
			},
			"connection_uri": schema.StringAttribute{
				MarkdownDescription: "`postgres://user:password@host:port/db_name?sslmode=...`, every part escaped (no " +
					"password with `db_password_wo`; no `sslmode` when it is null).",
				Computed:      true,
				Sensitive:     true,
				PlanModifiers: keep,
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{
				Create: true, Read: true, Update: true, Delete: true,
				CreateDescription: timeoutDescription("a create, from reserving the name to the first login "+
					"(waiting for another run's lease included)", defaultCreateTimeout),
				ReadDescription:   timeoutDescription("each refresh", defaultReadTimeout),
				UpdateDescription: timeoutDescription("a password rotation or a change of labels or expiry", defaultUpdateTimeout),
				DeleteDescription: timeoutDescription("a destroy (password check, removal, meta DB row)", defaultDeleteTimeout),
			}),
		},
	}
}

func (r *instanceResource) ConfigValidators(context.Context) []resource.ConfigValidator {
	return []resource.ConfigValidator{
		resourcevalidator.ExactlyOneOf(path.MatchRoot("db_password"), path.MatchRoot("db_password_wo")),
		resourcevalidator.RequiredTogether(path.MatchRoot("db_password_wo"), path.MatchRoot("db_password_wo_version")),
	}
}

func (r *instanceResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

// statusUnrecorded marks an instance whose row was deleted out of band but
// whose objects still carry its proof: planned as an update, which writes
// the row back.
const statusUnrecorded = "unrecorded"

// privateTokenKey holds the row's secret token in the resource's private
// state, so the instance can be proven and re-recorded even after its row
// was deleted out of band.
const privateTokenKey = "owner_token"

// backendOf is the backend that holds (or will hold) an instance: the
// configured or recorded kind, else the provider's default.
func (r *instanceResource) backendOf(kind types.String) backend.Backend {
	if r.client == nil || kind.IsUnknown() {
		return nil
	}
	b, err := r.client.svc.Backend(kind.ValueString())
	if err != nil {
		return nil
	}
	return b
}

// usernameChangeReplaces: with a pg_cluster server, "user" and
// "user@server" name the same role, so switching between them is no reason
// to replace the instance (an import reads back "user@server").
func (r *instanceResource) usernameChangeReplaces(ctx context.Context, req planmodifier.StringRequest, resp *stringplanmodifier.RequiresReplaceIfFuncResponse) {
	var kind types.String
	req.State.GetAttribute(ctx, path.Root("backend"), &kind)
	b := r.backendOf(kind)
	resp.RequiresReplace = b == nil || !b.SameLogin(req.StateValue.ValueString(), req.PlanValue.ValueString())
}

func (r *instanceResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() || r.client == nil {
		return
	}
	if !req.State.Raw.IsNull() {
		// An existing instance: only a new password changes what is
		// planned. Two attributes are read rather than the whole model, so
		// the refresh of a large configuration does not pay for converting
		// every resource three times over (plan, config, state).
		r.modifyExistingPlan(ctx, req, resp)
		return
	}
	var plan, config instanceResourceModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.Config.Get(ctx, &config)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if plan.Backend.IsUnknown() && config.Backend.IsNull() {
		plan.Backend = types.StringValue(r.client.svc.DefaultKind())
	}
	if config.ExpiresAt.IsNull() && config.ExpiresAfter.IsNull() {
		plan.ExpiresAt = types.StringNull() // never expires
	}
	warnIfExpired(plan.ExpiresAt, &resp.Diagnostics)
	b := r.backendOf(plan.Backend)
	if b == nil {
		resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
		return
	}
	req2 := instance.Request{Backend: b.Kind(), Image: config.Image.ValueString()}
	if !config.Template.IsNull() {
		// The template's id may be unknown until its own create: what is
		// checked here is only that this backend can copy at all.
		req2.Template = "?"
	}
	if !plan.Name.IsUnknown() {
		req2.Name = plan.Name.ValueString()
	}
	if !plan.DBUsername.IsUnknown() {
		req2.Username = plan.DBUsername.ValueString()
	}
	if !plan.DBName.IsUnknown() {
		req2.DBName = plan.DBName.ValueString()
	}
	var spec *backend.SpecError
	if err := r.client.svc.CheckRequest(req2); errors.As(err, &spec) {
		resp.Diagnostics.AddAttributeError(path.Root(spec.Attribute), "Invalid instance settings for the "+b.Kind()+" backend",
			fmt.Sprintf("%s. Change %s, or put the instance on another backend.", spec.Err, spec.Attribute))
		return
	}
	// The configuration is sound: would the apply get in?
	if err := r.client.checkForPlan(ctx, b.Kind()); err != nil {
		addError(&resp.Diagnostics, "plan the creation of", plan.Name.ValueString(), err, opLimit{"", planCheckTimeout})
		return
	}
	if !b.TakesImage() {
		plan.Image = types.StringNull()
		plan.ContainerID = types.StringNull()
	}
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

// modifyExistingPlan marks connection_uri unknown when db_password changes,
// and plans an update for an instance whose row must be written back.
func (r *instanceResource) modifyExistingPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	planExistingExpiry(ctx, req, resp)
	var status types.String
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("status"), &status)...)
	if status.ValueString() == statusUnrecorded {
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("status"), types.StringUnknown())...)
	}
	var planned, current types.String
	var plannedVersion, currentVersion types.Int64
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("db_password"), &planned)...)
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("db_password"), &current)...)
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("db_password_wo_version"), &plannedVersion)...)
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("db_password_wo_version"), &currentVersion)...)
	if resp.Diagnostics.HasError() || (planned.Equal(current) && plannedVersion.Equal(currentVersion)) {
		return
	}
	resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("connection_uri"), types.StringUnknown())...)
}

// password is the instance password the configuration sets: db_password,
// or the write-only db_password_wo, which only the configuration carries.
func password(ctx context.Context, plan instanceResourceModel, config tfsdk.Config) (string, diag.Diagnostics) {
	if !plan.DBPassword.IsNull() {
		return plan.DBPassword.ValueString(), nil
	}
	var wo types.String
	diags := config.GetAttribute(ctx, path.Root("db_password_wo"), &wo)
	return wo.ValueString(), diags
}

func (r *instanceResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var plan instanceResourceModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, defaultCreateTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	name := plan.Name.ValueString()
	pw, diags := password(ctx, plan, req.Config)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	wait, _ := time.ParseDuration(plan.TemplateWait.ValueString()) // validated; "" is no wait
	labels, diags := labelsOf(ctx, plan.Labels)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	after, _ := time.ParseDuration(plan.ExpiresAfter.ValueString()) // validated; "" is none
	var at time.Time
	if after == 0 && !plan.ExpiresAt.IsUnknown() {
		at = parseTime(plan.ExpiresAt) // validated; null is never
	}
	rec, verifier, err := r.client.svc.Create(ctx, instance.Request{
		Name:         name,
		DBName:       plan.DBName.ValueString(),
		Username:     plan.DBUsername.ValueString(),
		Password:     pw,
		Image:        plan.Image.ValueString(),
		Backend:      plan.Backend.ValueString(),
		Template:     plan.Template.ValueString(),
		TemplateWait: wait,
		Labels:       labels,
		ExpiresAfter: after,
		ExpiresAt:    at,
	})
	if err != nil {
		addError(&resp.Diagnostics, "create", name, err, opLimit{"timeouts.create", timeout})
		return
	}
	b := r.backendOf(types.StringValue(rec.Backend))
	r.fromRecord(&plan, rec, b)
	plan.Status = types.StringValue(b.StatusAfterCreate())
	resp.Diagnostics.Append(setToken(ctx, resp.Private, rec.Token)...)
	resp.Diagnostics.Append(setPrivate(ctx, resp.Private, privatePoolClaimKey, poolClaim(rec))...)
	resp.Diagnostics.Append(setPrivate(ctx, resp.Private, privateVerifierKey, verifier)...)
	tflog.Info(ctx, "created instance", map[string]any{"name": name, "id": rec.ID, "backend": rec.Backend})
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// privateState is what both the request's and the response's private state
// offer.
type privateState interface {
	GetKey(ctx context.Context, key string) ([]byte, diag.Diagnostics)
}

type privateSetter interface {
	SetKey(ctx context.Context, key string, value []byte) diag.Diagnostics
}

// privateVerifierKey holds the SCRAM verifier the instance's password was
// stored as last: in write-only mode, the proof that the caller still holds
// the current password is that the server's verifier is this one.
const privateVerifierKey = "password_verifier"

func setToken(ctx context.Context, p privateSetter, token string) diag.Diagnostics {
	return setPrivate(ctx, p, privateTokenKey, token)
}

func getToken(ctx context.Context, p privateState) string { return getPrivate(ctx, p, privateTokenKey) }

func setPrivate(ctx context.Context, p privateSetter, key, value string) diag.Diagnostics {
	if value == "" {
		return nil
	}
	b, _ := json.Marshal(value)
	return p.SetKey(ctx, key, b)
}

func getPrivate(ctx context.Context, p privateState, key string) string {
	b, diags := p.GetKey(ctx, key)
	var v string
	if diags.HasError() || len(b) == 0 || json.Unmarshal(b, &v) != nil {
		return ""
	}
	return v
}

// fromRecord fills the attributes kept in the meta DB row; status comes
// from the backend and is the caller's.
func (r *instanceResource) fromRecord(m *instanceResourceModel, rec metadb.Record, b backend.Backend) {
	m.ID = types.StringValue(formatID(rec.ID))
	m.Name = types.StringValue(rec.Name)
	m.DBName = types.StringValue(rec.DBName)
	m.Backend = types.StringValue(rec.Backend)
	m.Host = types.StringValue(rec.Host)
	m.Port = types.Int64Value(int64(rec.Port))
	m.ContainerID = nullIfEmpty(rec.ContainerID)
	m.Image = nullIfEmpty(rec.Image)
	m.CreatedAt = types.StringValue(rec.CreatedAt.UTC().Format(time.RFC3339))
	m.SSLMode = nullIfEmpty(rec.SSLMode)
	m.Labels = labelsValue(rec.Labels)
	m.ExpiresAt = expiresValue(m.ExpiresAt, rec.ExpiresAt)
	if m.ForceDestroy.IsNull() || m.ForceDestroy.IsUnknown() {
		m.ForceDestroy = types.BoolValue(false)
	}
	// Keep the configured spelling when it names the same role as the stored
	// login ("user" vs "user@server"); take the stored one after an import.
	if m.DBUsername.IsNull() || m.DBUsername.IsUnknown() || b == nil || !b.SameLogin(m.DBUsername.ValueString(), rec.Username) {
		m.DBUsername = types.StringValue(rec.Username)
	}
	switch {
	case !m.WOVersion.IsNull() && !m.WOVersion.IsUnknown():
		// Write-only mode: the URI carries no password.
		m.ConnectionURI = types.StringValue(connectionURI(rec.Username, "", rec.Host, rec.Port, rec.DBName, rec.SSLMode))
	case m.DBPassword.IsNull() || m.DBPassword.IsUnknown():
		m.ConnectionURI = types.StringNull()
	default:
		m.ConnectionURI = types.StringValue(connectionURI(rec.Username, m.DBPassword.ValueString(), rec.Host, rec.Port, rec.DBName, rec.SSLMode))
	}
}

// privatePoolClaimKey holds, for a docker instance whose container was
// claimed from a warm pool, the claim ("<member id>:<pool proof>"): with
// the token, what proves that container the instance's when its row must
// be written back (DESIGN.md, "Warm pools").
const privatePoolClaimKey = "pool_claim"

// poolClaim is rec's claim as kept in private state; "" for none.
func poolClaim(rec metadb.Record) string {
	if rec.PoolMember == 0 || rec.PoolProof == "" {
		return ""
	}
	return strconv.FormatInt(rec.PoolMember, 10) + ":" + rec.PoolProof
}

// recordOf rebuilds the row of an instance from its state and the token
// and pool claim in private state, to write it back after an out-of-band
// delete.
func recordOf(m instanceResourceModel, token, claim string) (metadb.Record, bool) {
	id, err := strconv.ParseInt(m.ID.ValueString(), 10, 64)
	created, terr := time.Parse(time.RFC3339, m.CreatedAt.ValueString())
	if err != nil || terr != nil || token == "" {
		return metadb.Record{}, false
	}
	var member int64
	var proof string
	if claim != "" {
		ms, p, ok := strings.Cut(claim, ":")
		if member, err = strconv.ParseInt(ms, 10, 64); !ok || err != nil || p == "" {
			return metadb.Record{}, false
		}
		proof = p
	}
	return metadb.Record{
		PoolMember: member, PoolProof: proof,
		ID: id, Name: m.Name.ValueString(), CreatedAt: created.UTC(), DBName: m.DBName.ValueString(),
		Username: m.DBUsername.ValueString(), Host: m.Host.ValueString(), Port: int(m.Port.ValueInt64()),
		ContainerID: m.ContainerID.ValueString(), Backend: m.Backend.ValueString(), State: metadb.StateReady,
		Image: m.Image.ValueString(), Token: token, SSLMode: m.SSLMode.ValueString(),
		Labels: labelsFromState(m.Labels), ExpiresAt: parseTime(m.ExpiresAt),
	}, true
}

func nullIfEmpty(s string) types.String {
	if s == "" {
		return types.StringNull()
	}
	return types.StringValue(s)
}

func (r *instanceResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var state instanceResourceModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Read(ctx, defaultReadTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	limit := opLimit{"timeouts.read", timeout}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rec, st, err := r.client.svc.Refresh(ctx, state.ID.ValueString())
	if errors.Is(err, metadb.ErrNotFound) {
		r.readUnrecorded(ctx, state, getToken(ctx, req.Private), getPrivate(ctx, req.Private, privatePoolClaimKey), limit, resp)
		return
	}
	if err != nil {
		addError(&resp.Diagnostics, "read", state.Name.ValueString(), err, limit)
		return
	}
	if rec.State == metadb.StateCreating {
		resp.Diagnostics.AddWarning("Instance being re-created by another run",
			fmt.Sprintf("Instance %q (id %d) is being created anew by another run, which found its objects gone. It is "+
				"removed from this state.", rec.Name, rec.ID))
		resp.State.RemoveResource(ctx)
		return
	}
	if !st.Exists {
		detail := fmt.Sprintf("The %s objects of instance %q (id %d) are gone, wholly or in part, though the meta DB still "+
			"records it. It is removed from the state; the next apply creates it anew and reclaims the name.",
			rec.Backend, rec.Name, rec.ID)
		if len(st.Foreign) > 0 {
			detail += fmt.Sprintf(" Objects with its names exist but do not carry its ownership proof and are never "+
				"touched: %s; the next apply will report them as a conflict until their owner removes them.",
				strings.Join(st.Foreign, ", "))
		}
		resp.Diagnostics.AddWarning("Instance removed outside Terraform", detail)
		resp.State.RemoveResource(ctx)
		return
	}
	state.Status = types.StringValue(st.State)
	r.fromRecord(&state, rec, r.backendOf(types.StringValue(rec.Backend)))
	if rec.Token != "" && getToken(ctx, req.Private) != rec.Token {
		resp.Diagnostics.Append(setToken(ctx, resp.Private, rec.Token)...)
	}
	if c := poolClaim(rec); c != "" && getPrivate(ctx, req.Private, privatePoolClaimKey) != c {
		resp.Diagnostics.Append(setPrivate(ctx, resp.Private, privatePoolClaimKey, c)...)
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

// readUnrecorded handles an instance whose meta DB row is gone. Objects that
// still carry its proof keep it in state, marked for the next apply to
// write the row back; anything else drops it from state (nothing of it is
// provably left to destroy).
func (r *instanceResource) readUnrecorded(ctx context.Context, state instanceResourceModel, token, claim string, limit opLimit, resp *resource.ReadResponse) {
	rec, ok := recordOf(state, token, claim)
	if ok {
		st, err := r.client.svc.Inspect(ctx, rec)
		if err != nil {
			addError(&resp.Diagnostics, "read", state.Name.ValueString(), err, limit)
			return
		}
		if st.Exists {
			resp.Diagnostics.AddWarning("Instance missing from the meta DB",
				fmt.Sprintf("The meta DB row of instance %q (id %d) was deleted outside Terraform, but its %s objects still "+
					"exist and carry its ownership proof. The next apply records it again under the same id.",
					rec.Name, rec.ID, rec.Backend))
			state.Status = types.StringValue(statusUnrecorded)
			resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
			return
		}
	}
	resp.Diagnostics.AddWarning("Instance missing from the meta DB",
		fmt.Sprintf("The meta DB no longer records instance %q (id %s) and none of its objects can be proven to be left. "+
			"It is removed from the state; the next apply creates it anew.", state.Name.ValueString(), state.ID.ValueString()))
	resp.State.RemoveResource(ctx)
}

func (r *instanceResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var plan, state instanceResourceModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Update(ctx, defaultUpdateTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	rec, err := r.client.svc.Store().Lookup(ctx, state.ID.ValueString())
	status := state.Status
	if errors.Is(err, metadb.ErrNotFound) && state.Status.ValueString() == statusUnrecorded {
		if old, ok := recordOf(state, getToken(ctx, req.Private), getPrivate(ctx, req.Private, privatePoolClaimKey)); ok {
			var st backend.Status
			var adopted bool
			rec, st, adopted, err = r.client.svc.Rerecord(ctx, old)
			if err == nil && !adopted {
				err = fmt.Errorf("its objects no longer carry its ownership proof; refresh and apply to create it anew")
			}
			status = types.StringValue(st.State)
			if err == nil {
				tflog.Info(ctx, "recorded instance again", map[string]any{"name": rec.Name, "id": rec.ID})
			}
		}
	}
	if err != nil {
		addError(&resp.Diagnostics, "update", state.Name.ValueString(), err, opLimit{"timeouts.update", timeout})
		return
	}
	if !plan.DBPassword.Equal(state.DBPassword) || !plan.WOVersion.Equal(state.WOVersion) {
		// Only the holder of the current password may change it: the
		// password in state, or the verifier set last (write-only mode).
		// After an import neither is known, and the instance must already
		// accept the configured password.
		current := backend.Auth{Password: state.DBPassword.ValueString(), Verifier: getPrivate(ctx, req.Private, privateVerifierKey)}
		pw, diags := password(ctx, plan, req.Config)
		resp.Diagnostics.Append(diags...)
		if resp.Diagnostics.HasError() {
			return
		}
		verifier, err := r.client.svc.Rotate(ctx, rec, current, pw)
		if err != nil {
			addError(&resp.Diagnostics, "change the password of", rec.Name, err, opLimit{"timeouts.update", timeout})
			return
		}
		resp.Diagnostics.Append(setPrivate(ctx, resp.Private, privateVerifierKey, verifier)...)
		tflog.Info(ctx, "set instance password", map[string]any{"name": rec.Name, "id": rec.ID})
	}
	labels, diags := labelsOf(ctx, plan.Labels)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	expires := parseTime(plan.ExpiresAt) // planned from expires_after, or as configured
	if plan.ExpiresAt.IsUnknown() {
		expires = rec.ExpiresAt // not planned (the provider was not configured at plan): kept
	}
	if !maps.Equal(labels, rec.Labels) || (labels == nil) != (rec.Labels == nil) || !expires.Equal(rec.ExpiresAt) {
		// The row only: no backend object changes, and the row must still
		// be the one this state made (its token) and free (no destroy or
		// reap holds it).
		rec, err = r.client.svc.SetMeta(ctx, rec, labels, expires)
		if err != nil {
			addError(&resp.Diagnostics, "change the labels or expiry of", rec.Name, err, opLimit{"timeouts.update", timeout})
			return
		}
		tflog.Info(ctx, "set instance labels and expiry", map[string]any{"name": rec.Name, "id": rec.ID})
	}
	plan.Status = status
	r.fromRecord(&plan, rec, r.backendOf(types.StringValue(rec.Backend)))
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *instanceResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var state instanceResourceModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Delete(ctx, defaultDeleteTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	auth := backend.Auth{Password: state.DBPassword.ValueString(), Verifier: getPrivate(ctx, req.Private, privateVerifierKey)}
	err := r.client.svc.Delete(ctx, state.ID.ValueString(), auth, state.ForceDestroy.ValueBool())
	if err != nil {
		addError(&resp.Diagnostics, "destroy", state.Name.ValueString(), err, opLimit{"timeouts.delete", timeout})
		return
	}
	tflog.Info(ctx, "destroyed instance", map[string]any{"name": state.Name.ValueString(), "id": state.ID.ValueString()})
}

// ImportState takes a meta DB id or an instance name.
func (r *instanceResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, importTimeout)
	defer cancel()
	rec, err := r.client.svc.ForImport(ctx, req.ID)
	if errors.Is(err, metadb.ErrNotFound) {
		resp.Diagnostics.AddError("No such instance",
			fmt.Sprintf("The meta DB records no instance with id or name %q. List them with the postgraas_instances data source.", req.ID))
		return
	}
	if err != nil {
		addError(&resp.Diagnostics, "import", req.ID, err, opLimit{"", importTimeout})
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), formatID(rec.ID))...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("force_destroy"), false)...)
}
