package provider

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

var (
	_ resource.Resource                = (*instanceResource)(nil)
	_ resource.ResourceWithConfigure   = (*instanceResource)(nil)
	_ resource.ResourceWithImportState = (*instanceResource)(nil)
	_ resource.ResourceWithModifyPlan  = (*instanceResource)(nil)
)

// Default timeouts: a docker create pulls an image and waits for initdb; a
// pg_cluster create takes well under a second.
const (
	defaultCreateTimeout = 10 * time.Minute
	defaultUpdateTimeout = 2 * time.Minute
	defaultDeleteTimeout = 5 * time.Minute
	readTimeout          = 2 * time.Minute
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
	ForceDestroy  types.Bool     `tfsdk:"force_destroy"`
	Image         types.String   `tfsdk:"image"`
	Backend       types.String   `tfsdk:"backend"`
	Host          types.String   `tfsdk:"host"`
	Port          types.Int64    `tfsdk:"port"`
	ContainerID   types.String   `tfsdk:"container_id"`
	Status        types.String   `tfsdk:"status"`
	CreatedAt     types.String   `tfsdk:"created_at"`
	ConnectionURI types.String   `tfsdk:"connection_uri"`
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
					"plain text (a SCRAM-SHA-256 verifier is). Changing it rotates the password in place.",
				Required:   true,
				Sensitive:  true,
				Validators: passwordValidators(),
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
				MarkdownDescription: "The backend that holds the instance: `docker` or `pg_cluster`.",
				Computed:            true,
				PlanModifiers:       keep,
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
				MarkdownDescription: "Docker container id; null on `pg_cluster`.",
				Computed:            true,
				PlanModifiers:       keep,
			},
			"status": schema.StringAttribute{
				MarkdownDescription: "State of the instance as last read: the container's state on `docker` (`running`, " +
					"`exited`, ...), `ready` on `pg_cluster`.",
				Computed: true,
			},
			"created_at": schema.StringAttribute{
				MarkdownDescription: "When the instance was created, RFC 3339 in UTC.",
				Computed:            true,
				PlanModifiers:       keep,
			},
			"connection_uri": schema.StringAttribute{
				MarkdownDescription: "`postgres://user:password@host:port/db_name`, every part escaped.",
				Computed:            true,
				Sensitive:           true,
				PlanModifiers:       keep,
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Update: true, Delete: true}),
		},
	}
}

func (r *instanceResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

// clusterServer is the pg_cluster server name when instances are made on a
// cluster; "" otherwise.
func (r *instanceResource) clusterServer() string {
	if r.client == nil || r.client.kind != backend.KindPGCluster {
		return ""
	}
	return r.client.clusterServer
}

// usernameChangeReplaces: with a pg_cluster server, "user" and
// "user@server" name the same role, so switching between them is no reason
// to replace the instance (an import reads back "user@server").
func (r *instanceResource) usernameChangeReplaces(_ context.Context, req planmodifier.StringRequest, resp *stringplanmodifier.RequiresReplaceIfFuncResponse) {
	server := r.clusterServer()
	if server == "" {
		resp.RequiresReplace = true
		return
	}
	oldRole, err1 := pgcluster.RoleName(req.StateValue.ValueString(), server)
	newRole, err2 := pgcluster.RoleName(req.PlanValue.ValueString(), server)
	resp.RequiresReplace = err1 != nil || err2 != nil || oldRole != newRole
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
	plan.Backend = types.StringValue(r.client.kind)
	if r.client.kind == backend.KindPGCluster {
		if !config.Image.IsNull() {
			resp.Diagnostics.AddAttributeError(path.Root("image"), "image is for the docker backend",
				"The provider creates instances on the pg_cluster backend, which has no images. Remove image, or set "+
					"the provider's backend to docker.")
		}
		plan.Image = types.StringNull()
		plan.ContainerID = types.StringNull()
		if !plan.DBUsername.IsUnknown() {
			if _, err := pgcluster.RoleName(plan.DBUsername.ValueString(), r.client.clusterServer); err != nil {
				resp.Diagnostics.AddAttributeError(path.Root("db_username"), "Invalid user name for this cluster",
					fmt.Sprintf("%s. postgraas_server created such roles and could never drop them again. Use a plain "+
						"user name, or set the provider's pg_cluster.server for Azure-style user@server logins.", err))
			}
		}
	}
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

// modifyExistingPlan marks connection_uri unknown when db_password changes.
func (r *instanceResource) modifyExistingPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	var planned, current types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("db_password"), &planned)...)
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("db_password"), &current)...)
	if resp.Diagnostics.HasError() || planned.Equal(current) {
		return
	}
	resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("connection_uri"), types.StringUnknown())...)
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
	rec, err := r.create(ctx, plan)
	if err != nil {
		addError(&resp.Diagnostics, "create", name, err, timeout)
		return
	}
	r.fromRecord(&plan, rec)
	plan.Status = types.StringValue(statusAfterCreate(rec.Backend))
	tflog.Info(ctx, "created instance", map[string]any{"name": name, "id": rec.ID, "backend": rec.Backend})
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// create reserves the name in the meta DB, makes the backend objects and
// completes the row, undoing earlier steps when a later one fails, so no
// row, role, database or container is left behind (postgraas_server bug 2).
func (r *instanceResource) create(ctx context.Context, plan instanceResourceModel) (metadb.Record, error) {
	c := r.client
	want := metadb.Record{
		Name:     plan.Name.ValueString(),
		DBName:   plan.DBName.ValueString(),
		Username: plan.DBUsername.ValueString(),
		Backend:  c.kind,
		Image:    plan.Image.ValueString(),
	}
	id, err := c.store.Reserve(ctx, want)
	var taken *metadb.NameTakenError
	if errors.As(err, &taken) && r.reclaimStale(ctx, taken.Existing) {
		id, err = c.store.Reserve(ctx, want)
	}
	if err != nil {
		return metadb.Record{}, err
	}
	// Cleanup must run even when ctx is what failed (a timeout).
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	}
	created, err := c.backend.Create(ctx, backendSpec(id, plan))
	if err != nil {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if derr := c.store.Delete(cctx, id); derr != nil {
			err = fmt.Errorf("%w; removing the meta DB row %d also failed: %v", err, id, derr)
		}
		return metadb.Record{}, err
	}
	rec, err := c.store.Complete(ctx, id, created.Host, created.Port, created.Username, created.ContainerID, created.Image)
	if err != nil {
		cctx, cancel := cleanupCtx()
		defer cancel()
		inst := backend.Instance{ID: id, Name: want.Name, DBName: want.DBName, Username: created.Username,
			Host: created.Host, Port: created.Port, ContainerID: created.ContainerID}
		if perr := c.backend.Purge(cctx, inst); perr != nil {
			return metadb.Record{}, fmt.Errorf("%w; removing the new instance also failed: %v", err, perr)
		}
		if derr := c.store.Delete(cctx, id); derr != nil {
			return metadb.Record{}, fmt.Errorf("%w; removing the meta DB row %d also failed: %v", err, id, derr)
		}
		return metadb.Record{}, err
	}
	return rec, nil
}

func backendSpec(id int64, plan instanceResourceModel) backend.Spec {
	return backend.Spec{
		InstanceID: id,
		Name:       plan.Name.ValueString(),
		DBName:     plan.DBName.ValueString(),
		Username:   plan.DBUsername.ValueString(),
		Password:   plan.DBPassword.ValueString(),
		Image:      plan.Image.ValueString(),
	}
}

// reclaimStale frees a name held by a row whose backend objects were removed
// out-of-band, wholly or in part, so the apply after such a removal can
// recreate the instance without anyone editing the meta DB (postgraas_server
// bug 4). Only completed rows of this backend qualify: their objects were
// made by this provider, so purging what is left of them drops nothing
// anyone else made. It reports whether the name is free now.
func (r *instanceResource) reclaimStale(ctx context.Context, existing metadb.Record) bool {
	c := r.client
	if existing.ID == 0 || existing.State != metadb.StateReady || existing.Backend != c.kind {
		return false
	}
	inst := instanceOf(existing)
	st, err := c.backend.Inspect(ctx, inst)
	if err != nil || st.Exists {
		return false
	}
	tflog.Info(ctx, "reclaiming the name of an instance removed outside Terraform", map[string]any{"name": existing.Name, "id": existing.ID})
	if err := c.backend.Purge(ctx, inst); err != nil {
		return false
	}
	return c.store.Delete(ctx, existing.ID) == nil
}

// fromRecord fills the attributes kept in the meta DB row; status comes
// from the backend and is the caller's.
func (r *instanceResource) fromRecord(m *instanceResourceModel, rec metadb.Record) {
	m.ID = types.StringValue(formatID(rec.ID))
	m.Name = types.StringValue(rec.Name)
	m.DBName = types.StringValue(rec.DBName)
	m.Backend = types.StringValue(rec.Backend)
	m.Host = types.StringValue(rec.Host)
	m.Port = types.Int64Value(int64(rec.Port))
	m.ContainerID = nullIfEmpty(rec.ContainerID)
	m.Image = nullIfEmpty(rec.Image)
	m.CreatedAt = types.StringValue(rec.CreatedAt.UTC().Format(time.RFC3339))
	if m.ForceDestroy.IsNull() || m.ForceDestroy.IsUnknown() {
		m.ForceDestroy = types.BoolValue(false)
	}
	// Keep the configured spelling when it names the same role as the stored
	// login ("user" vs "user@server"); take the stored one after an import.
	if m.DBUsername.IsNull() || m.DBUsername.IsUnknown() || !r.sameLogin(m.DBUsername.ValueString(), rec.Username) {
		m.DBUsername = types.StringValue(rec.Username)
	}
	if m.DBPassword.IsNull() || m.DBPassword.IsUnknown() {
		m.ConnectionURI = types.StringNull()
	} else {
		m.ConnectionURI = types.StringValue(connectionURI(rec.Username, m.DBPassword.ValueString(), rec.Host, rec.Port, rec.DBName))
	}
}

// statusAfterCreate is what Inspect reports for an instance just made ready.
func statusAfterCreate(kind string) string {
	if kind == backend.KindDocker {
		return "running"
	}
	return "ready"
}

func (r *instanceResource) sameLogin(configured, stored string) bool {
	if configured == stored {
		return true
	}
	server := r.clusterServer()
	if server == "" {
		return false
	}
	a, err1 := pgcluster.RoleName(configured, server)
	b, err2 := pgcluster.RoleName(stored, server)
	return err1 == nil && err2 == nil && a == b
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
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	rec, err := r.client.store.Lookup(ctx, state.ID.ValueString())
	if errors.Is(err, metadb.ErrNotFound) {
		tflog.Warn(ctx, "instance no longer in the meta DB; removing it from state", map[string]any{"id": state.ID.ValueString()})
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addError(&resp.Diagnostics, "read", state.Name.ValueString(), err, readTimeout)
		return
	}
	state.Status = types.StringNull()
	if rec.Backend == r.client.kind {
		st, err := r.client.backend.Inspect(ctx, instanceOf(rec))
		if err != nil {
			addError(&resp.Diagnostics, "read", rec.Name, err, readTimeout)
			return
		}
		if !st.Exists {
			resp.Diagnostics.AddWarning("Instance removed outside Terraform",
				fmt.Sprintf("The %s objects of instance %q (id %d) are gone, wholly or in part, though the meta DB still "+
					"records it. It is removed from the state; the next apply creates it anew and reclaims the name.",
					rec.Backend, rec.Name, rec.ID))
			resp.State.RemoveResource(ctx)
			return
		}
		state.Status = types.StringValue(st.State)
		if st.Port != 0 && st.Port != rec.Port {
			// Keep the shared record right for everyone, not just this state.
			if err := r.client.store.SetPort(ctx, rec.ID, st.Port); err != nil {
				addError(&resp.Diagnostics, "read", rec.Name, err, readTimeout)
				return
			}
			rec.Port = st.Port
		}
	}
	r.fromRecord(&state, rec)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
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

	rec, err := r.client.store.Lookup(ctx, state.ID.ValueString())
	if err != nil {
		addError(&resp.Diagnostics, "update", state.Name.ValueString(), err, timeout)
		return
	}
	if !plan.DBPassword.Equal(state.DBPassword) {
		old := state.DBPassword.ValueString()
		if state.DBPassword.IsNull() {
			// After an import the state has no password and the
			// configuration's must be the instance's current one: a docker
			// instance can only be logged into with it.
			old = plan.DBPassword.ValueString()
		}
		err := r.client.backend.RotatePassword(ctx, instanceOf(rec), old, plan.DBPassword.ValueString())
		if err != nil {
			addError(&resp.Diagnostics, "change the password of", rec.Name, err, timeout)
			return
		}
		tflog.Info(ctx, "rotated instance password", map[string]any{"name": rec.Name, "id": rec.ID})
	}
	plan.Status = state.Status
	r.fromRecord(&plan, rec)
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

	rec, err := r.client.store.Lookup(ctx, state.ID.ValueString())
	if errors.Is(err, metadb.ErrNotFound) {
		return
	}
	if err != nil {
		addError(&resp.Diagnostics, "destroy", state.Name.ValueString(), err, timeout)
		return
	}
	if rec.Backend != r.client.kind {
		resp.Diagnostics.AddError("Instance is on another backend",
			fmt.Sprintf("Instance %q is on the %s backend but the provider is configured for %s. Configure the provider "+
				"with backend = %q to destroy it.", rec.Name, rec.Backend, r.client.kind, rec.Backend))
		return
	}
	// Backend objects first, the row last: a destroy interrupted in between
	// leaves a row whose retry finishes the job.
	if err := r.client.backend.Delete(ctx, instanceOf(rec), state.DBPassword.ValueString(), state.ForceDestroy.ValueBool()); err != nil {
		addError(&resp.Diagnostics, "destroy", rec.Name, err, timeout)
		return
	}
	if err := r.client.store.Delete(ctx, rec.ID); err != nil {
		addError(&resp.Diagnostics, "destroy", rec.Name, err, timeout)
		return
	}
	tflog.Info(ctx, "destroyed instance", map[string]any{"name": rec.Name, "id": rec.ID})
}

// ImportState takes a meta DB id or an instance name.
func (r *instanceResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	rec, err := r.client.store.Lookup(ctx, req.ID)
	if errors.Is(err, metadb.ErrNotFound) {
		resp.Diagnostics.AddError("No such instance",
			fmt.Sprintf("The meta DB records no instance with id or name %q. List them with the postgraas_instances data source.", req.ID))
		return
	}
	if err != nil {
		addError(&resp.Diagnostics, "import", req.ID, err, readTimeout)
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), formatID(rec.ID))...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("force_destroy"), false)...)
}
