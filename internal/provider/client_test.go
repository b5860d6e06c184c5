package provider

import (
	"testing"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
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
		shared := b.(*pgcluster.Backend).SharedPool()
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
