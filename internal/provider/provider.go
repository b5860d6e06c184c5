// Package provider translates between Terraform and the meta DB store and
// backends; it holds no database or Docker logic of its own.
package provider

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/ephemeral"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

var (
	_ provider.Provider                       = (*postgraasProvider)(nil)
	_ provider.ProviderWithEphemeralResources = (*postgraasProvider)(nil)
)

type postgraasProvider struct {
	version string
}

// New returns the provider factory main.go and the tests serve.
func New(version string) func() provider.Provider {
	return func() provider.Provider { return &postgraasProvider{version: version} }
}

type providerModel struct {
	Backend        types.String `tfsdk:"backend"`
	ConnectTimeout types.Int64  `tfsdk:"connect_timeout"`
	MetaDB         types.Object `tfsdk:"metadb"`
	PGCluster      types.Object `tfsdk:"pg_cluster"`
	Docker         types.Object `tfsdk:"docker"`
	Kubernetes     types.Object `tfsdk:"kubernetes"`
	ReapLimit      types.Int64  `tfsdk:"reap_limit"`
}

type metaDBModel struct {
	Host     types.String `tfsdk:"host"`
	Port     types.Int64  `tfsdk:"port"`
	DBName   types.String `tfsdk:"db_name"`
	Username types.String `tfsdk:"username"`
	Password types.String `tfsdk:"password"`
	SSLMode  types.String `tfsdk:"sslmode"`
	Server   types.String `tfsdk:"server"`

	// The meta DB container, used when Host is unset on docker.
	Container            types.String `tfsdk:"container"`
	ContainerBindAddress types.String `tfsdk:"container_bind_address"`
}

type pgClusterModel struct {
	Host     types.String `tfsdk:"host"`
	Port     types.Int64  `tfsdk:"port"`
	Database types.String `tfsdk:"database"`
	Username types.String `tfsdk:"username"`
	Password types.String `tfsdk:"password"`
	SSLMode  types.String `tfsdk:"sslmode"`
	Server   types.String `tfsdk:"server"`
}

type dockerModel struct {
	Host           types.String `tfsdk:"host"`
	Image          types.String `tfsdk:"image"`
	BindAddress    types.String `tfsdk:"bind_address"`
	AdvertisedHost types.String `tfsdk:"advertised_host"`
}

func (p *postgraasProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "postgraas"
	resp.Version = p.version
}

func envDoc(env, def string) string {
	if def == "" {
		return fmt.Sprintf(" Environment variable: `%s`.", env)
	}
	return fmt.Sprintf(" Environment variable: `%s`. Default: `%s`.", env, def)
}

// stringSetting is an optional, non-empty setting with an environment
// variable fallback.
func stringSetting(desc, env, def string, more ...validator.String) schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: desc + envDoc(env, def),
		Optional:            true,
		Validators:          append([]validator.String{stringvalidator.LengthAtLeast(1)}, more...),
	}
}

func portAttribute(what, env string) schema.Int64Attribute {
	return schema.Int64Attribute{
		MarkdownDescription: "TCP port of " + what + "." + envDoc(env, "5432"),
		Optional:            true,
		Validators:          []validator.Int64{int64validator.Between(1, 65535)},
	}
}

func sslmodeAttribute(env string) schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: "libpq `sslmode`: one of `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`." + envDoc(env, "prefer"),
		Optional:            true,
		Validators:          []validator.String{stringvalidator.OneOf(pgsql.SSLModes...)},
	}
}

func (p *postgraasProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Hands out PostgreSQL databases on demand, as postgraas_server did: a whole PostgreSQL " +
			"instance in its own Docker container (`docker` backend), or a database with its own role on a shared " +
			"cluster (`pg_cluster` backend). Every instance is recorded in a shared meta DB, so every pipeline sees " +
			"every instance. Every attribute can also be set through the environment variable named in its description.",
		Attributes: map[string]schema.Attribute{
			"backend": schema.StringAttribute{
				MarkdownDescription: "Where new instances are created unless they set their own `backend`: `docker`, `pg_cluster` or `kubernetes`. " +
					"Every configured backend is available at once; an existing instance is always read, changed and destroyed " +
					"on the backend that holds it." + envDoc("POSTGRAAS_BACKEND", backend.KindDocker),
				Optional:   true,
				Validators: []validator.String{stringvalidator.OneOf(backendKinds()...)},
			},
			"connect_timeout": schema.Int64Attribute{
				MarkdownDescription: "Seconds one connection attempt may take: to the meta DB, the pg_cluster admin's " +
					"server, an instance, and the Docker engine's first answer (for an `ssh://` engine at least 30 s, ssh's own " +
					"connect timeout, as the ssh login is part of it). A server that accepts connections but never " +
					"answers (paused, overloaded, behind a firewall that drops packets) fails after this long, for every " +
					"operation waiting on it at once; it is separate from the resource's `timeouts`, which bound whole " +
					"operations." + envDoc("POSTGRAAS_CONNECT_TIMEOUT", "10"),
				Optional:   true,
				Validators: []validator.Int64{int64validator.Between(1, 600)},
			},
			"reap_limit": schema.Int64Attribute{
				MarkdownDescription: "How many expired instances (see `expires_after` on `postgraas_instance`) this " +
					"provider removes at most when it starts, from 0 (never) to 1000. Every run that uses the meta DB " +
					"does this, whoever runs it, one run at a time, within 30 seconds; what is left is removed by the " +
					"next run, or by the `reap` command of the provider binary." +
					envDoc("POSTGRAAS_REAP_LIMIT", fmt.Sprint(instance.DefaultReapLimit)),
				Optional:   true,
				Validators: []validator.Int64{int64validator.Between(0, instance.MaxReapLimit)},
			},
			"metadb": schema.SingleNestedAttribute{
				MarkdownDescription: "The PostgreSQL database that records every instance (postgraas_server's `db_instance` table). " +
					"It is connected to on first use, so it may be created in the same configuration. With the `docker` " +
					"backend and no `host` (nor `POSTGRAAS_METADB_HOST`), the provider keeps the meta DB in a container of " +
					"its own on the Docker engine, as postgraas_init did: it finds the one it made before by its label " +
					"`postgraas.metadb=<container>`, or makes it (from `docker.image`, with the named volume " +
					"`<container>-data`, restart policy `unless-stopped`, its port published on the engine's loopback), " +
					"starts it when it is stopped, and never removes or replaces it or its volume. Its password is " +
					"generated once and kept in a root-only file in that volume, readable through the engine only. " +
					"To use a meta DB server instead, set `host` and the login (`port`, `db_name`, `username`, `password`, ...). " +
					"To move the instances' rows there first, while no run uses either: " +
					"`docker exec postgraas-metadb pg_dump -U postgraas -d postgraas --no-owner --no-privileges -t db_instance " +
					"> db_instance.sql`, then `psql -v ON_ERROR_STOP=1 -f db_instance.sql` into the new, empty database; the next " +
					"run completes the schema, and the container stays until you remove it.",
				Optional: true,
				Attributes: map[string]schema.Attribute{
					"host": stringSetting("Host name or address of the meta DB server (IPv6 with or without brackets), or a unix socket directory. "+
						"Unset with the `docker` backend: the meta DB container (see `container`); unset with `pg_cluster` or `kubernetes`: `127.0.0.1`. "+
						"The other settings but `container` and `container_bind_address` apply only to a meta DB server.",
						"POSTGRAAS_METADB_HOST", "", hostValidator{socketDir: true}),
					"port":     portAttribute("the meta DB server", "POSTGRAAS_METADB_PORT"),
					"db_name":  stringSetting("Database that holds the `db_instance` table.", "POSTGRAAS_METADB_DB_NAME", "postgraas"),
					"username": stringSetting("Login of the meta DB. It needs to create tables in `db_name` on first use.", "POSTGRAAS_METADB_USERNAME", "postgraas"),
					"password": schema.StringAttribute{
						MarkdownDescription: "Password of the meta DB login." + envDoc("POSTGRAAS_METADB_PASSWORD", ""),
						Optional:            true, Sensitive: true,
					},
					"sslmode": sslmodeAttribute("POSTGRAAS_METADB_SSLMODE"),
					"server": schema.StringAttribute{
						MarkdownDescription: "Server name for Azure-style `user@server` logins: the login becomes `username@server`." + envDoc("POSTGRAAS_METADB_SERVER", ""),
						Optional:            true,
					},
					"container": stringSetting("Name of the meta DB container used when `host` is unset on the `docker` backend, and "+
						"its identity: the label `postgraas.metadb=<name>` on it and on its volume `<name>-data`. A container or "+
						"volume with the name but not the label is reported as a conflict and left alone. Runs that share a "+
						"Docker engine and this name share the meta DB.", "POSTGRAAS_METADB_CONTAINER", docker.DefaultMetaDBName,
						stringvalidator.RegexMatches(docker.MetaDBNamePattern, "must be a Docker container name of at most 59 characters "+
							"(letters, digits, '_', '.', '-'; starting with a letter or digit)")),
					"container_bind_address": stringSetting("Engine-side address the meta DB container publishes its port on when it "+
						"is made (an existing container keeps its own). The engine's loopback is reached directly from the "+
						"engine's machine and through ssh for an `ssh://` engine; a `tcp://` engine on another machine needs an "+
						"address this machine reaches, then also reachable by others on that network.",
						"POSTGRAAS_METADB_CONTAINER_BIND_ADDRESS", docker.DefaultMetaDBBindAddress, hostValidator{}),
				},
			},
			"pg_cluster": schema.SingleNestedAttribute{
				MarkdownDescription: "The shared PostgreSQL cluster that the `pg_cluster` backend creates roles and databases on. " +
					"The login must be a superuser or have `CREATEDB` and `CREATEROLE`.",
				Optional: true,
				Attributes: map[string]schema.Attribute{
					"host": stringSetting("Host name or address of the cluster (IPv6 with or without brackets), or a unix socket directory; "+
						"also the `host` reported for its instances.", "POSTGRAAS_PG_CLUSTER_HOST", "127.0.0.1", hostValidator{socketDir: true}),
					"port":     portAttribute("the cluster", "POSTGRAAS_PG_CLUSTER_PORT"),
					"database": stringSetting("Maintenance database the admin logs into.", "POSTGRAAS_PG_CLUSTER_DATABASE", "postgres"),
					"username": stringSetting("Admin login (without `@server`).", "POSTGRAAS_PG_CLUSTER_USERNAME", "postgres"),
					"password": schema.StringAttribute{
						MarkdownDescription: "Admin password." + envDoc("POSTGRAAS_PG_CLUSTER_PASSWORD", ""),
						Optional:            true, Sensitive: true,
					},
					"sslmode": sslmodeAttribute("POSTGRAAS_PG_CLUSTER_SSLMODE"),
					"server": schema.StringAttribute{
						MarkdownDescription: "Server name for Azure-style logins: the admin logs in as `username@server`, instances' " +
							"`db_username` may be `user` or `user@server`, the role created is `user` and the login reported is `user@server`." +
							envDoc("POSTGRAAS_PG_CLUSTER_SERVER", ""),
						Optional: true,
					},
				},
			},
			"kubernetes": kubernetesSchema(),
			"docker": schema.SingleNestedAttribute{
				MarkdownDescription: "The Docker engine that the `docker` backend runs one PostgreSQL container per instance on.",
				Optional:            true,
				Attributes: map[string]schema.Attribute{
					"host": stringSetting("Docker engine address: `unix://`, `tcp://` or `ssh://[user@]host[:port][/socket-path]`. "+
						"TLS settings of `tcp://` come from `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`. `ssh://` works as with the "+
						"docker CLI: each connection runs the system `ssh` client, with its configuration (`~/.ssh/config`, "+
						"ssh-agent, `known_hosts`; no password prompts), and `docker system dial-stdio` on the remote host, "+
						"which needs the docker CLI there.", "DOCKER_HOST", "unix:///var/run/docker.sock"),
					"image": stringSetting("Default image for new instances; any image honouring the official `postgres` image's "+
						"`POSTGRES_USER`/`POSTGRES_PASSWORD`/`POSTGRES_DB` contract.", "POSTGRAAS_DOCKER_IMAGE", "postgres:17"),
					"bind_address": stringSetting("Host address that port 5432 of each container is published on (IPv6 with or without brackets).",
						"POSTGRAAS_DOCKER_BIND_ADDRESS", "0.0.0.0", hostValidator{}),
					"advertised_host": stringSetting("Host name reported as instances' `host`. Defaults to the host of a `tcp://` or `ssh://` "+
						"Docker host, else `localhost`.", "POSTGRAAS_DOCKER_ADVERTISED_HOST", "", hostValidator{}),
				},
			},
		},
	}
}

// setting resolves configuration values: the attribute when set, else the
// environment variable, else the default. anyUnknown records a value that
// comes from something not created yet (during plan).
type setting struct {
	diags      *diag.Diagnostics
	anyUnknown bool
}

func (s *setting) str(v types.String, env, def string) string {
	if v.IsUnknown() {
		s.anyUnknown = true
		return ""
	}
	if !v.IsNull() {
		return v.ValueString()
	}
	if e, ok := os.LookupEnv(env); ok && e != "" {
		return e
	}
	return def
}

// host is a host setting; an environment variable's value is checked as
// the attribute's validator checks the attribute, and IPv6 brackets go.
func (s *setting) host(v types.String, p path.Path, env, def string, socketDir bool) string {
	h := s.str(v, env, def)
	if h == "" {
		return h
	}
	if err := checkHost(h, socketDir); err != nil {
		s.diags.AddAttributeError(p, "Invalid provider setting", fmt.Sprintf("%s (from the attribute or %s).", err, env))
	}
	return bareHost(h)
}

func (s *setting) port(v types.Int64, p path.Path, env string) int {
	return s.integer(v, p, env, 5432, 1, 65535)
}

// integer is an integer setting within [lo, hi] (the attribute's
// validator checks the attribute; this checks the environment variable).
func (s *setting) integer(v types.Int64, p path.Path, env string, def, lo, hi int) int {
	if v.IsUnknown() {
		s.anyUnknown = true
		return def
	}
	if !v.IsNull() {
		return int(v.ValueInt64())
	}
	if e, ok := os.LookupEnv(env); ok && e != "" {
		n, err := strconv.Atoi(e)
		if err != nil || n < lo || n > hi {
			s.diags.AddAttributeError(p, "Invalid provider setting",
				fmt.Sprintf("Environment variable %s is %q, which is not a whole number from %d to %d.", env, e, lo, hi))
			return def
		}
		return n
	}
	return def
}

func (s *setting) oneOf(val string, p path.Path, env string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	s.diags.AddAttributeError(p, "Invalid provider setting",
		fmt.Sprintf("%q is not one of %v; check the attribute or the environment variable %s.", val, allowed, env))
}

func objectAs(ctx context.Context, obj types.Object, target any) bool {
	if obj.IsUnknown() {
		return false
	}
	if obj.IsNull() {
		return true // every setting unset: target keeps its null values
	}
	diags := obj.As(ctx, target, basetypes.ObjectAsOptions{UnhandledNullAsEmpty: true, UnhandledUnknownAsEmpty: true})
	return !diags.HasError()
}

func (p *postgraasProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var cfg providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	settings, known := resolveSettings(ctx, cfg, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	if !known {
		// A value depends on something not created yet. Resources see no
		// client during this plan and skip their provider-dependent checks;
		// the apply gets the known values.
		return
	}
	c := buildClient(settings, &resp.Diagnostics)
	if c == nil {
		return
	}
	reapExpired(ctx, c.svc, settings.reapLimit, settings.connectTimeout, &resp.Diagnostics)
	resp.ResourceData = c
	resp.DataSourceData = c
	resp.EphemeralResourceData = c
}

// resolveSettings resolves the provider's settings: each attribute when
// set, else its environment variable, else its default. known is false
// when a value depends on something not created yet (during plan). The
// reap command calls it with an empty configuration, so that it reads the
// environment exactly as a provider block without attributes does.
func resolveSettings(ctx context.Context, cfg providerModel, diags *diag.Diagnostics) (settings clientSettings, known bool) {
	var meta metaDBModel
	var cluster pgClusterModel
	var dock dockerModel
	var kube kubernetesModel
	s := &setting{diags: diags}
	if !objectAs(ctx, cfg.MetaDB, &meta) || !objectAs(ctx, cfg.PGCluster, &cluster) || !objectAs(ctx, cfg.Docker, &dock) ||
		!objectAs(ctx, cfg.Kubernetes, &kube) {
		s.anyUnknown = true
	}

	settings.kind = s.str(cfg.Backend, "POSTGRAAS_BACKEND", backend.KindDocker)
	settings.connectTimeout = time.Duration(s.integer(cfg.ConnectTimeout, path.Root("connect_timeout"), "POSTGRAAS_CONNECT_TIMEOUT",
		int(reach.DefaultConnectTimeout/time.Second), 1, 600)) * time.Second
	s.oneOf(settings.kind, path.Root("backend"), "POSTGRAAS_BACKEND", backendKinds()...)

	mp := path.Root("metadb")
	settings.metaDB = pgsql.Target{
		Host:     s.host(meta.Host, mp.AtName("host"), "POSTGRAAS_METADB_HOST", "", true),
		Port:     s.port(meta.Port, mp.AtName("port"), "POSTGRAAS_METADB_PORT"),
		Database: s.str(meta.DBName, "POSTGRAAS_METADB_DB_NAME", "postgraas"),
		User:     s.str(meta.Username, "POSTGRAAS_METADB_USERNAME", "postgraas"),
		Password: s.str(meta.Password, "POSTGRAAS_METADB_PASSWORD", ""),
		SSLMode:  s.str(meta.SSLMode, "POSTGRAAS_METADB_SSLMODE", "prefer"),

		ConnectTimeout: settings.connectTimeout,
		Component:      reach.MetaDB,
	}
	s.oneOf(settings.metaDB.SSLMode, mp.AtName("sslmode"), "POSTGRAAS_METADB_SSLMODE", pgsql.SSLModes...)
	if server := s.str(meta.Server, "POSTGRAAS_METADB_SERVER", ""); server != "" {
		settings.metaDB.User += "@" + server
	}
	if !cfg.MetaDB.IsUnknown() { // else its host may come with it, at apply
		settings.metaDBContainer = metaDBContainerSettings(s, meta, &settings)
	}

	cp := path.Root("pg_cluster")
	settings.cluster = pgsql.Target{
		Host:     s.host(cluster.Host, cp.AtName("host"), "POSTGRAAS_PG_CLUSTER_HOST", "127.0.0.1", true),
		Port:     s.port(cluster.Port, cp.AtName("port"), "POSTGRAAS_PG_CLUSTER_PORT"),
		Database: s.str(cluster.Database, "POSTGRAAS_PG_CLUSTER_DATABASE", "postgres"),
		User:     s.str(cluster.Username, "POSTGRAAS_PG_CLUSTER_USERNAME", "postgres"),
		Password: s.str(cluster.Password, "POSTGRAAS_PG_CLUSTER_PASSWORD", ""),
		SSLMode:  s.str(cluster.SSLMode, "POSTGRAAS_PG_CLUSTER_SSLMODE", "prefer"),

		ConnectTimeout: settings.connectTimeout,
		Component:      reach.ClusterAdmin,
	}
	s.oneOf(settings.cluster.SSLMode, cp.AtName("sslmode"), "POSTGRAAS_PG_CLUSTER_SSLMODE", pgsql.SSLModes...)
	settings.clusterServer = s.str(cluster.Server, "POSTGRAAS_PG_CLUSTER_SERVER", "")

	dp := path.Root("docker")
	settings.docker = dockerSettings{
		host:           s.str(dock.Host, "DOCKER_HOST", ""),
		image:          s.str(dock.Image, "POSTGRAAS_DOCKER_IMAGE", ""),
		bindAddress:    s.host(dock.BindAddress, dp.AtName("bind_address"), "POSTGRAAS_DOCKER_BIND_ADDRESS", "", false),
		advertisedHost: s.host(dock.AdvertisedHost, dp.AtName("advertised_host"), "POSTGRAAS_DOCKER_ADVERTISED_HOST", "", false),
	}
	settings.kubernetes = kubernetesSettings(s, kube)
	settings.reapLimit = s.integer(cfg.ReapLimit, path.Root("reap_limit"), "POSTGRAAS_REAP_LIMIT",
		instance.DefaultReapLimit, 0, instance.MaxReapLimit)
	return settings, !s.anyUnknown
}

// buildClient builds the client of resolved settings; nil, with an error
// in diags, when it cannot.
func buildClient(settings clientSettings, diags *diag.Diagnostics) *client {
	lease, err := instance.LeaseFromEnv()
	if err != nil {
		diags.AddError("Invalid lease setting", err.Error()+". These variables are meant for tests; unset them for the defaults.")
		return nil
	}
	c, err := newClient(settings, lease)
	if err != nil {
		diags.AddError("Cannot set up the "+settings.kind+" backend",
			fmt.Sprintf("%s. Check the provider's %s settings.", err, settings.kind))
		return nil
	}
	return c
}

func (p *postgraasProvider) Resources(context.Context) []func() resource.Resource {
	return []func() resource.Resource{NewInstanceResource, NewWarmPoolResource}
}

func (p *postgraasProvider) EphemeralResources(context.Context) []func() ephemeral.EphemeralResource {
	return []func() ephemeral.EphemeralResource{NewCredentialsEphemeralResource}
}

func (p *postgraasProvider) DataSources(context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{NewInstanceDataSource, NewInstancesDataSource}
}
