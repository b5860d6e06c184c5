package provider

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/netfake"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// The reaping in Configure neither fails nor holds up a run whose meta DB
// does not answer (paused, or created later by the same configuration):
// it gives up after instance.MaxReapLookup even with a connect_timeout of
// 30 s, and adds no diagnostic; the operations that need the meta DB
// report it.
func TestReapInConfigureDoesNotWaitForASilentMetaDB(t *testing.T) {
	port, accepted := netfake.SilentCounting(t)
	silent := pgsql.Target{Host: "127.0.0.1", Port: port, Database: "postgraas", User: "postgraas", Password: "pw",
		SSLMode: "disable", ConnectTimeout: 30 * time.Second, Component: reach.MetaDB}
	cluster := silent
	cluster.User, cluster.Component = "postgres", reach.ClusterAdmin
	c, err := newClient(clientSettings{kind: backend.KindPGCluster, connectTimeout: 30 * time.Second, metaDB: silent, cluster: cluster},
		instance.LeaseConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.svc.Close()
	var diags diag.Diagnostics
	start := time.Now()
	reapExpired(context.Background(), c.svc, instance.DefaultReapLimit, 30*time.Second, &diags)
	took := time.Since(start)
	if took > instance.MaxReapLookup+2*time.Second {
		t.Errorf("Configure's reaping waited %s for a silent meta DB; want about %s", took, instance.MaxReapLookup)
	}
	if accepted() == 0 {
		t.Error("the reaping never tried the meta DB")
	}
	if len(diags) != 0 {
		t.Errorf("diagnostics for a meta DB that does not answer: %v", diags)
	}
}
