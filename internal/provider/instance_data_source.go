package provider

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/datasource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/datasourcevalidator"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

var (
	_ datasource.DataSource                     = (*instanceDataSource)(nil)
	_ datasource.DataSourceWithConfigure        = (*instanceDataSource)(nil)
	_ datasource.DataSourceWithConfigValidators = (*instanceDataSource)(nil)
)

// NewInstanceDataSource is the postgraas_instance data source.
func NewInstanceDataSource() datasource.DataSource { return &instanceDataSource{} }

type instanceDataSource struct {
	client *client
}

// instanceDataModel is one meta DB row as data sources show it. There is no
// password in it: the meta DB has none, and neither data source exposes one.
type instanceDataModel struct {
	ID          types.String `tfsdk:"id"`
	Name        types.String `tfsdk:"name"`
	DBName      types.String `tfsdk:"db_name"`
	DBUsername  types.String `tfsdk:"db_username"`
	Backend     types.String `tfsdk:"backend"`
	Host        types.String `tfsdk:"host"`
	Port        types.Int64  `tfsdk:"port"`
	ContainerID types.String `tfsdk:"container_id"`
	Image       types.String `tfsdk:"image"`
	Status      types.String `tfsdk:"status"`
	State       types.String `tfsdk:"state"`
	SSLMode     types.String `tfsdk:"sslmode"`
	CreatedAt   types.String `tfsdk:"created_at"`
	Labels      types.Map    `tfsdk:"labels"`
	ExpiresAt   types.String `tfsdk:"expires_at"`
}

func instanceDataFromRecord(r metadb.Record) instanceDataModel {
	created := types.StringNull()
	if !r.CreatedAt.IsZero() {
		created = types.StringValue(r.CreatedAt.UTC().Format(time.RFC3339))
	}
	port := types.Int64Null()
	if r.Port != 0 {
		port = types.Int64Value(int64(r.Port))
	}
	return instanceDataModel{
		ID:          types.StringValue(formatID(r.ID)),
		Name:        types.StringValue(r.Name),
		DBName:      types.StringValue(r.DBName),
		DBUsername:  types.StringValue(r.Username),
		Backend:     types.StringValue(r.Backend),
		Host:        types.StringValue(r.Host),
		Port:        port,
		ContainerID: nullIfEmpty(r.ContainerID),
		Image:       nullIfEmpty(r.Image),
		Status:      types.StringValue(r.State),
		State:       types.StringValue(r.State),
		SSLMode:     nullIfEmpty(r.SSLMode),
		CreatedAt:   created,
		Labels:      labelsValue(r.Labels),
		ExpiresAt:   expiresValue(types.StringNull(), r.ExpiresAt),
	}
}

// instanceDataAttributes describes instanceDataModel. lookup makes id and
// name the (optional) keys of the single-instance data source.
func instanceDataAttributes(lookup bool) map[string]schema.Attribute {
	key := func(desc string, validators ...validator.String) schema.StringAttribute {
		return schema.StringAttribute{MarkdownDescription: desc, Computed: true, Optional: lookup, Validators: validators}
	}
	computed := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{MarkdownDescription: desc, Computed: true}
	}
	var nameValidators []validator.String
	if lookup {
		nameValidators = instanceNameValidators()
	}
	return map[string]schema.Attribute{
		"id":           key("The meta DB row id (`postgraas_instance_id`)."),
		"name":         key("Instance name (`postgraas_instance_name`).", nameValidators...),
		"db_name":      computed("Database name."),
		"db_username":  computed("Login to connect as (`user@server` on clusters with a `server`)."),
		"backend":      computed("`docker`, `pg_cluster` or `kubernetes` (inferred from `container_id` for rows written by postgraas_server)."),
		"host":         computed("Host to connect to."),
		"port":         schema.Int64Attribute{MarkdownDescription: "Port to connect to.", Computed: true},
		"container_id": computed("Docker container id; null on `pg_cluster`."),
		"image":        computed("Docker image; null on `pg_cluster` and for rows written by postgraas_server."),
		"status": computed("The instance's status as the meta DB records it: `ready`, or `creating` while an apply " +
			"is creating it (the resource's `status` says more: it asks the backend)."),
		"state": schema.StringAttribute{
			MarkdownDescription: "Deprecated: the same as `status`, the name the resource uses.",
			DeprecationMessage:  "Use status, as on the postgraas_instance resource; state will be removed in 1.0.",
			Computed:            true,
		},
		"sslmode":    computed(sslmodeDescription),
		"created_at": computed("When the instance was created, RFC 3339 in UTC."),
		"labels": schema.MapAttribute{
			MarkdownDescription: "The instance's labels; null when it has none (always for rows written by postgraas_server).",
			ElementType:         types.StringType,
			Computed:            true,
		},
		"expires_at": computed("When the instance expires and is removed by the next provider run that uses the " +
			"meta DB, RFC 3339 in UTC; null when it never expires."),
	}
}

func (d *instanceDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_instance"
}

// instanceDataSourceModel is the single-instance data source: one row and
// its read timeout.
type instanceDataSourceModel struct {
	instanceDataModel
	Timeouts timeouts.Value `tfsdk:"timeouts"`
}

// defaultDataReadTimeout bounds a data source's read unless its timeouts
// block says otherwise.
const defaultDataReadTimeout = 2 * time.Minute

func (d *instanceDataSource) Schema(ctx context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Looks up one instance in the meta DB by `id` or by `name` (exactly one of them), whoever " +
			"created it, including instances created by postgraas_server. Never exposes a password.",
		Attributes: instanceDataAttributes(true),
		Blocks:     map[string]schema.Block{"timeouts": dataTimeoutsBlock(ctx)},
	}
}

// dataTimeoutsBlock is the data sources' timeouts block, its default in the docs.
func dataTimeoutsBlock(ctx context.Context) schema.Block {
	return timeouts.BlockWithOpts(ctx, timeouts.Opts{
		ReadDescription: timeoutDescription("the meta DB read", defaultDataReadTimeout),
	})
}

// dataReadContext bounds a data source's read by its timeouts block.
func dataReadContext(ctx context.Context, t timeouts.Value, diags *diag.Diagnostics) (context.Context, context.CancelFunc, opLimit) {
	d, ds := t.Read(ctx, defaultDataReadTimeout)
	diags.Append(ds...)
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, cancel, opLimit{"timeouts.read", d}
}

func (d *instanceDataSource) ConfigValidators(context.Context) []datasource.ConfigValidator {
	return []datasource.ConfigValidator{
		datasourcevalidator.ExactlyOneOf(path.MatchRoot("id"), path.MatchRoot("name")),
	}
}

func (d *instanceDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *instanceDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	if d.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var cfg instanceDataSourceModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel, limit := dataReadContext(ctx, cfg.Timeouts, &resp.Diagnostics)
	defer cancel()
	if resp.Diagnostics.HasError() {
		return
	}
	var rec metadb.Record
	var err error
	key, attr := cfg.Name.ValueString(), path.Root("name")
	if !cfg.ID.IsNull() {
		key, attr = cfg.ID.ValueString(), path.Root("id")
		id, perr := strconv.ParseInt(key, 10, 64)
		if perr != nil {
			resp.Diagnostics.AddAttributeError(attr, "Invalid instance id",
				fmt.Sprintf("%q is not a meta DB id; ids are whole numbers. To look up by name, set name instead.", key))
			return
		}
		rec, err = d.client.store.Get(ctx, id)
	} else {
		rec, err = d.client.store.GetByName(ctx, key)
	}
	if errors.Is(err, metadb.ErrNotFound) {
		resp.Diagnostics.AddAttributeError(attr, "Instance not found",
			fmt.Sprintf("The meta DB records no instance with %s %q. List them with the postgraas_instances data source.",
				attr, key))
		return
	}
	if err != nil {
		addError(&resp.Diagnostics, "read", key, err, limit)
		return
	}
	m := instanceDataSourceModel{instanceDataModel: instanceDataFromRecord(rec), Timeouts: cfg.Timeouts}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
