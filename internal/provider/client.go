package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Pool bounds. Terraform runs 10 operations at once by default, but every
// meta DB query and every inspect takes well under a millisecond, and a
// create or delete holds a cluster connection only for its few statements
// (no login or password hashing happens while one is held). Opening a
// connection costs far more than waiting for one (a fork and a SCRAM
// exchange, 15-30 ms on the 2-core bench machine, in every provider process
// Terraform starts), and on such a server CREATE/DROP DATABASE do not run
// faster side by side: make bench measured 2 of each as fast as 4, with
// half the connections.
const (
	metaDBMaxConns  = 2
	clusterMaxConns = 2
)

type clientSettings struct {
	kind          string
	metaDB        pgsql.Target
	cluster       pgsql.Target
	clusterServer string
	docker        dockerSettings
}

type dockerSettings struct {
	host, image, bindAddress, advertisedHost string
}

// client is what Configure hands to resources and data sources. Nothing in
// it has connected yet: the store and backends connect on first use.
type client struct {
	kind          string
	store         *metadb.Store
	backend       backend.Backend
	clusterServer string
}

func newClient(s clientSettings) (*client, error) {
	c := &client{
		kind:          s.kind,
		store:         metadb.New(s.metaDB, metaDBMaxConns),
		clusterServer: s.clusterServer,
	}
	switch s.kind {
	case backend.KindPGCluster:
		c.backend = pgcluster.New(pgcluster.Config{Admin: s.cluster, Server: s.clusterServer, MaxConns: clusterMaxConns})
	case backend.KindDocker:
		b, err := docker.New(docker.Config{
			Host:           s.docker.host,
			Image:          s.docker.image,
			BindAddress:    s.docker.bindAddress,
			AdvertisedHost: s.docker.advertisedHost,
		})
		if err != nil {
			return nil, err
		}
		c.backend = b
	default:
		return nil, fmt.Errorf("unknown backend %q", s.kind)
	}
	return c, nil
}

// clientFrom converts provider data, reporting a clear error when the
// provider could not be configured (unknown values during plan).
func clientFrom(data any, diags *diag.Diagnostics) *client {
	if data == nil {
		return nil
	}
	c, ok := data.(*client)
	if !ok {
		diags.AddError("Unexpected provider data",
			fmt.Sprintf("Expected *provider.client, got %T. This is a bug in the provider; please report it.", data))
		return nil
	}
	return c
}

func notConfigured(diags *diag.Diagnostics) {
	diags.AddError("Provider not configured",
		"The postgraas provider's configuration still has unknown values, so instances cannot be managed yet. "+
			"Make the values the provider block depends on known (apply their resources first, e.g. with -target).")
}

func instanceOf(r metadb.Record) backend.Instance {
	return backend.Instance{
		ID: r.ID, Name: r.Name, DBName: r.DBName, Username: r.Username,
		Host: r.Host, Port: r.Port, ContainerID: r.ContainerID,
	}
}

func formatID(id int64) string { return strconv.FormatInt(id, 10) }

// connectionURI escapes every part, so user names like "user@server" and
// passwords with '@', '/' or ':' survive (postgraas_server bug 8).
func connectionURI(username, password, host string, port int, dbName string) string {
	u := url.URL{
		Scheme:  "postgres",
		User:    url.UserPassword(username, password),
		Host:    net.JoinHostPort(host, strconv.Itoa(port)),
		Path:    "/" + dbName,
		RawPath: "/" + url.PathEscape(dbName),
	}
	return u.String()
}

// addError turns an error from the store or a backend into a diagnostic
// that says what failed, the likely cause and what to do next.
func addError(diags *diag.Diagnostics, action, instance string, err error, timeout time.Duration) {
	var conflict *backend.ConflictError
	var taken *metadb.NameTakenError
	var sessions *backend.SessionsError
	switch {
	case errors.As(err, &taken):
		detail := fmt.Sprintf("The meta DB already records an instance named %q (id %d, backend %s). Names are unique across "+
			"every pipeline that shares the meta DB. Choose another name, or import the existing instance with "+
			"`terraform import <address> %d`.", taken.Name, taken.Existing.ID, taken.Existing.Backend, taken.Existing.ID)
		if taken.Existing.State == metadb.StateCreating {
			detail = fmt.Sprintf("Another run is creating an instance named %q right now (meta DB row %d, started %s). "+
				"Wait for it, or choose another name. If no run is in progress, that run was killed part-way: destroy what it "+
				"left and delete row %d from db_instance.", taken.Name, taken.Existing.ID,
				taken.Existing.CreatedAt.Format(time.RFC3339), taken.Existing.ID)
		}
		diags.AddAttributeError(path.Root("name"), "Instance name already taken", detail)
	case errors.As(err, &conflict):
		attr := map[string]string{"role": "db_username", "database": "db_name", "container": "name"}[conflict.Kind]
		diags.AddAttributeError(path.Root(attr), fmt.Sprintf("The %s already exists", conflict.Kind),
			fmt.Sprintf("Cannot create instance %q: %s that this provider did not create, so it was left exactly as it "+
				"was and nothing was created. Choose another %s, or remove the existing %s if it is no longer used.",
				instance, conflict.Error(), attr, conflict.Kind))
	case errors.Is(err, backend.ErrWrongPassword):
		diags.AddAttributeError(path.Root("db_password"), "Wrong instance password",
			fmt.Sprintf("Could not %s instance %q: the instance refused a login with the db_password in state (%s). "+
				"Nothing was changed. If the password was changed outside Terraform, set db_password to the password the "+
				"instance accepts and apply before retrying.", action, instance, err))
	case errors.As(err, &sessions):
		diags.AddError("Instance still in use",
			fmt.Sprintf("Could not %s instance %q: %s. Nothing was removed. Close those sessions and retry, or set "+
				"force_destroy = true and apply it first, to have destroy terminate them.", action, instance, sessions.Error()))
	case errors.Is(err, context.DeadlineExceeded):
		diags.AddError("Timed out",
			fmt.Sprintf("Could not %s instance %q within %s: %s. Raise the timeout in the resource's timeouts block if the "+
				"server is just slow; anything a failed create made was removed.", action, instance, timeout, err))
	default:
		diags.AddError(fmt.Sprintf("Could not %s instance", action),
			fmt.Sprintf("Could not %s instance %q: %s. Check that the meta DB and the backend are reachable with the "+
				"provider's credentials, then retry.", action, instance, err))
	}
}
