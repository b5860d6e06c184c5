package provider

import (
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// metaDBEnv are every meta DB environment variable, cleared for these
// tests (make test exports the test environment's meta DB server).
var metaDBEnv = []string{"POSTGRAAS_METADB_HOST", "POSTGRAAS_METADB_PORT", "POSTGRAAS_METADB_DB_NAME",
	"POSTGRAAS_METADB_USERNAME", "POSTGRAAS_METADB_PASSWORD", "POSTGRAAS_METADB_SSLMODE", "POSTGRAAS_METADB_SERVER",
	"POSTGRAAS_METADB_CONTAINER", "POSTGRAAS_METADB_CONTAINER_BIND_ADDRESS"}

func nullMetaDB() metaDBModel {
	return metaDBModel{Container: types.StringNull(), ContainerBindAddress: types.StringNull(), Host: types.StringNull(),
		Port: types.Int64Null(), DBName: types.StringNull(), Username: types.StringNull(), Password: types.StringNull(),
		SSLMode: types.StringNull(), Server: types.StringNull()}
}

// The meta DB container is used exactly when the backend is docker and no
// host is set; server settings without a host are an error, not ignored.
func TestMetaDBContainerSettings(t *testing.T) {
	for _, c := range []struct {
		name     string
		kind     string
		env      map[string]string
		model    func(*metaDBModel)
		want     *docker.MetaDBConfig
		host     string
		errorIn  string // summary of the expected error
		warnings int
	}{
		{name: "docker, nothing set", kind: backend.KindDocker,
			want: &docker.MetaDBConfig{Name: "postgraas-metadb", BindAddress: "127.0.0.1"}},
		{name: "docker, container settings from the environment", kind: backend.KindDocker,
			env:  map[string]string{"POSTGRAAS_METADB_CONTAINER": "ci-meta", "POSTGRAAS_METADB_CONTAINER_BIND_ADDRESS": "[::1]"},
			want: &docker.MetaDBConfig{Name: "ci-meta", BindAddress: "::1"}},
		{name: "docker, container name from the attribute", kind: backend.KindDocker,
			model: func(m *metaDBModel) { m.Container = types.StringValue("mine") },
			want:  &docker.MetaDBConfig{Name: "mine", BindAddress: "127.0.0.1"}},
		{name: "docker, host set", kind: backend.KindDocker, env: map[string]string{"POSTGRAAS_METADB_HOST": "db.example"},
			host: "db.example"},
		{name: "docker, host set and a container setting", kind: backend.KindDocker,
			model: func(m *metaDBModel) { m.Host, m.Container = types.StringValue("db.example"), types.StringValue("x") },
			host:  "db.example", warnings: 1},
		{name: "pg_cluster, nothing set", kind: backend.KindPGCluster, host: "127.0.0.1"},
		{name: "docker, a password without a host", kind: backend.KindDocker,
			env:     map[string]string{"POSTGRAAS_METADB_PASSWORD": "pw"},
			errorIn: "Meta DB settings without a meta DB host"},
		{name: "docker, a port attribute without a host", kind: backend.KindDocker,
			model:   func(m *metaDBModel) { m.Port = types.Int64Value(5433) },
			errorIn: "Meta DB settings without a meta DB host"},
		{name: "docker, a bad container name", kind: backend.KindDocker,
			env:     map[string]string{"POSTGRAAS_METADB_CONTAINER": "-bad/name"},
			errorIn: "Invalid provider setting"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, k := range metaDBEnv {
				t.Setenv(k, c.env[k])
			}
			m := nullMetaDB()
			if c.model != nil {
				c.model(&m)
			}
			var diags diag.Diagnostics
			s := &setting{diags: &diags}
			settings := clientSettings{kind: c.kind}
			settings.metaDB.Host = s.host(m.Host, metaDBPath("host"), "POSTGRAAS_METADB_HOST", "", true)
			got := metaDBContainerSettings(s, m, &settings)
			if c.errorIn != "" {
				if !diags.HasError() || diags.Errors()[0].Summary() != c.errorIn {
					t.Fatalf("diagnostics %v, want the error %q", diags, c.errorIn)
				}
				if got != nil {
					t.Errorf("got container settings %+v along with the error", got)
				}
				return
			}
			if diags.HasError() || diags.WarningsCount() != c.warnings {
				t.Fatalf("diagnostics %v, want %d warning(s) and no error", diags, c.warnings)
			}
			switch {
			case c.want == nil && got != nil:
				t.Errorf("got the meta DB container %+v, want the server at %s", got, c.host)
			case c.want != nil && (got == nil || *got != *c.want):
				t.Errorf("got %+v, want %+v", got, c.want)
			case c.want == nil && settings.metaDB.Host != c.host:
				t.Errorf("meta DB host %q, want %q", settings.metaDB.Host, c.host)
			}
		})
	}
}

// A meta DB container that cannot be used, or cannot be reached, says so
// with what to do.
func TestAddErrorMetaDBContainer(t *testing.T) {
	for _, c := range []struct {
		err      error
		summary  string
		contains []string
	}{
		{&docker.MetaDBError{Container: "m", Summary: "login refused", Reason: "meta DB container m does not let \"postgraas\" log in",
			Advice: "Set one to the other."}, "Meta DB container: login refused", []string{"does not let", "Set one to the other."}},
		{&reach.Error{Component: reach.MetaDBContainer, Reason: reach.Refused, Err: errString("refused")},
			"Meta DB container: connection refused", []string{"metadb.container_bind_address", "metadb.host"}},
	} {
		var diags diag.Diagnostics
		addError(&diags, "create", "x", c.err, opLimit{})
		if len(diags) != 1 || diags[0].Summary() != c.summary {
			t.Errorf("%v: got %v, want %q", c.err, diags, c.summary)
			continue
		}
		for _, s := range c.contains {
			if !strings.Contains(diags[0].Detail(), s) {
				t.Errorf("%q: detail %q does not name %q", c.summary, diags[0].Detail(), s)
			}
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func metaDBPath(name string) path.Path { return path.Root("metadb").AtName(name) }
