package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

var (
	_ ephemeral.EphemeralResource              = (*credentialsEphemeralResource)(nil)
	_ ephemeral.EphemeralResourceWithConfigure = (*credentialsEphemeralResource)(nil)
	_ ephemeral.EphemeralResourceWithRenew     = (*credentialsEphemeralResource)(nil)
	_ ephemeral.EphemeralResourceWithClose     = (*credentialsEphemeralResource)(nil)
)

// NewCredentialsEphemeralResource is the postgraas_credentials ephemeral
// resource: a temporary login to an existing instance, made when Terraform
// opens it and removed when Terraform closes it, never in plan or state.
func NewCredentialsEphemeralResource() ephemeral.EphemeralResource {
	return &credentialsEphemeralResource{}
}

type credentialsEphemeralResource struct {
	client *client
}

type credentialsModel struct {
	InstanceID    types.String `tfsdk:"instance_id"`
	TTL           types.String `tfsdk:"ttl"`
	Host          types.String `tfsdk:"host"`
	Port          types.Int64  `tfsdk:"port"`
	DBName        types.String `tfsdk:"db_name"`
	Username      types.String `tfsdk:"username"`
	Password      types.String `tfsdk:"password"`
	ConnectionURI types.String `tfsdk:"connection_uri"`
	SSLMode       types.String `tfsdk:"sslmode"`
	ExpiresAt     types.String `tfsdk:"expires_at"`
}

// tempLogin is what Renew and Close need, kept in the ephemeral resource's
// private data, which lives only in Terraform's memory during the run.
type tempLogin struct {
	InstanceID int64     `json:"instance_id"`
	Role       string    `json:"role"`
	TTL        string    `json:"ttl"`
	ExpiresAt  time.Time `json:"expires_at"`
}

const (
	privateLoginKey = "login"
	// tempLoginTimeout bounds opening, renewing and closing a login.
	tempLoginTimeout = 2 * time.Minute
)

func (r *credentialsEphemeralResource) Metadata(_ context.Context, req ephemeral.MetadataRequest, resp *ephemeral.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_credentials"
}

func (r *credentialsEphemeralResource) Schema(_ context.Context, _ ephemeral.SchemaRequest, resp *ephemeral.SchemaResponse) {
	computed := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{MarkdownDescription: desc, Computed: true}
	}
	secret := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{MarkdownDescription: desc, Computed: true, Sensitive: true}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "A short-lived login to an existing instance, for a migrations provider block or a CI step " +
			"that should not hold the instance's long-lived password. Terraform opens it when something in the run needs " +
			"it and closes it at the end of the run: opening creates a role of its own that may log in until `expires_at`, " +
			"closing ends its sessions and drops it. It is never written to plan or state. A run that dies before closing " +
			"it leaves a role that cannot log in after `expires_at` (`VALID UNTIL`, by the server's clock), and the next " +
			"`postgraas_credentials` opened for the instance removes it.\n\n" +
			"The role is no superuser; it is a member of the instance's user and its sessions start as that user " +
			"(`SET ROLE`), so it may do what the instance's own login may (on `docker` that includes superuser rights " +
			"inside the container) and what it creates belongs to the instance's user. Nothing is created unless the " +
			"instance's objects carry its ownership proof; instances recorded without one (by postgraas_server) get none.",
		Attributes: map[string]schema.Attribute{
			"instance_id": schema.StringAttribute{
				MarkdownDescription: "The instance's meta DB id, e.g. `postgraas_instance.x.id`.",
				Required:            true,
				Validators: []validator.String{
					stringvalidator.RegexMatches(regexp.MustCompile(`^[0-9]+$`), "must be a meta DB id (a whole number)"),
				},
			},
			"ttl": schema.StringAttribute{
				MarkdownDescription: fmt.Sprintf("How long the login may log in for, a duration such as `15m` or `2h`, from "+
					"%s to %s. Terraform renews it while the run lasts. Sessions opened before it expires "+
					"keep running until the login is closed. Default: `%s`.",
					formatDuration(instance.MinTempLoginTTL), formatDuration(instance.MaxTempLoginTTL), formatDuration(instance.DefaultTempLoginTTL)),
				Optional: true,
				Computed: true,
				Validators: []validator.String{
					durationBetween{min: instance.MinTempLoginTTL, max: instance.MaxTempLoginTTL},
				},
			},
			"host":       computed("Host to connect to (the instance's `host`)."),
			"port":       schema.Int64Attribute{MarkdownDescription: "Port to connect to.", Computed: true},
			"sslmode":    computed("The instance's `sslmode`. " + sslmodeDescription),
			"db_name":    computed("The instance's database."),
			"username":   computed("The temporary login, `<instance user>_tmp_<random>` (`…@server` on clusters with a `server`)."),
			"password":   secret("The temporary login's password, random, 32 characters."),
			"expires_at": computed("When the login stops being accepted unless Terraform renews it, RFC 3339 in UTC."),
			"connection_uri": secret("`postgres://` URI with the temporary login, every part escaped. Prefer passing the " +
				"parts to a client: a URI on a command line shows in process lists."),
		},
	}
}

func (r *credentialsEphemeralResource) Configure(_ context.Context, req ephemeral.ConfigureRequest, resp *ephemeral.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (r *credentialsEphemeralResource) Open(ctx context.Context, req ephemeral.OpenRequest, resp *ephemeral.OpenResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	var m credentialsModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	id, err := strconv.ParseInt(m.InstanceID.ValueString(), 10, 64)
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("instance_id"), "Invalid instance id",
			fmt.Sprintf("%q is not a meta DB id; ids are whole numbers, as in postgraas_instance.<name>.id.", m.InstanceID.ValueString()))
		return
	}
	ttl := instance.DefaultTempLoginTTL
	if m.TTL.IsNull() {
		m.TTL = types.StringValue(formatDuration(ttl))
	} else {
		ttl, _ = time.ParseDuration(m.TTL.ValueString()) // validated
	}

	ctx, cancel := context.WithTimeout(ctx, tempLoginTimeout)
	defer cancel()
	rec, login, err := r.client.svc.OpenTempLogin(ctx, id, ttl)
	if err != nil {
		tempLoginError(&resp.Diagnostics, m.InstanceID.ValueString(), rec, err)
		return
	}

	m.Host = types.StringValue(login.Host)
	m.Port = types.Int64Value(int64(login.Port))
	m.DBName = types.StringValue(login.DBName)
	m.Username = types.StringValue(login.Username)
	m.Password = types.StringValue(login.Password)
	m.SSLMode = nullIfEmpty(rec.SSLMode)
	m.ConnectionURI = types.StringValue(connectionURI(login.Username, login.Password, login.Host, login.Port, login.DBName, rec.SSLMode))
	m.ExpiresAt = types.StringValue(login.ExpiresAt.UTC().Format(time.RFC3339))
	resp.Diagnostics.Append(resp.Result.Set(ctx, &m)...)

	p := tempLogin{InstanceID: id, Role: login.Role, TTL: ttl.String(), ExpiresAt: login.ExpiresAt}
	resp.Diagnostics.Append(setLogin(ctx, resp.Private, p)...)
	resp.RenewAt = renewAt(login.ExpiresAt, ttl)
}

// renewAt leaves a third of the ttl to renew in.
func renewAt(expires time.Time, ttl time.Duration) time.Time {
	return expires.Add(-ttl / 3)
}

type privateData interface {
	GetKey(context.Context, string) ([]byte, diag.Diagnostics)
	SetKey(context.Context, string, []byte) diag.Diagnostics
}

func setLogin(ctx context.Context, p privateData, l tempLogin) diag.Diagnostics {
	b, err := json.Marshal(l)
	if err != nil {
		var d diag.Diagnostics
		d.AddError("Could not keep the temporary login", "Encoding its private data failed: "+err.Error()+
			". This is a bug in the provider; please report it.")
		return d
	}
	return p.SetKey(ctx, privateLoginKey, b)
}

func getLogin(ctx context.Context, p privateData) (tempLogin, bool, diag.Diagnostics) {
	var l tempLogin
	b, d := p.GetKey(ctx, privateLoginKey)
	if d.HasError() || len(b) == 0 {
		return l, false, d
	}
	if err := json.Unmarshal(b, &l); err != nil || l.Role == "" {
		d.AddError("Temporary login data unreadable", fmt.Sprintf("The ephemeral resource's private data could not be read "+
			"(%v). This is a bug in the provider; please report it. The login expires by itself.", err))
		return l, false, d
	}
	return l, true, d
}

func (r *credentialsEphemeralResource) Renew(ctx context.Context, req ephemeral.RenewRequest, resp *ephemeral.RenewResponse) {
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	l, ok, d := getLogin(ctx, req.Private)
	resp.Diagnostics.Append(d...)
	if !ok {
		return
	}
	ttl, err := time.ParseDuration(l.TTL)
	if err != nil {
		ttl = instance.DefaultTempLoginTTL
	}
	ctx, cancel := context.WithTimeout(ctx, tempLoginTimeout)
	defer cancel()
	until, err := r.client.svc.RenewTempLogin(ctx, l.InstanceID, l.Role, ttl)
	if err != nil {
		var gone *backend.TempLoginGoneError
		if errors.As(err, &gone) {
			resp.Diagnostics.AddError("Temporary login gone",
				fmt.Sprintf("Could not renew temporary login %q of instance %d: %s. It was removed outside this run "+
					"(or its instance was destroyed); re-run to open a new one.", l.Role, l.InstanceID, err))
			return
		}
		resp.Diagnostics.AddError("Could not renew temporary login",
			fmt.Sprintf("Could not renew temporary login %q of instance %d: %s. It stays valid until %s; if the run "+
				"needs it for longer, check that the meta DB and the backend are reachable and re-run.",
				l.Role, l.InstanceID, err, l.ExpiresAt.UTC().Format(time.RFC3339)))
		return
	}
	l.ExpiresAt = until
	resp.Diagnostics.Append(setLogin(ctx, resp.Private, l)...)
	resp.RenewAt = renewAt(until, ttl)
}

func (r *credentialsEphemeralResource) Close(ctx context.Context, req ephemeral.CloseRequest, resp *ephemeral.CloseResponse) {
	l, ok, d := getLogin(ctx, req.Private)
	resp.Diagnostics.Append(d...)
	if !ok {
		return
	}
	if r.client == nil {
		notConfigured(&resp.Diagnostics)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, tempLoginTimeout)
	defer cancel()
	if err := r.client.svc.CloseTempLogin(ctx, l.InstanceID, l.Role); err != nil {
		// A warning: everything else in the run succeeded, and the login
		// expires by itself.
		resp.Diagnostics.AddWarning("Temporary login not removed",
			fmt.Sprintf("Could not remove temporary login %q of instance %d: %s. It cannot log in after %s (its VALID "+
				"UNTIL), sessions it has open keep running, and the next postgraas_credentials opened for this instance "+
				"removes it once it has expired.", l.Role, l.InstanceID, err, l.ExpiresAt.UTC().Format(time.RFC3339)))
	}
}

// tempLoginError explains why a temporary login could not be opened.
func tempLoginError(diags *diag.Diagnostics, id string, rec metadb.Record, err error) {
	name := id
	if rec.Name != "" {
		name = rec.Name
	}
	switch {
	case errors.Is(err, metadb.ErrNotFound):
		diags.AddAttributeError(path.Root("instance_id"), "Instance not found",
			fmt.Sprintf("The meta DB records no instance with id %s, so no temporary login was made. Check instance_id "+
				"(list instances with the postgraas_instances data source).", id))
	case errors.Is(err, backend.ErrLegacy):
		diags.AddError("Instance has no ownership proof",
			fmt.Sprintf("Cannot open a temporary login to instance %q: it was recorded without an ownership proof (by "+
				"postgraas_server or an older provider), so its role or container cannot be proven to be its own, and no "+
				"login into it is handed out. Use the instance's own password, or create it anew with this provider.", name))
	default:
		addError(diags, "open a temporary login to", name, err, opLimit{"", tempLoginTimeout})
	}
}
