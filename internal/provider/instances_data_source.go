package provider

import (
	"context"
	"fmt"
	"regexp"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/datasource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

var (
	_ datasource.DataSource              = (*instancesDataSource)(nil)
	_ datasource.DataSourceWithConfigure = (*instancesDataSource)(nil)
)

// NewInstancesDataSource is the postgraas_instances data source.
func NewInstancesDataSource() datasource.DataSource { return &instancesDataSource{} }

type instancesDataSource struct {
	client *client
}

type instancesDataModel struct {
	Backend   types.String        `tfsdk:"backend"`
	NameRegex types.String        `tfsdk:"name_regex"`
	Labels    types.Map           `tfsdk:"labels"`
	Instances []instanceDataModel `tfsdk:"instances"`
	Timeouts  timeouts.Value      `tfsdk:"timeouts"`
}

func (d *instancesDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_instances"
}

func (d *instancesDataSource) Schema(ctx context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Lists every instance recorded in the meta DB, not only those of this configuration, as " +
			"postgraas_server's list call did; rows it wrote are included. Never exposes a password.",
		Attributes: map[string]schema.Attribute{
			"backend": schema.StringAttribute{
				MarkdownDescription: "Only instances on this backend: `docker`, `pg_cluster` or `kubernetes`.",
				Optional:            true,
				Validators:          []validator.String{stringvalidator.OneOf(backendKinds()...)},
			},
			"name_regex": schema.StringAttribute{
				MarkdownDescription: "Only instances whose name matches this regular expression ([Go RE2 syntax](https://github.com/google/re2/wiki/Syntax)), unanchored.",
				Optional:            true,
				Validators:          []validator.String{regexValidator{}},
			},
			"labels": schema.MapAttribute{
				MarkdownDescription: "Only instances that carry every one of these labels (key and value); " +
					"instances may have more. " + labelsDescription,
				ElementType: types.StringType,
				Optional:    true,
				Validators:  labelsValidators(),
			},
			"instances": schema.ListNestedAttribute{
				MarkdownDescription: "The matching instances, ordered by id.",
				Computed:            true,
				NestedObject:        schema.NestedAttributeObject{Attributes: instanceDataAttributes(false)},
			},
		},
		Blocks: map[string]schema.Block{"timeouts": dataTimeoutsBlock(ctx)},
	}
}

func (d *instancesDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *instancesDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	if d.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var m instancesDataModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel, limit := dataReadContext(ctx, m.Timeouts, &resp.Diagnostics)
	defer cancel()
	if resp.Diagnostics.HasError() {
		return
	}
	f := metadb.Filter{Backend: m.Backend.ValueString()}
	labels, diags := labelsOf(ctx, m.Labels)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	f.Labels = labels
	if !m.NameRegex.IsNull() {
		re, err := regexp.Compile(m.NameRegex.ValueString())
		if err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("name_regex"), "Invalid regular expression", err.Error())
			return
		}
		f.NameRegex = re
	}
	recs, err := d.client.store.List(ctx, f)
	if err != nil {
		addError(&resp.Diagnostics, "list", "*", err, limit)
		return
	}
	m.Instances = make([]instanceDataModel, 0, len(recs))
	for _, r := range recs {
		m.Instances = append(m.Instances, instanceDataFromRecord(r))
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// regexValidator reports an invalid name_regex at plan time, with the
// compiler's explanation; the framework's validators only match against a
// regex, they do not check that a value is one.
type regexValidator struct{}

func (regexValidator) Description(context.Context) string {
	return "must be a valid Go (RE2) regular expression"
}

func (v regexValidator) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (regexValidator) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if _, err := regexp.Compile(req.ConfigValue.ValueString()); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid regular expression",
			fmt.Sprintf("name_regex %q does not compile: %s.", req.ConfigValue.ValueString(), err))
	}
}
