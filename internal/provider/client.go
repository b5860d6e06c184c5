package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/kubernetes"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/pgcluster"
	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
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
	kind           string
	connectTimeout time.Duration
	metaDB         pgsql.Target
	cluster        pgsql.Target
	clusterServer  string
	docker         dockerSettings
	kubernetes     kubernetes.Config
	// metaDBContainer, when set, is the meta DB container the store uses
	// instead of the server in metaDB.
	metaDBContainer *docker.MetaDBConfig
	// sharedPool is the meta DB's pool when the cluster admin logs in to
	// the same server as the same user; nil otherwise.
	sharedPool *pgsql.Pool
	// reapLimit is how many expired instances a run removes at most.
	reapLimit int
}

type dockerSettings struct {
	host, image, bindAddress, advertisedHost string
}

// client is what Configure hands to resources and data sources. Nothing in
// it has connected yet: the store and backends connect on first use.
type client struct {
	svc   *instance.Service
	store *metadb.Store

	checksMu sync.Mutex
	checks   map[string]*planCheck
}

// planCheck is the plan-time check of the meta DB and one backend, run once
// per provider process (a plan of fifty new instances checks once) by the
// first resource that asks; the others wait for its result.
type planCheck struct {
	once sync.Once
	err  error
}

// planCheckTimeout bounds the plan-time check; each connection in it is
// bounded by connect_timeout too.
const planCheckTimeout = time.Minute

// checkForPlan reports whether the meta DB and the backend of kind answer
// with the provider's credentials, without changing anything: a CI plan
// step then catches a wrong password instead of the apply.
func (c *client) checkForPlan(ctx context.Context, kind string) error {
	c.checksMu.Lock()
	pc, ok := c.checks[kind]
	if !ok {
		pc = &planCheck{}
		c.checks[kind] = pc
	}
	c.checksMu.Unlock()
	pc.once.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, planCheckTimeout)
		defer cancel()
		if pc.err = c.store.Check(ctx); pc.err != nil {
			return
		}
		if b, err := c.svc.Backend(kind); err == nil {
			if ch, ok := b.(backend.Checker); ok {
				pc.err = ch.Check(ctx)
			}
		}
	})
	return pc.err
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
			ConnectTimeout: s.connectTimeout,
		})
	}},
	{backend.KindPGCluster, func(s clientSettings) (backend.Backend, error) {
		return pgcluster.New(pgcluster.Config{Admin: s.cluster, Server: s.clusterServer, MaxConns: clusterMaxConns, Pool: s.sharedPool}), nil
	}},
	{backend.KindKubernetes, func(s clientSettings) (backend.Backend, error) {
		cfg := s.kubernetes
		cfg.ConnectTimeout = s.connectTimeout
		return kubernetes.New(cfg)
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
	switch {
	case s.metaDBContainer != nil:
	case admin.SameLogin(s.metaDB):
		s.sharedPool = s.metaDB.NewPool(sharedMaxConns)
		store = metadb.NewOnPool(s.sharedPool)
	default:
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
		if s.metaDBContainer != nil && e.kind == s.kind {
			if store, err = newMetaDBContainerStore(b, *s.metaDBContainer); err != nil {
				return nil, err
			}
		}
	}
	return &client{svc: instance.New(store, s.kind, lease, backends...), store: store, checks: map[string]*planCheck{}}, nil
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

// timeoutDescription documents one operation's limit with its default, so
// that the docs say what a timeouts block changes.
func timeoutDescription(what string, def time.Duration) string {
	return fmt.Sprintf("Limit of %s, as a duration such as `30s` or `10m`. Default `%s`. "+
		"Each connection within it is bounded by the provider's `connect_timeout`.", what, formatDuration(def))
}

// sslmodeDescription documents every sslmode attribute.
const sslmodeDescription = "The libpq `sslmode` to connect with, as the instance's server offered TLS when the " +
	"instance was created: `require` when it did (the provider knows no CA, so the certificate is not verified; with " +
	"the server's CA at hand use `verify-full`), `disable` when it did not. `connection_uri` carries it. Pass it to " +
	"clients whose default differs: the cyrilgdn/postgresql provider's default, `require`, fails with \"SSL is not " +
	"enabled on the server\" on a server without TLS. Null for instances recorded before it was (postgraas_server's, " +
	"or this provider's before 0.1.0)."

// connectionURI escapes every part, so user names like "user@server" and
// passwords with '@', '/' or ':' survive (postgraas_server bug 8). sslmode,
// when known, goes into the query, so that clients whose default is
// "require" connect to a server without TLS.
func connectionURI(username, password, host string, port int, dbName, sslmode string) string {
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
	if sslmode != "" {
		u.RawQuery = url.Values{"sslmode": {sslmode}}.Encode()
	}
	return u.String()
}

// addError turns an error from the instance service into a diagnostic that
// says what failed, the likely cause and what to do next.
func addError(diags *diag.Diagnostics, action, name string, err error, limit opLimit) {
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
		start     *backend.StartError
		metaDBc   *docker.MetaDBError
		tbusy     *backend.TemplateBusyError
		lease     *instance.LeaseError
	)
	switch {
	// Before the connect failures: a create stopped by its lease reports
	// the failure of whatever it was doing when stopped, which says
	// nothing of why.
	case errors.As(err, &lease) && errors.Is(lease, metadb.ErrLeaseLost):
		diags.AddError("Create stopped: another run took over",
			fmt.Sprintf("Could not %s instance %q: %s. Another run takes a create's meta DB row over only once that "+
				"create's lease has expired, so this run's lease renewals did not reach the meta DB in time. This run "+
				"stopped and removed what it had made (unless the error above says that failed too); apply again "+
				"to see the instance as the other run left it.", action, name, err))
	case errors.As(err, &lease):
		diags.AddError("Create stopped: lease not renewed",
			fmt.Sprintf("Could not %s instance %q: %s. A create renews its meta DB lease while it works and stops "+
				"once no renewal has succeeded for almost the lease's length, rather than go on while another run "+
				"may take its row over. Check the meta DB server's load and free connections; if it is only slow to "+
				"answer, raise connect_timeout (POSTGRAAS_CONNECT_TIMEOUT) and the lease (POSTGRAAS_LEASE_TTL, default "+
				"30s, a Go duration; renewals get up to 5/6 of it). Apply again: what a stopped create left is "+
				"finished or undone by the next run.", action, name, err))
	case errors.As(err, &metaDBc):
		metaDBContainerDiagnostic(diags, action, name, metaDBc)
	case reach.As(err) != nil:
		r := reach.As(err)
		diags.AddError(componentTitle[r.Component]+": "+reasonSummary[r.Reason],
			fmt.Sprintf("Could not %s instance %q: %s. %s", action, name, reachWhat(err, r), reachAdvice(r)))
	case errors.As(err, &start):
		diags.AddError("Instance did not start",
			fmt.Sprintf("Could not %s instance %q: its server will never take the instance's login: %s\n\nWhat the create "+
				"made was removed. Check the image: it must honour the official postgres image's POSTGRES_USER, "+
				"POSTGRES_PASSWORD and POSTGRES_DB and keep its server running.", action, name, start.Error()))
	case errors.As(err, &tbusy):
		diags.AddAttributeError(path.Root("template_instance"), "Template instance in use",
			fmt.Sprintf("Could not %s instance %q: %s. Nothing was created. Close those sessions (a pipeline still "+
				"migrating the template, a psql left open; pg_stat_activity lists them), or set template_wait to a "+
				"duration such as \"2m\" to have the create wait for them to end.", action, name, tbusy.Error()))
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
	case errors.As(err, &busy) && busy.Doing != "":
		diags.AddError("Instance busy",
			fmt.Sprintf("Cannot %s instance %q: %s, or was replaced since this state last read it. Nothing was "+
				"changed. Refresh and retry: an instance removed meanwhile is then created anew.", action, name, busy.Error()))
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
			fmt.Sprintf("Could not %s instance %q within %s: %s. %s", action, name, limit.d, err, limit.advice()))
	default:
		diags.AddError(fmt.Sprintf("Could not %s instance", action),
			fmt.Sprintf("Could not %s instance %q: %s.", action, name, err))
	}
}

// opLimit is the time an operation was given, and the setting that gives
// it ("" for operations Terraform offers no timeouts block for).
type opLimit struct {
	setting string
	d       time.Duration
}

func (l opLimit) advice() string {
	if l.setting == "" {
		return "That is this operation's fixed limit; retry once the server answers faster."
	}
	return fmt.Sprintf("That is the limit set by %s; raise it if the server is just slow.", l.setting)
}

var componentTitle = map[reach.Component]string{
	reach.MetaDB:          "Meta DB",
	reach.MetaDBContainer: "Meta DB container",
	reach.ClusterAdmin:    "pg_cluster admin",
	reach.DockerEngine:    "Docker engine",
	reach.Instance:        "Instance login",
}

var reasonSummary = map[reach.Reason]string{
	reach.Timeout:       "no answer",
	reach.Refused:       "connection refused",
	reach.WrongPassword: "wrong password",
	reach.NoPassword:    "no password set",
	reach.NoDatabase:    "database does not exist",
	reach.Slow:          "overloaded",
	reach.Full:          "server full",
	reach.Other:         "cannot connect",
}

// componentSettings are the provider settings (and their environment
// variables) that decide where and how a component is reached.
type componentSettings struct{ address, login, password, database string }

var settingsOf = map[reach.Component]componentSettings{
	reach.MetaDB: {
		address:  "metadb.host and metadb.port (POSTGRAAS_METADB_HOST, POSTGRAAS_METADB_PORT)",
		login:    "metadb.username and metadb.password (POSTGRAAS_METADB_USERNAME, POSTGRAAS_METADB_PASSWORD)",
		password: "metadb.password (POSTGRAAS_METADB_PASSWORD)",
		database: "metadb.db_name (POSTGRAAS_METADB_DB_NAME)",
	},
	reach.MetaDBContainer: {
		address: "the meta DB container (`docker ps -a --filter label=postgraas.metadb`), whether its published port is " +
			"reachable from here (metadb.container_bind_address; not the loopback of a tcp:// engine on another machine), " +
			"or set metadb.host (POSTGRAAS_METADB_HOST) to use a meta DB server instead",
		login:    "the password the meta DB container keeps in its volume (see the README's meta DB section)",
		password: "the password file in the meta DB container's volume (see the README's meta DB section)",
		database: "the database the meta DB container was made with (its label postgraas.metadb.database)",
	},
	reach.ClusterAdmin: {
		address:  "pg_cluster.host and pg_cluster.port (POSTGRAAS_PG_CLUSTER_HOST, POSTGRAAS_PG_CLUSTER_PORT)",
		login:    "pg_cluster.username and pg_cluster.password (POSTGRAAS_PG_CLUSTER_USERNAME, POSTGRAAS_PG_CLUSTER_PASSWORD)",
		password: "pg_cluster.password (POSTGRAAS_PG_CLUSTER_PASSWORD)",
		database: "pg_cluster.database (POSTGRAAS_PG_CLUSTER_DATABASE)",
	},
	reach.DockerEngine: {address: "docker.host (DOCKER_HOST)"},
	reach.Instance: {
		address:  "the instance's host and port (for docker instances, docker.bind_address and docker.advertised_host)",
		login:    "the instance's db_username and password",
		password: "the instance's password",
		database: "the instance's db_name",
	},
}

// reachWhat is what failed to connect, r from err's chain, with how often
// and for how long it was tried: that is what tells a server that stayed
// full or slow from one that refused once.
func reachWhat(err error, r *reach.Error) string {
	if re := (*pgsql.RetryError)(nil); errors.As(err, &re) {
		return fmt.Sprintf("%s (tried %d times over %s)", r.Error(), re.Attempts, re.Took.Round(time.Millisecond))
	}
	return r.Error()
}

// reachAdvice says what to check for a failed connection, naming the
// settings and environment variables that change it.
func reachAdvice(r *reach.Error) string {
	s := settingsOf[r.Component]
	switch r.Reason {
	case reach.Timeout:
		return fmt.Sprintf("Nothing answered within the connect timeout of %s: a server that is paused, overloaded or behind "+
			"a firewall that drops packets never answers. Check %s and that the server runs; if it is only slow to answer, "+
			"raise connect_timeout in the provider block (POSTGRAAS_CONNECT_TIMEOUT).", r.Timeout, s.address)
	case reach.Slow:
		return fmt.Sprintf("The server accepted the connection and began the login but did not finish it within the connect "+
			"timeout of %s, on every attempt until the operation's time ran out: it runs, but is overloaded (many logins at "+
			"once, or starved of CPU). Raise connect_timeout in the provider block (POSTGRAAS_CONNECT_TIMEOUT) or the "+
			"operation's timeouts, or run fewer applies against that server at once.", r.Timeout)
	case reach.Full:
		return "The server refused the login because all its connection slots were taken (SQLSTATE 53300: " +
			"max_connections, or the login role's or the database's CONNECTION LIMIT), on every attempt until the " +
			"operation's time ran out. Free connections there (idle sessions, other clients), raise the limit, or run " +
			"fewer applies against that server at once; then apply again."
	case reach.Refused:
		return fmt.Sprintf("Nothing accepts connections there. Check %s and that the server runs.", s.address)
	case reach.WrongPassword:
		return fmt.Sprintf("The server refused the login. Check %s.", s.login)
	case reach.NoPassword:
		return fmt.Sprintf("The server asks for a password and none is set. Set %s.", s.password)
	case reach.NoDatabase:
		return fmt.Sprintf("The login's database does not exist. Check %s.", s.database)
	}
	return fmt.Sprintf("Check %s and, for PostgreSQL, sslmode.", s.address)
}
