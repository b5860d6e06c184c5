package provider

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// One pool serves the meta DB and the cluster exactly when both log in to
// the same server as the same user with the same password and TLS mode.
func TestClientSharesOnePoolForOneLogin(t *testing.T) {
	login := pgsql.Target{Host: "db.example", Port: 5432, User: "admin", Password: "pw", SSLMode: "require"}
	with := func(f func(meta, cluster *pgsql.Target, server *string)) clientSettings {
		s := clientSettings{kind: backend.KindPGCluster, metaDB: login, cluster: login}
		s.metaDB.Database, s.cluster.Database = "postgraas", "postgres"
		f(&s.metaDB, &s.cluster, &s.clusterServer)
		return s
	}
	for _, c := range []struct {
		name   string
		s      clientSettings
		shared bool
	}{
		{"same login, other database", with(func(*pgsql.Target, *pgsql.Target, *string) {}), true},
		{"Azure-style server suffix", with(func(m, _ *pgsql.Target, srv *string) { m.User, *srv = "admin@srv", "srv" }), true},
		{"other user", with(func(m, _ *pgsql.Target, _ *string) { m.User = "postgraas" }), false},
		{"other password", with(func(m, _ *pgsql.Target, _ *string) { m.Password = "other" }), false},
		{"other port", with(func(_, c *pgsql.Target, _ *string) { c.Port = 5433 }), false},
		{"other sslmode", with(func(m, _ *pgsql.Target, _ *string) { m.SSLMode = "disable" }), false},
	} {
		cl, err := newClient(c.s, instance.LeaseConfig{})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b, err := cl.svc.Backend(backend.KindPGCluster)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		pb, ok := b.(*pgcluster.Backend)
		if !ok {
			t.Fatalf("%s: the pg_cluster backend is a %T", c.name, b)
		}
		shared := pb.SharedPool()
		switch {
		case c.shared && (shared == nil || shared != cl.store.Pool() || shared.MaxConns() != sharedMaxConns):
			t.Errorf("%s: the cluster backend does not share the meta DB's pool of %d", c.name, sharedMaxConns)
		case !c.shared && shared != nil:
			t.Errorf("%s: the cluster backend shares the meta DB's pool", c.name)
		case !c.shared && cl.store.Pool().MaxConns() != metaDBMaxConns:
			t.Errorf("%s: meta DB pool of %d, want %d", c.name, cl.store.Pool().MaxConns(), metaDBMaxConns)
		}
		cl.svc.Close()
	}
}

// Each failure names its component, the reason, and the settings that fix
// it; a connect timeout and an operation timeout are told apart.
func TestAddErrorNamesComponentAndSetting(t *testing.T) {
	wrap := func(e error) error { return fmt.Errorf("reserving the name: %w", e) }
	cases := []struct {
		err      error
		limit    opLimit
		summary  string
		contains []string
		absent   []string
	}{
		{wrap(&reach.Error{Component: reach.MetaDB, Address: "postgraas@10.0.0.1:5432/postgraas", Reason: reach.Timeout, Timeout: 2 * time.Second, Err: context.DeadlineExceeded}),
			opLimit{"timeouts.create", 10 * time.Minute}, "Meta DB: no answer",
			[]string{"2s", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT", "metadb.host", "POSTGRAAS_METADB_PORT"},
			[]string{"timeouts.create", "10m0s"}},
		{wrap(&reach.Error{Component: reach.MetaDB, Reason: reach.NoPassword, Err: errors.New("28P01")}), opLimit{}, "Meta DB: no password set",
			[]string{"metadb.password", "POSTGRAAS_METADB_PASSWORD"}, nil},
		{&reach.Error{Component: reach.MetaDB, Reason: reach.WrongPassword, Err: errors.New("28P01")}, opLimit{}, "Meta DB: wrong password",
			[]string{"metadb.password", "POSTGRAAS_METADB_PASSWORD"}, nil},
		{&reach.Error{Component: reach.ClusterAdmin, Reason: reach.WrongPassword, Err: errors.New("28P01")}, opLimit{}, "pg_cluster admin: wrong password",
			[]string{"pg_cluster.password", "POSTGRAAS_PG_CLUSTER_PASSWORD"}, []string{"metadb"}},
		{&reach.Error{Component: reach.ClusterAdmin, Reason: reach.Refused, Err: errors.New("refused")}, opLimit{}, "pg_cluster admin: connection refused",
			[]string{"pg_cluster.host", "POSTGRAAS_PG_CLUSTER_PORT"}, nil},
		{&reach.Error{Component: reach.DockerEngine, Reason: reach.Timeout, Timeout: 10 * time.Second, Err: errors.New("ping")}, opLimit{}, "Docker engine: no answer",
			[]string{"docker.host", "DOCKER_HOST", "10s", "connect_timeout"}, nil},
		// A login the server began and never finished, on every attempt
		// until the create's time ran out: overloaded, not unreachable.
		{wrap(&pgsql.RetryError{Attempts: 7, Took: time.Minute, Ctx: context.DeadlineExceeded,
			Err: &reach.Error{Component: reach.MetaDB, Address: "postgraas@10.0.0.1:5432/postgraas", Reason: reach.Slow, Timeout: 10 * time.Second, Err: context.DeadlineExceeded}}),
			opLimit{"timeouts.create", time.Minute}, "Meta DB: overloaded",
			[]string{"began the login", "10s", "overloaded", "connect_timeout", "POSTGRAAS_CONNECT_TIMEOUT", "fewer applies"},
			[]string{"Nothing answered"}},
		// A connection table that stayed full for the plan check's
		// minute: not a wrong address.
		{wrap(&pgsql.RetryError{Attempts: 31, Took: time.Minute, Ctx: context.DeadlineExceeded,
			Err: &reach.Error{Component: reach.ClusterAdmin, Address: "postgres@10.0.0.1:5432/postgres", Reason: reach.Full, Err: errors.New("sorry, too many clients already (SQLSTATE 53300)")}}),
			opLimit{}, "pg_cluster admin: server full",
			[]string{"no free connection slot", "53300", "tried 31 times over 1m0s", "max_connections", "CONNECTION LIMIT", "fewer applies"},
			[]string{"pg_cluster.host", "sslmode"}},
		{&reach.Error{Component: reach.MetaDB, Reason: reach.NoDatabase, Err: errors.New("3D000")}, opLimit{}, "Meta DB: database does not exist",
			[]string{"metadb.db_name", "POSTGRAAS_METADB_DB_NAME"}, nil},
		{fmt.Errorf("waiting: %w", context.DeadlineExceeded), opLimit{"timeouts.delete", 3 * time.Second}, "Timed out",
			[]string{"timeouts.delete", "3s"}, []string{"connect_timeout"}},
		{&backend.StartError{Reason: `database "d" does not exist`, Logs: "FATAL: boom"}, opLimit{}, "Instance did not start",
			[]string{`database "d" does not exist`, "FATAL: boom", "removed"}, nil},
		// A create its lease stopped fails whatever it was doing, here a
		// connect refused as too many; the lease is why.
		{fmt.Errorf("%w (%w)", &reach.Error{Component: reach.ClusterAdmin, Reason: reach.Other, Err: errors.New("53300")},
			&instance.LeaseError{ID: 50, Unanswered: 25 * time.Second, Err: &reach.Error{Component: reach.MetaDB, Reason: reach.Timeout, Err: context.DeadlineExceeded}}),
			opLimit{}, "Create stopped: lease not renewed",
			[]string{"53300", "meta DB row 50 could not be renewed for 25s", "connect_timeout", "POSTGRAAS_LEASE_TTL", "Apply again"}, []string{"pg_cluster.host"}},
		{fmt.Errorf("creating database: %w (%w)", context.Canceled, &instance.LeaseError{ID: 7, Err: metadb.ErrLeaseLost}),
			opLimit{}, "Create stopped: another run took over", []string{"another run took over meta DB row 7", "apply again"}, nil},
	}
	for _, c := range cases {
		var diags diag.Diagnostics
		addError(&diags, "create", "inst", c.err, c.limit)
		if len(diags) != 1 {
			t.Fatalf("%v: %d diagnostics", c.err, len(diags))
		}
		d := diags[0]
		if d.Summary() != c.summary {
			t.Errorf("%v: summary %q, want %q", c.err, d.Summary(), c.summary)
		}
		for _, s := range c.contains {
			if !strings.Contains(d.Detail(), s) {
				t.Errorf("%s: detail lacks %q: %s", c.summary, s, d.Detail())
			}
		}
		for _, s := range c.absent {
			if strings.Contains(d.Detail(), s) {
				t.Errorf("%s: detail mentions %q: %s", c.summary, s, d.Detail())
			}
		}
	}
}
