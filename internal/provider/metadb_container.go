package provider

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// defaultMetaDBHost is the meta DB server when none is configured and the
// backend is not docker (docker then uses the meta DB container).
const defaultMetaDBHost = "127.0.0.1"

// metaDBServerOnly are the metadb settings that only a meta DB server
// uses: the meta DB container has its own login.
func metaDBServerOnly(m metaDBModel) []struct {
	name, env string
	value     attr.Value
} {
	return []struct {
		name, env string
		value     attr.Value
	}{
		{"port", "POSTGRAAS_METADB_PORT", m.Port},
		{"db_name", "POSTGRAAS_METADB_DB_NAME", m.DBName},
		{"username", "POSTGRAAS_METADB_USERNAME", m.Username},
		{"password", "POSTGRAAS_METADB_PASSWORD", m.Password},
		{"sslmode", "POSTGRAAS_METADB_SSLMODE", m.SSLMode},
		{"server", "POSTGRAAS_METADB_SERVER", m.Server},
	}
}

// isSet reports whether a setting is given, as attribute or environment
// variable.
func isSet(v attr.Value, env string) bool {
	return !v.IsNull() || os.Getenv(env) != ""
}

// metaDBContainerSettings decides between a meta DB server and the meta DB
// container: the container when the backend is docker and no meta DB host
// is set. It returns the container's settings, or nil for a server (whose
// host it defaults). Server settings given without a host are an error:
// they would be ignored, and before the meta DB container existed the host
// defaulted to 127.0.0.1, so they most likely mean a server there.
func metaDBContainerSettings(s *setting, meta metaDBModel, settings *clientSettings) *docker.MetaDBConfig {
	mp := path.Root("metadb")
	name := s.str(meta.Container, "POSTGRAAS_METADB_CONTAINER", docker.DefaultMetaDBName)
	if name != "" && !docker.MetaDBNamePattern.MatchString(name) {
		s.diags.AddAttributeError(mp.AtName("container"), "Invalid provider setting",
			fmt.Sprintf("%q (from the attribute or POSTGRAAS_METADB_CONTAINER) is not a Docker container name of at most 59 "+
				"characters: letters, digits, '_', '.' and '-', starting with a letter or digit.", name))
	}
	bind := s.host(meta.ContainerBindAddress, mp.AtName("container_bind_address"), "POSTGRAAS_METADB_CONTAINER_BIND_ADDRESS",
		docker.DefaultMetaDBBindAddress, false)
	if meta.Host.IsUnknown() {
		return nil // known at apply
	}
	if settings.metaDB.Host != "" || settings.kind != backend.KindDocker {
		if settings.metaDB.Host == "" {
			settings.metaDB.Host = defaultMetaDBHost
		}
		for _, c := range []struct {
			name, env string
			value     attr.Value
		}{
			{"container", "POSTGRAAS_METADB_CONTAINER", meta.Container},
			{"container_bind_address", "POSTGRAAS_METADB_CONTAINER_BIND_ADDRESS", meta.ContainerBindAddress},
		} {
			if isSet(c.value, c.env) {
				s.diags.AddAttributeWarning(mp.AtName(c.name), "Meta DB container setting ignored",
					fmt.Sprintf("metadb.%s (or %s) applies only to the meta DB container, which the provider uses when the "+
						"backend is docker and no metadb.host is set; here the meta DB is the server at %s.",
						c.name, c.env, settings.metaDB.Host))
			}
		}
		return nil
	}
	var given []string
	var first string
	for _, o := range metaDBServerOnly(meta) {
		if isSet(o.value, o.env) {
			given = append(given, fmt.Sprintf("metadb.%s (%s)", o.name, o.env))
			if first == "" {
				first = o.name
			}
		}
	}
	if len(given) > 0 {
		s.diags.AddAttributeError(mp.AtName(first), "Meta DB settings without a meta DB host",
			fmt.Sprintf("%s set, but neither metadb.host nor POSTGRAAS_METADB_HOST is. With the docker backend and no "+
				"host, the provider keeps the meta DB in a container of its own on the Docker engine, with a login of its "+
				"own, and would ignore them. To use a meta DB server, set metadb.host (it no longer defaults to "+
				"127.0.0.1 on the docker backend); to use the meta DB container, unset them.",
				strings.Join(given, ", ")+map[bool]string{true: " is", false: " are"}[len(given) == 1]))
		return nil
	}
	if s.diags.HasError() {
		return nil
	}
	return &docker.MetaDBConfig{Name: name, BindAddress: bind, ConnectTimeout: settings.connectTimeout}
}

// newMetaDBContainerStore is the store of the meta DB container cfg on
// the docker backend b: it is found or made on first use.
func newMetaDBContainerStore(b backend.Backend, cfg docker.MetaDBConfig) (*metadb.Store, error) {
	d, ok := b.(*docker.Backend)
	if !ok {
		return nil, fmt.Errorf("the meta DB container needs the docker backend, not %T", b)
	}
	return metadb.NewLocated(
		func(ctx context.Context) (pgsql.Target, error) { return d.MetaDB(ctx, cfg) },
		func(ctx context.Context) error { return d.CheckMetaDB(ctx, cfg) },
		func(ctx context.Context) (bool, error) { return d.MetaDBRunning(ctx, cfg) },
		metaDBMaxConns), nil
}

// metaDBContainerDiagnostic turns a meta DB container that cannot be used
// into a diagnostic.
func metaDBContainerDiagnostic(diags *diag.Diagnostics, action, name string, e *docker.MetaDBError) {
	diags.AddError("Meta DB container: "+e.Summary,
		fmt.Sprintf("Could not %s instance %q: %s.\n\n%s", action, name, e.Error(), e.Advice))
}
