package provider

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

var (
	_ resource.Resource                = (*warmPoolResource)(nil)
	_ resource.ResourceWithConfigure   = (*warmPoolResource)(nil)
	_ resource.ResourceWithImportState = (*warmPoolResource)(nil)
	_ resource.ResourceWithModifyPlan  = (*warmPoolResource)(nil)
)

// A pool apply only starts containers (their initdb runs inside Docker) and
// a destroy removes them, so the defaults are short; the first start of an
// image pulls it, which create's limit covers.
const (
	defaultPoolCreateTimeout = 10 * time.Minute
	defaultPoolUpdateTimeout = 10 * time.Minute
	defaultPoolDeleteTimeout = 5 * time.Minute
	defaultPoolReadTimeout   = 2 * time.Minute
	maxPoolSize              = 100
)

// poolNameRegexp: the name is part of container names
// ("postgraas-pool-<name>-<member>"), which Docker restricts to these.
var poolNameRegexp = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// NewWarmPoolResource is the postgraas_warm_pool resource.
func NewWarmPoolResource() resource.Resource { return &warmPoolResource{} }

type warmPoolResource struct {
	client *client
}

type warmPoolResourceModel struct {
	ID       types.String   `tfsdk:"id"`
	Name     types.String   `tfsdk:"name"`
	Image    types.String   `tfsdk:"image"`
	Size     types.Int64    `tfsdk:"size"`
	Idle     types.Int64    `tfsdk:"idle"`
	Warming  types.Int64    `tfsdk:"warming"`
	Timeouts timeouts.Value `tfsdk:"timeouts"`
}

func (r *warmPoolResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_warm_pool"
}

func (r *warmPoolResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A warm pool of the `docker` backend: `size` containers of `image` whose `initdb` is done " +
			"(or running inside Docker), kept ready in the meta DB so that a docker `postgraas_instance` of the same " +
			"image claims one instead of waiting for `initdb`. The claim renames the container to the instance, makes " +
			"its bootstrap superuser and database the instance's (the password set as a SCRAM verifier over the " +
			"container's socket; no password in its configuration) and starts a replacement, whose `docker run` " +
			"returns at once: no process of the provider has to stay alive to refill the pool. An empty pool means a " +
			"normal (cold) create. Pool containers are never instances: no data source lists them. A claimed " +
			"instance is read, rotated, imported and destroyed as any other. Destroying the pool removes its idle " +
			"containers (each only when it carries its pool proof) and never a claimed one. Every pipeline sharing " +
			"the meta DB claims from every pool of an image.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				MarkdownDescription: "The pool name.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"name": schema.StringAttribute{
				MarkdownDescription: "Pool name, unique in the meta DB: 1 to 63 letters, digits, `_`, `.` and `-`, " +
					"starting with a letter or digit (its containers are named `postgraas-pool-<name>-<member>`). " +
					"Changing it replaces the pool.",
				Required: true,
				Validators: []validator.String{
					stringvalidator.LengthBetween(1, maxIdentifierBytes),
					stringvalidator.RegexMatches(poolNameRegexp,
						"must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"),
				},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"image": schema.StringAttribute{
				MarkdownDescription: "Docker image of the pool's containers; default the provider's `docker.image`. " +
					"Instances claim from it when their `image` is the same string (an instance without `image` uses " +
					"the provider's default too). Changing it replaces the pool.",
				Optional: true,
				Computed: true,
				Validators: []validator.String{
					stringvalidator.LengthBetween(1, 500),
				},
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown(), stringplanmodifier.RequiresReplace()},
			},
			"size": schema.Int64Attribute{
				MarkdownDescription: fmt.Sprintf("Number of containers to keep ready, 0 to %d. Each claim starts its "+
					"replacement; an apply also starts missing ones and, after a smaller `size`, removes the newest "+
					"idle ones. Changing it updates the pool in place. A refresh that finds the pool short (a run died between a "+
					"claim and its replacement) reads the number it has, so that the plan shows the apply that refills it.", maxPoolSize),
				Required:   true,
				Validators: []validator.Int64{int64validator.Between(0, maxPoolSize)},
			},
			"idle": schema.Int64Attribute{
				MarkdownDescription: "Containers ready to be claimed at the last refresh (their `initdb` may still be " +
					"running inside Docker; a claim waits for it).",
				Computed: true,
			},
			"warming": schema.Int64Attribute{
				MarkdownDescription: "Containers being made at the last refresh (a claim's replacement whose `docker run` " +
					"has not returned yet, or one whose maker died: the next apply of the pool finishes or drops it).",
				Computed: true,
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{
				Create: true, Read: true, Update: true, Delete: true,
				CreateDescription: timeoutDescription("a create (pulling the image, starting `size` containers)", defaultPoolCreateTimeout),
				ReadDescription:   timeoutDescription("each refresh", defaultPoolReadTimeout),
				UpdateDescription: timeoutDescription("a change of `size`", defaultPoolUpdateTimeout),
				DeleteDescription: timeoutDescription("a destroy (removing the idle containers)", defaultPoolDeleteTimeout),
			}),
		},
	}
}

func (r *warmPoolResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan resolves the default image, so that a change of the provider's
// default image later does not replace the pool, and checks at plan time
// that the meta DB and Docker answer.
func (r *warmPoolResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() || !req.State.Raw.IsNull() || r.client == nil {
		return
	}
	var plan warmPoolResourceModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	pb, err := r.client.svc.Pooled(backend.KindDocker)
	if err != nil {
		resp.Diagnostics.AddError("Warm pools need the docker backend",
			fmt.Sprintf("Cannot plan warm pool %q: %s. Configure the provider's docker block (or DOCKER_HOST).",
				plan.Name.ValueString(), err))
		return
	}
	if plan.Image.IsUnknown() {
		plan.Image = types.StringValue(pb.PoolImage(""))
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("image"), plan.Image)...)
	}
	if err := r.client.checkForPlan(ctx, backend.KindDocker); err != nil {
		poolError(&resp.Diagnostics, "plan", plan.Name.ValueString(), err, opLimit{"", planCheckTimeout})
	}
}

// ensure applies plan to the meta DB and Docker and reads the pool back.
func (r *warmPoolResource) ensure(ctx context.Context, plan *warmPoolResourceModel, action string, limit opLimit, diags *diag.Diagnostics) {
	ctx, cancel := context.WithTimeout(ctx, limit.d)
	defer cancel()
	name := plan.Name.ValueString()
	err := r.client.svc.EnsurePool(ctx, backend.KindDocker, name, plan.Image.ValueString(), int(plan.Size.ValueInt64()))
	if err != nil {
		poolError(diags, action, name, err, limit)
		return
	}
	p, err := r.client.svc.PoolStatus(ctx, name)
	if err != nil {
		poolError(diags, action, name, err, limit)
		return
	}
	fromPool(plan, p)
	tflog.Info(ctx, "warm pool applied", map[string]any{"pool": name, "size": p.Size, "idle": p.Idle, "warming": p.Warming})
}

// fromPool converts the recorded pool to the model.
func fromPool(m *warmPoolResourceModel, p metadb.PoolInfo) {
	m.ID = types.StringValue(p.Name)
	m.Name = types.StringValue(p.Name)
	m.Image = types.StringValue(p.Image)
	m.Size = types.Int64Value(int64(p.Size))
	m.Idle = types.Int64Value(int64(p.Idle))
	m.Warming = types.Int64Value(int64(p.Warming))
}

func (r *warmPoolResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	// A pool of that name recorded already (another pipeline's, or one a
	// lost state left) is taken over and set to this size and image: a
	// pool holds no data, and its idle containers serve this configuration
	// as well as theirs.
	r.apply(ctx, req.Plan, &resp.State, &resp.Diagnostics, "create", func(m warmPoolResourceModel) (time.Duration, diag.Diagnostics) {
		return m.Timeouts.Create(ctx, defaultPoolCreateTimeout)
	})
}

// apply is Create and Update: the plan applied, read back into state.
func (r *warmPoolResource) apply(ctx context.Context, planned tfsdk.Plan, state *tfsdk.State, diags *diag.Diagnostics, action string,
	timeout func(warmPoolResourceModel) (time.Duration, diag.Diagnostics)) {
	if r.client == nil {
		notConfigured(diags)
		return
	}
	var plan warmPoolResourceModel
	diags.Append(planned.Get(ctx, &plan)...)
	if diags.HasError() {
		return
	}
	d, tdiags := timeout(plan)
	diags.Append(tdiags...)
	if diags.HasError() {
		return
	}
	r.ensure(ctx, &plan, action, opLimit{"timeouts." + action, d}, diags)
	if diags.HasError() {
		return
	}
	diags.Append(state.Set(ctx, &plan)...)
}

func (r *warmPoolResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var state warmPoolResourceModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Read(ctx, defaultPoolReadTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p, err := r.client.svc.PoolStatus(ctx, state.Name.ValueString())
	if errors.Is(err, metadb.ErrPoolGone) || (err == nil && p.State != metadb.PoolActive) {
		// Removed (or being removed) outside this state: the next apply
		// makes it anew, finishing a destroy that was killed first.
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		poolError(&resp.Diagnostics, "read", state.Name.ValueString(), err, opLimit{"timeouts.read", timeout})
		return
	}
	fromPool(&state, p)
	if n := p.Ready(); n < p.Size {
		// Fewer members than size, and no run making them: a run died
		// between a claim and its replacement's docker run. Shown as
		// drift, so that the next apply tops the pool up.
		tflog.Warn(ctx, "warm pool is short of members", map[string]any{"pool": p.Name, "size": p.Size, "ready": n})
		state.Size = types.Int64Value(int64(n))
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *warmPoolResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	r.apply(ctx, req.Plan, &resp.State, &resp.Diagnostics, "update", func(m warmPoolResourceModel) (time.Duration, diag.Diagnostics) {
		return m.Timeouts.Update(ctx, defaultPoolUpdateTimeout)
	})
}

func (r *warmPoolResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var state warmPoolResourceModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Delete(ctx, defaultPoolDeleteTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name := state.Name.ValueString()
	if err := r.client.svc.DestroyPool(ctx, backend.KindDocker, name); err != nil {
		poolError(&resp.Diagnostics, "destroy", name, err, opLimit{"timeouts.delete", timeout})
		return
	}
	tflog.Info(ctx, "warm pool destroyed", map[string]any{"pool": name})
}

// ImportState takes a pool name.
func (r *warmPoolResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, importTimeout)
	defer cancel()
	p, err := r.client.svc.PoolStatus(ctx, req.ID)
	if errors.Is(err, metadb.ErrPoolGone) || (err == nil && p.State != metadb.PoolActive) {
		resp.Diagnostics.AddError("No such warm pool",
			fmt.Sprintf("The meta DB records no warm pool named %q (or it is being destroyed).", req.ID))
		return
	}
	if err != nil {
		poolError(&resp.Diagnostics, "import", req.ID, err, opLimit{"", importTimeout})
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), p.Name)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("name"), p.Name)...)
}

// poolError turns an error of a pool operation into a diagnostic that says
// what failed, the likely cause and what to do next.
func poolError(diags *diag.Diagnostics, action, name string, err error, limit opLimit) {
	switch r := reach.As(err); {
	case r != nil:
		diags.AddError(componentTitle[r.Component]+": "+reasonSummary[r.Reason],
			fmt.Sprintf("Could not %s warm pool %q: %s. %s", action, name, reachWhat(err, r), reachAdvice(r)))
	case errors.Is(err, metadb.ErrPoolGone):
		diags.AddError("Warm pool is being destroyed",
			fmt.Sprintf("Could not %s warm pool %q: another run is destroying it (or was killed while it did). "+
				"Apply again once that destroy is over; a destroy of this pool finishes one that was killed.", action, name))
	case errors.Is(err, context.DeadlineExceeded):
		diags.AddError("Timed out",
			fmt.Sprintf("Could not %s warm pool %q within %s: %s. %s", action, name, limit.d, err, limit.advice()))
	default:
		diags.AddError(fmt.Sprintf("Could not %s warm pool", action),
			fmt.Sprintf("Could not %s warm pool %q: %s. What was started is recorded; the next apply of the pool "+
				"finishes it.", action, name, err))
	}
}
