package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
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
//
// When the meta DB and the cluster are one server with one login (the
// usual small setup), one pool of sharedMaxConns serves both, so a
// provider process holds at most 3 connections to that server instead of
// 4. Idle connections are closed after a second (pgsql.PoolConfig).
const (
	metaDBMaxConns  = 2
	clusterMaxConns = 2
	sharedMaxConns  = 3
)

type clientSettings struct {
	kind          string
	metaDB        pgsql.Target
	cluster       pgsql.Target
	clusterServer string
	docker        dockerSettings
	// sharedPool is the meta DB's pool when the cluster admin logs in to
	// the same server as the same user; nil otherwise.
	sharedPool *pgsql.Pool
}

type dockerSettings struct {
	host, image, bindAddress, advertisedHost string
}

// client is what Configure hands to resources and data sources. Nothing in
// it has connected yet: the store and backends connect on first use.
type client struct {
	svc   *instance.Service
	store *metadb.Store
}

// backendRegistry lists every backend the provider knows, with how to build
// it from the provider's settings. Adding a backend is its package plus one
// line here (and its settings block in the provider schema).
var backendRegistry = []struct {
	kind  string
	build func(clientSettings) (backend.Backend, error)
}{
	{backend.KindDocker, func(s clientSettings) (backend.Backend, error) {
		return docker.New(docker.Config{
			Host:           s.docker.host,
			Image:          s.docker.image,
			BindAddress:    s.docker.bindAddress,
			AdvertisedHost: s.docker.advertisedHost,
		})
	}},
	{backend.KindPGCluster, func(s clientSettings) (backend.Backend, error) {
		return pgcluster.New(pgcluster.Config{Admin: s.cluster, Server: s.clusterServer, MaxConns: clusterMaxConns, Pool: s.sharedPool}), nil
	}},
}

// backendKinds are the kinds of backendRegistry, for validators and docs.
func backendKinds() []string {
	kinds := make([]string, len(backendRegistry))
	for i, e := range backendRegistry {
		kinds[i] = e.kind
	}
	return kinds
}

// newClient builds every backend (none connects yet), so rows of any kind
// can be read, changed and destroyed whatever the default is. Only the
// default backend must build; another one that cannot (say, a malformed
// DOCKER_HOST in a pg_cluster setup) is left out, and its rows say so.
func newClient(s clientSettings, lease instance.LeaseConfig) (*client, error) {
	admin := s.cluster
	admin.User = pgcluster.StoredUsername(admin.User, s.clusterServer)
	var store *metadb.Store
	if admin.SameLogin(s.metaDB) {
		s.sharedPool = s.metaDB.NewPool(sharedMaxConns)
		store = metadb.NewOnPool(s.sharedPool)
	} else {
		store = metadb.New(s.metaDB, metaDBMaxConns)
	}
	var backends []backend.Backend
	for _, e := range backendRegistry {
		b, err := e.build(s)
		if err != nil {
			if e.kind == s.kind {
				return nil, err
			}
			continue
		}
		backends = append(backends, b)
	}
	return &client{svc: instance.New(store, s.kind, lease, backends...), store: store}, nil
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

func formatID(id int64) string { return strconv.FormatInt(id, 10) }

func joinIDs(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = formatID(id)
	}
	return strings.Join(s, ", ")
}

// connectionURI escapes every part, so user names like "user@server" and
// passwords with '@', '/' or ':' survive (postgraas_server bug 8).
func connectionURI(username, password, host string, port int, dbName string) string {
	user := url.User(username)
	if password != "" {
		user = url.UserPassword(username, password)
	}
	u := url.URL{
		Scheme:  "postgres",
		User:    user,
		Host:    net.JoinHostPort(host, strconv.Itoa(port)),
		Path:    "/" + dbName,
		RawPath: "/" + url.PathEscape(dbName),
	}
	return u.String()
}

// addError turns an error from the instance service into a diagnostic that
// says what failed, the likely cause and what to do next.
func addError(diags *diag.Diagnostics, action, name string, err error, timeout time.Duration) {
	var (
		conflict  *backend.ConflictError
		taken     *metadb.NameTakenError
		ambiguous *metadb.AmbiguousNameError
		held      *instance.LeaseHeldError
		busy      *instance.BusyError
		spec      *backend.SpecError
		sessions  *backend.SessionsError
		notOurs   *pgcluster.NotOursError
		disabled  *backend.LoginDisabledError
	)
	switch {
	case errors.As(err, &spec):
		diags.AddAttributeError(path.Root(spec.Attribute), "Invalid instance settings",
			fmt.Sprintf("Cannot %s instance %q: %s. Nothing was created.", action, name, spec.Err))
	case errors.As(err, &held):
		why := "its lease outlasts this create's timeout"
		if held.Renewed {
			why = "its lease was renewed while this run waited, so it is alive"
		}
		diags.AddAttributeError(path.Root("name"), "Instance name already taken",
			fmt.Sprintf("Another run is creating an instance named %q right now (meta DB row %d; %s). Wait for it to "+
				"finish, or choose another name. A run that was killed needs no cleanup: once its lease expires, the "+
				"next apply takes the name over and removes what that run left.", held.Existing.Name, held.Existing.ID, why))
	case errors.As(err, &ambiguous):
		diags.AddError("Ambiguous instance name",
			fmt.Sprintf("Cannot %s instance %q: %s, written by postgraas_server, whose name check let duplicates in. "+
				"Use the id instead of the name.", action, name, ambiguous.Error()))
	case errors.As(err, &taken) && len(taken.IDs) > 1:
		diags.AddAttributeError(path.Root("name"), "Instance name already taken",
			fmt.Sprintf("The meta DB already records %d instances named %q (ids %s), written by postgraas_server, whose "+
				"name check let duplicates in. Choose another name, or import one of them by id with "+
				"`terraform import <address> <id>`.", len(taken.IDs), taken.Name, joinIDs(taken.IDs)))
	case errors.As(err, &taken):
		diags.AddAttributeError(path.Root("name"), "Instance name already taken",
			fmt.Sprintf("The meta DB already records an instance named %q (id %d, backend %s). Names are unique across "+
				"every pipeline that shares the meta DB. Choose another name, or import the existing instance with "+
				"`terraform import <address> %d`.", taken.Name, taken.Existing.ID, taken.Existing.Backend, taken.Existing.ID))
	case errors.As(err, &busy):
		diags.AddError("Instance is being created",
			fmt.Sprintf("Cannot %s instance %q: %s. Wait for that run to finish (or, if it was killed, for the next "+
				"apply of it to take the name over), then retry.", action, name, busy.Error()))
	case errors.As(err, &conflict):
		diags.AddAttributeError(path.Root(conflict.Attribute), fmt.Sprintf("The %s already exists", conflict.Kind),
			fmt.Sprintf("Cannot %s instance %q: %s and does not carry this instance's ownership proof, so it belongs "+
				"to someone else (another tenant, a DBA, another meta DB) and was left exactly as it was; nothing "+
				"was created. Choose another %s, or have its owner remove the existing %s if it is no longer used.",
				action, name, conflict.Error(), conflict.Attribute, conflict.Kind))
	case errors.As(err, &notOurs), errors.Is(err, backend.ErrNotOurs):
		what := err.Error()
		if notOurs != nil {
			what = notOurs.Error()
		}
		diags.AddError("Instance objects are not this instance's",
			fmt.Sprintf("Cannot %s instance %q: %s, so nothing was changed. It was removed or replaced outside "+
				"Terraform; refresh, and apply to create the instance anew.", action, name, what))
	case errors.Is(err, backend.ErrNotRunning):
		diags.AddError("Instance not running",
			fmt.Sprintf("Cannot %s instance %q: %s. Nothing was changed. Start it (for a docker instance, "+
				"`docker start` its container) and retry.", action, name, err))
	case errors.Is(err, backend.ErrLegacy):
		diags.AddError(fmt.Sprintf("Could not %s instance", action),
			fmt.Sprintf("Cannot %s instance %q: %s.", action, name, err))
	case errors.As(err, &disabled):
		diags.AddError("Instance login disabled",
			fmt.Sprintf("Could not %s instance %q: %s. No password can prove ownership of it now, so nothing was "+
				"changed. Whoever disabled it (a DBA) has to enable it again (ALTER ROLE ... LOGIN, or a VALID UNTIL in "+
				"the future) before Terraform can change or destroy it.", action, name, disabled.Error()))
	case errors.Is(err, backend.ErrCannotVerify):
		diags.AddError("Cannot check the instance password",
			fmt.Sprintf("Could not %s instance %q: with a write-only password the provider proves it holds the "+
				"current password by comparing the verifier it set with the server's, and %s (the pg_cluster admin "+
				"is not a superuser). Nothing was changed. Use db_password for this instance, or a superuser admin.",
				action, name, err))
	case errors.Is(err, backend.ErrWrongPassword) && action == "change the password of":
		diags.AddAttributeError(path.Root("db_password"), "Wrong instance password",
			fmt.Sprintf("Could not change the password of instance %q: the instance accepts neither the configured "+
				"password nor the one this state last set (after an import, the configured password must already be "+
				"the instance's). Nothing was changed. Only the holder of the current password may change it: set the "+
				"password the instance accepts, apply (that is accepted as it is), then change it.", name))
	case errors.Is(err, backend.ErrWrongPassword):
		diags.AddAttributeError(path.Root("db_password"), "Wrong instance password",
			fmt.Sprintf("Could not %s instance %q: the instance's password is not the one in this state (%s). "+
				"Nothing was changed. If the password was changed outside Terraform, set db_password (or db_password_wo "+
				"with a new db_password_wo_version) to the password the instance accepts and apply (that is accepted "+
				"as it is) before retrying.", action, name, err))
	case errors.As(err, &sessions):
		diags.AddError("Instance still in use",
			fmt.Sprintf("Could not %s instance %q: %s. Nothing was removed. Close those sessions and retry, or set "+
				"force_destroy = true and apply it first, to have destroy terminate them.", action, name, sessions.Error()))
	case errors.Is(err, context.DeadlineExceeded):
		diags.AddError("Timed out",
			fmt.Sprintf("Could not %s instance %q within %s: %s. Raise the timeout in the resource's timeouts block if the "+
				"server is just slow.", action, name, timeout, err))
	default:
		diags.AddError(fmt.Sprintf("Could not %s instance", action),
			fmt.Sprintf("Could not %s instance %q: %s. Check that the meta DB and the backend are reachable with the "+
				"provider's credentials, then retry.", action, name, err))
	}
}
