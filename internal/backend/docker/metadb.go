package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// The meta DB in a container of its own, as postgraas_init made it: used
// when the docker backend has no meta DB server configured, so the engine
// and an image are all a setup needs.
//
// Identity is the label LabelMetaDB=<name> on the container and on its
// named volume, never the name alone: an object with the name but not the
// label is someone else's and is reported, untouched. Concurrent runs on a
// fresh engine agree on one container because the engine lets only one of
// them create the name; the others find the winner by its label.
//
// The provider never removes, replaces or recreates the container or its
// volume: a container that is stopped is started, anything else that is
// wrong is an error that says what to look at. A silent new, empty meta DB
// would orphan every instance recorded in the old one.
//
// Credentials: the login is POSTGRES_USER of the official image's contract
// (a superuser of that server), created with a one-time bootstrap password
// in the container's environment (which `docker inspect` shows) and
// switched, on the first login, to a random password whose SCRAM verifier
// is all the server gets. That password is kept in a root-only file in the
// data volume, beside the data directory: anyone who can use the engine can
// read it (through exec), which is no more than they have anyway (engine
// access is root on its host, and can read the data files themselves);
// nobody without engine access can.

// Labels of the meta DB container (LabelMetaDB also on its volume).
const (
	// LabelMetaDB carries the meta DB's name: its identity.
	LabelMetaDB = "postgraas.metadb"
	// LabelMetaDBUser and LabelMetaDBDatabase are the login and database
	// the container was made with.
	LabelMetaDBUser     = "postgraas.metadb.user"
	LabelMetaDBDatabase = "postgraas.metadb.database"
	// LabelMetaDBMount is where the data volume is mounted;
	// LabelMetaDBCredentials is the file in it that keeps the password.
	LabelMetaDBMount       = "postgraas.metadb.mount"
	LabelMetaDBCredentials = "postgraas.metadb.credentials"
	// LabelMetaDBPGData, on the volume, is where the data directory is in
	// it, so a container made again on a kept volume finds its data.
	LabelMetaDBPGData = "postgraas.metadb.pgdata"
)

// Defaults of MetaDBConfig.
const (
	DefaultMetaDBName        = "postgraas-metadb"
	DefaultMetaDBBindAddress = "127.0.0.1"
	defaultMetaDBLogin       = "postgraas"
	// defaultPGData is the official image's data directory up to
	// PostgreSQL 17 (18 moved it, and declares its volume one level up).
	defaultPGData = "/var/lib/postgresql/data"
)

// MetaDBNamePattern is what a meta DB name may look like: a Docker
// container name, which also names the volume (<name>-data).
var MetaDBNamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,58}$`)

// MetaDBConfig says which meta DB container to find, and how to make it
// when there is none. Zero values mean the defaults.
type MetaDBConfig struct {
	// Name is the container's name and identity; "" means
	// DefaultMetaDBName. Its volume is <Name>-data.
	Name string
	// BindAddress is the engine-side address its port 5432 is published
	// on when it is made; "" means the engine's loopback (127.0.0.1).
	BindAddress string
	// User and Database are the login and database it is made with; ""
	// means postgraas. A container found keeps those it was made with.
	User, Database string
	// ConnectTimeout bounds each connection to it; 0 means the default.
	ConnectTimeout time.Duration
	// ReadyTimeout bounds the wait for its server to take the login; 0
	// means metaDBReadyTimeout.
	ReadyTimeout time.Duration
}

func (c MetaDBConfig) withDefaults() MetaDBConfig {
	if c.Name == "" {
		c.Name = DefaultMetaDBName
	}
	if c.BindAddress == "" {
		c.BindAddress = DefaultMetaDBBindAddress
	}
	if c.User == "" {
		c.User = defaultMetaDBLogin
	}
	if c.Database == "" {
		c.Database = defaultMetaDBLogin
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = metaDBReadyTimeout
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = reach.DefaultConnectTimeout
	}
	return c
}

// VolumeName is the name of the meta DB's data volume.
func (c MetaDBConfig) VolumeName() string { return c.withDefaults().Name + "-data" }

const (
	// metaDBReadyTimeout bounds the wait for a meta DB container's server:
	// a new one runs initdb first, which takes seconds, a minute on a
	// machine as loaded as the test machine can be.
	metaDBReadyTimeout = 5 * time.Minute
	// metaDBAppearWait bounds the wait for the container of a run that won
	// the create to show up in the engine's list.
	metaDBAppearWait = 10 * time.Second
)

// MetaDBError: the meta DB container (or its name or volume) cannot be
// used as it is. Nothing was changed.
type MetaDBError struct {
	Container string
	// Summary is a few words for a diagnostic's title.
	Summary string
	// Reason says what is wrong, a sentence about the container.
	Reason string
	// Advice says what to do.
	Advice string
	// Logs are the container's last log lines, when they tell why.
	Logs string
}

func (e *MetaDBError) Error() string {
	msg := e.Reason
	if e.Logs != "" {
		msg += "; last log lines:\n" + e.Logs
	}
	return msg
}

// MetaDB finds the meta DB container labelled cfg.Name, or makes it (with
// its volume) from the backend's image, starts it when it is stopped,
// waits until its server takes the login, and returns that login. Several
// runs calling it at once on a fresh engine end up with one container.
func (b *Backend) MetaDB(ctx context.Context, cfg MetaDBConfig) (pgsql.Target, error) {
	cfg = cfg.withDefaults()
	if err := b.engine(ctx); err != nil {
		return pgsql.Target{}, err
	}
	c, found, err := b.findMetaDB(ctx, cfg)
	if err != nil {
		return pgsql.Target{}, err
	}
	if !found {
		if c, err = b.createMetaDB(ctx, cfg); err != nil {
			return pgsql.Target{}, err
		}
	}
	if err := checkMetaDBContainer(c, cfg); err != nil {
		return pgsql.Target{}, err
	}
	return b.startMetaDB(ctx, c, cfg)
}

// MetaDBRunning reports, without changing anything, whether the meta DB
// container exists and runs: what a caller that must not make or start it
// (the reaper) needs to know before it uses the meta DB.
func (b *Backend) MetaDBRunning(ctx context.Context, cfg MetaDBConfig) (bool, error) {
	cfg = cfg.withDefaults()
	if err := b.engine(ctx); err != nil {
		return false, err
	}
	c, found, err := b.findMetaDB(ctx, cfg)
	if err != nil || !found {
		return false, err
	}
	return c.State != nil && c.State.Running && !c.State.Paused, nil
}

// CheckMetaDB reports, without changing anything, a meta DB container that
// cannot be used (a conflict, a broken or paused container). One that does
// not exist yet, or is stopped, is fine: the first use makes or starts it.
func (b *Backend) CheckMetaDB(ctx context.Context, cfg MetaDBConfig) error {
	cfg = cfg.withDefaults()
	if err := b.engine(ctx); err != nil {
		return err
	}
	c, found, err := b.findMetaDB(ctx, cfg)
	if err != nil || !found {
		return err
	}
	if err := checkMetaDBContainer(c, cfg); err != nil {
		return err
	}
	if c.State != nil && c.State.Paused {
		return metaDBPaused(cfg, c)
	}
	_, _, err = b.metaDBAddress(c)
	return err
}

// findMetaDB looks the container up by its label. found is false when
// there is none; an object with its name but not its label is an error.
func (b *Backend) findMetaDB(ctx context.Context, cfg MetaDBConfig) (c container.InspectResponse, found bool, err error) {
	list, err := b.cli.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", LabelMetaDB+"="+cfg.Name)),
	})
	if err != nil {
		return c, false, fmt.Errorf("listing containers labelled %s=%s: %w", LabelMetaDB, cfg.Name, err)
	}
	switch len(list) {
	case 0:
		return b.metaDBByName(ctx, cfg)
	case 1:
		c, err = b.cli.ContainerInspect(ctx, list[0].ID)
		if cerrdefs.IsNotFound(err) {
			// Removed since it was listed (by a human): as if not found.
			return b.metaDBByName(ctx, cfg)
		}
		if err != nil {
			return c, false, fmt.Errorf("inspecting meta DB container %q: %w", cfg.Name, err)
		}
		return c, true, nil
	}
	var names []string
	for _, s := range list {
		names = append(names, strings.Join(s.Names, ","))
	}
	return c, false, &MetaDBError{Container: cfg.Name, Summary: "several containers",
		Reason: fmt.Sprintf("%d containers carry the label %s=%s (%s); only one can be the meta DB",
			len(list), LabelMetaDB, cfg.Name, strings.Join(names, "; ")),
		Advice: "They were left as they are. Find the one that holds the instances' rows " +
			"(`docker exec <container> psql -U postgraas -c 'SELECT count(*) FROM db_instance'`) and rename or " +
			"remove the others (they were not made by this provider, which makes only one)."}
}

// metaDBByName looks at the container named cfg.Name: the meta DB when
// it carries the label (a container being created shows in inspect before
// it shows in the engine's list), else someone else's, never touched.
func (b *Backend) metaDBByName(ctx context.Context, cfg MetaDBConfig) (c container.InspectResponse, found bool, err error) {
	c, err = b.cli.ContainerInspect(ctx, cfg.Name)
	if cerrdefs.IsNotFound(err) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("inspecting container %q: %w", cfg.Name, err)
	}
	if c.Name != "/"+cfg.Name { // inspect matches ID prefixes too
		return c, false, nil
	}
	if c.Config != nil && c.Config.Labels[LabelMetaDB] == cfg.Name {
		return c, true, nil
	}
	return c, false, metaDBConflict(cfg, "a container")
}

func metaDBConflict(cfg MetaDBConfig, what string) error {
	return &MetaDBError{Container: cfg.Name, Summary: "name taken",
		Reason: fmt.Sprintf("%s named %q exists without the label %s=%s, so it is not the meta DB this provider made; "+
			"it was left untouched and nothing was created", what, nameOf(cfg, what), LabelMetaDB, cfg.Name),
		Advice: "Choose another name with metadb.container (POSTGRAAS_METADB_CONTAINER), remove that object if nothing " +
			"uses it, or set metadb.host (POSTGRAAS_METADB_HOST) to use a meta DB server instead."}
}

func nameOf(cfg MetaDBConfig, what string) string {
	if what == "a volume" {
		return cfg.VolumeName()
	}
	return cfg.Name
}

// metaDBLayout is where the data volume goes and where the data directory
// and the password file live in it, for an image: the volume replaces the
// image's volume that holds its PGDATA (so no anonymous volume is made
// beside it), the data directory is a subdirectory of it when PGDATA is
// the volume itself (as the official image's documentation recommends for
// mount points), and the password file sits beside the data directory.
func metaDBLayout(volumes map[string]struct{}, env []string) (mnt, pgdata, credentials string) {
	pgdata = defaultPGData
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PGDATA="); ok && strings.HasPrefix(v, "/") {
			pgdata = strings.TrimRight(v, "/")
		}
	}
	for _, v := range slices.Sorted(func(yield func(string) bool) {
		for k := range volumes {
			if !yield(strings.TrimRight(k, "/")) {
				return
			}
		}
	}) {
		if v != "" && (pgdata == v || strings.HasPrefix(pgdata, v+"/")) {
			mnt = v
		}
	}
	if mnt == "" {
		mnt = pgdata
	}
	if pgdata == mnt {
		pgdata = mnt + "/pgdata"
	}
	return mnt, pgdata, mnt + "/postgraas/password"
}

// createMetaDB makes the volume and the container (not started). When
// another run made the container first, it returns that one.
func (b *Backend) createMetaDB(ctx context.Context, cfg MetaDBConfig) (container.InspectResponse, error) {
	img := b.cfg.Image
	if err := b.ensureImage(ctx, img); err != nil {
		return container.InspectResponse{}, err
	}
	ii, err := b.cli.ImageInspect(ctx, img)
	if err != nil {
		return container.InspectResponse{}, fmt.Errorf("inspecting image %q: %w", img, err)
	}
	var imgVolumes map[string]struct{}
	var imgEnv []string
	if ii.Config != nil {
		imgVolumes, imgEnv = ii.Config.Volumes, ii.Config.Env
	}
	mnt, pgdata, credentials := metaDBLayout(imgVolumes, imgEnv)

	// Creating a volume that exists returns it as it is: its labels say
	// whether it is ours, and where in it the data directory is.
	rel := strings.TrimPrefix(pgdata, mnt+"/")
	vol, err := b.cli.VolumeCreate(ctx, volume.CreateOptions{Name: cfg.VolumeName(),
		Labels: map[string]string{LabelMetaDB: cfg.Name, LabelMetaDBPGData: rel}})
	if err != nil {
		return container.InspectResponse{}, fmt.Errorf("creating volume %q: %w", cfg.VolumeName(), err)
	}
	if vol.Labels[LabelMetaDB] != cfg.Name {
		return container.InspectResponse{}, metaDBConflict(cfg, "a volume")
	}
	// A volume kept from a container that was removed: its data directory
	// stays where it was, whatever this image would choose. Otherwise a
	// new image that puts PGDATA elsewhere (postgres:18 does) would start
	// an empty meta DB beside the old one; this way a server that cannot
	// read the old one fails to start, and says why.
	if kept := vol.Labels[LabelMetaDBPGData]; kept != rel {
		if clean := path.Clean(kept); kept == "" || path.IsAbs(clean) || clean == "." || strings.HasPrefix(clean, "..") {
			return container.InspectResponse{}, &MetaDBError{Container: cfg.Name, Summary: "broken",
				Reason: fmt.Sprintf("volume %s carries the label %s=%s but its label %s=%q is not a directory in it; nothing was created",
					cfg.VolumeName(), LabelMetaDB, cfg.Name, LabelMetaDBPGData, kept),
				Advice: "Look at `docker volume inspect " + cfg.VolumeName() + "`; this provider labels the volumes it makes with the data directory's path in them."}
		}
		pgdata = mnt + "/" + path.Clean(kept)
	}

	port := nat.Port(pgPort)
	config := &container.Config{
		Image: img,
		// Shown by `docker inspect`: a one-time bootstrap password, replaced
		// by the kept one's verifier on the first login.
		Env: []string{
			"POSTGRES_USER=" + cfg.User,
			"POSTGRES_PASSWORD=" + selfhosted.RandomSecret(),
			"POSTGRES_DB=" + cfg.Database,
			"PGDATA=" + pgdata,
		},
		ExposedPorts: nat.PortSet{port: {}},
		Labels: map[string]string{
			LabelMetaDB:            cfg.Name,
			LabelMetaDBUser:        cfg.User,
			LabelMetaDBDatabase:    cfg.Database,
			LabelMetaDBMount:       mnt,
			LabelMetaDBCredentials: credentials,
			LabelImage:             img,
		},
	}
	host := &container.HostConfig{
		PortBindings:  nat.PortMap{port: {{HostIP: cfg.BindAddress, HostPort: ""}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
		Mounts:        []mount.Mount{{Type: mount.TypeVolume, Source: cfg.VolumeName(), Target: mnt}},
	}
	// Detached, as for instances: a create the engine finishes after the
	// caller gave up must still be found (it is, by its label, next time).
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	_, err = b.cli.ContainerCreate(cctx, config, host, nil, nil, cfg.Name)
	if err != nil && !cerrdefs.IsConflict(err) {
		return container.InspectResponse{}, fmt.Errorf("creating meta DB container %q from image %q: %w", cfg.Name, img, err)
	}
	// Made by this run or, on a conflict, by another one that won the
	// name: either way it is found by its label. The winner's container
	// may take a moment to show in the list.
	deadline := time.Now().Add(metaDBAppearWait)
	for {
		c, found, ferr := b.findMetaDB(ctx, cfg)
		if ferr != nil || found {
			return c, ferr
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("creating meta DB container %q: the engine reported the name taken, but no container "+
				"with the name or the label %s=%s appeared within %s", cfg.Name, LabelMetaDB, cfg.Name, metaDBAppearWait)
		}
		select {
		case <-ctx.Done():
			return c, context.Cause(ctx)
		case <-time.After(b.cfg.ReadyPollInterval):
		}
	}
}

// checkMetaDBContainer refuses a container that carries the label but was
// not made as a meta DB: without the labels that say where its password is,
// or without its data volume where they say.
func checkMetaDBContainer(c container.InspectResponse, cfg MetaDBConfig) error {
	broken := func(why string) error {
		return &MetaDBError{Container: cfg.Name, Summary: "broken",
			Reason: fmt.Sprintf("container %s carries the label %s=%s, but %s; it was left as it is and nothing new "+
				"was created", strings.TrimPrefix(c.Name, "/"), LabelMetaDB, cfg.Name, why),
			Advice: "Look at it with `docker inspect " + strings.TrimPrefix(c.Name, "/") + "`. If it is not the meta DB, " +
				"remove its label by recreating it, or choose another metadb.container; if it is, restore what is missing."}
	}
	if c.Config == nil || c.HostConfig == nil {
		return broken("the engine does not show its configuration")
	}
	l := c.Config.Labels
	for _, k := range []string{LabelMetaDBUser, LabelMetaDBDatabase, LabelMetaDBMount, LabelMetaDBCredentials} {
		if l[k] == "" {
			return broken("it has no label " + k)
		}
	}
	if !strings.HasPrefix(l[LabelMetaDBCredentials], l[LabelMetaDBMount]+"/") {
		return broken(fmt.Sprintf("its password file %s is not in its data volume at %s", l[LabelMetaDBCredentials], l[LabelMetaDBMount]))
	}
	for _, m := range c.Mounts {
		if m.Destination == l[LabelMetaDBMount] {
			if m.Type != mount.TypeVolume || m.Name != cfg.VolumeName() {
				return broken(fmt.Sprintf("what is mounted at %s is not the volume %s (%s %s)",
					m.Destination, cfg.VolumeName(), m.Type, m.Name+m.Source))
			}
			return nil
		}
	}
	return broken(fmt.Sprintf("it does not mount its data volume %s at %s", cfg.VolumeName(), l[LabelMetaDBMount]))
}

// startMetaDB starts the container when it is not running, makes sure it
// keeps a password and that its server takes it, and returns the login.
func (b *Backend) startMetaDB(ctx context.Context, c container.InspectResponse, cfg MetaDBConfig) (pgsql.Target, error) {
	name := strings.TrimPrefix(c.Name, "/")
	state := "unknown"
	if c.State != nil {
		state = c.State.Status
	}
	switch {
	case c.State != nil && c.State.Paused:
		return pgsql.Target{}, metaDBPaused(cfg, c)
	case state == "dead" || state == "removing":
		return pgsql.Target{}, &MetaDBError{Container: cfg.Name, Summary: "broken",
			Reason: fmt.Sprintf("container %s is %s; it was left as it is and nothing new was created", name, state),
			Advice: fmt.Sprintf("Look at `docker inspect %s` and the engine's log. Its data is in the volume %s.", name, cfg.VolumeName())}
	case c.State != nil && c.State.Restarting:
		return pgsql.Target{}, b.metaDBStopped(ctx, c.ID, cfg, "it keeps exiting (Docker is restarting it)")
	case c.State == nil || !c.State.Running:
		if err := b.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			// Another run may have started it meanwhile: only a container
			// that still does not run is a failure.
			if c2, ierr := b.cli.ContainerInspect(ctx, c.ID); ierr != nil || c2.State == nil || !c2.State.Running {
				return pgsql.Target{}, b.metaDBStopped(ctx, c.ID, cfg, fmt.Sprintf("it could not be started (%v)", err))
			}
		}
	}
	host, dial, err := b.metaDBAddress(c)
	if err != nil {
		return pgsql.Target{}, err
	}
	// Read after a start: the port is published only while it runs, and
	// a start may reset the restart count.
	c, err = b.cli.ContainerInspect(ctx, c.ID)
	if err != nil {
		return pgsql.Target{}, fmt.Errorf("inspecting meta DB container %q: %w", name, err)
	}
	l := c.Config.Labels
	t := pgsql.Target{
		Host:           host,
		Dial:           dial,
		Database:       l[LabelMetaDBDatabase],
		User:           l[LabelMetaDBUser],
		SSLMode:        "prefer",
		ConnectTimeout: cfg.ConnectTimeout,
		Component:      reach.MetaDBContainer,
	}
	login := &metaDBLogin{b: b, name: name, id: c.ID, file: l[LabelMetaDBCredentials], target: t, bootstrap: envValue(c.Config.Env, "POSTGRES_PASSWORD")}
	if login.password, err = login.credentials(ctx, ""); err != nil {
		return pgsql.Target{}, b.metaDBExecFailed(ctx, c.ID, c.RestartCount, cfg, err)
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	port, err := b.untilLogin(wctx, c.ID, c.RestartCount, func(port int) error {
		login.target.Port = port
		err := login.attempt(wctx)
		var se *sshError
		if errors.As(err, &se) && strings.Contains(se.stderr, "prohibited") {
			return &selfhosted.StopWaiting{Err: &MetaDBError{Container: name, Summary: "ssh forwarding refused",
				Reason: fmt.Sprintf("the meta DB in container %s is published on the engine's loopback, reached through "+
					"ssh -W, and the engine's sshd refused to forward: %v", name, err),
				Advice: "Allow TCP forwarding for this login on the engine's sshd (AllowTcpForwarding, its default is yes), " +
					"or set metadb.host to use a meta DB server."}}
		}
		return err
	})
	var stopped *containerStopped
	var stop *selfhosted.StopWaiting
	switch {
	case err == nil:
	case errors.As(err, &stopped):
		return pgsql.Target{}, b.metaDBStopped(ctx, c.ID, cfg, stopped.Error())
	case errors.As(err, &stop):
		return pgsql.Target{}, stop.Err
	case ctx.Err() == nil && wctx.Err() != nil:
		return pgsql.Target{}, &MetaDBError{Container: cfg.Name, Summary: "not ready",
			Reason: fmt.Sprintf("the server in container %s did not take its login within %s: %v", name, cfg.ReadyTimeout, err),
			Advice: fmt.Sprintf("Look at `docker logs %s`; from this machine, its published port must be reachable.", name),
			Logs:   b.tailLogs(ctx, c.ID)}
	default:
		return pgsql.Target{}, err
	}
	t = login.target
	t.Port, t.Password = port, login.password
	return t, nil
}

func metaDBPaused(cfg MetaDBConfig, c container.InspectResponse) error {
	name := strings.TrimPrefix(c.Name, "/")
	return &MetaDBError{Container: cfg.Name, Summary: "paused",
		Reason: fmt.Sprintf("container %s is paused, so the meta DB cannot answer", name),
		Advice: fmt.Sprintf("Unpause it (`docker unpause %s`) once whatever paused it is done.", name)}
}

// metaDBStopped is the error for a meta DB container whose server does not
// run, with its last log lines.
func (b *Backend) metaDBStopped(ctx context.Context, id string, cfg MetaDBConfig, what string) error {
	lctx, cancel := cleanupContext(ctx)
	defer cancel()
	time.Sleep(logSettle)
	return &MetaDBError{Container: cfg.Name, Summary: "did not start",
		Reason: fmt.Sprintf("meta DB container %s does not run: %s; it was left as it is and nothing new was created", cfg.Name, what),
		Advice: fmt.Sprintf("Look at `docker logs %s`: a data directory from another PostgreSQL major version (the image "+
			"changed) or a full disk are usual causes. Its data is in the volume %s.", cfg.Name, cfg.VolumeName()),
		Logs: b.tailLogs(lctx, id)}
}

// execExitSettle is how long a failed exec waits for the engine to record
// that the container exited.
const execExitSettle = 2 * time.Second

// metaDBExecFailed is the error for a failed look at the password file:
// the container stopping meanwhile says more than the exec's error. Under
// unless-stopped a server that exits is restarted at once, so an exec can
// meet it between two runs (sh exits 126) while inspect already shows it
// running again: a restart count above the one seen after the start
// (restarts) is the sign. The exec can also end first, its sh killed
// (137) as the container's first process exits, while inspect still shows
// the container running: the engine has not recorded the exit yet (seen on
// a fast machine), so inspect is asked again for up to execExitSettle.
func (b *Backend) metaDBExecFailed(ctx context.Context, id string, restarts int, cfg MetaDBConfig, err error) error {
	for settled := time.Now().Add(execExitSettle); ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		c, ierr := b.cli.ContainerInspect(ctx, id)
		if ierr == nil && (c.State == nil || !c.State.Running || c.State.Restarting || c.RestartCount > restarts) {
			return b.metaDBStopped(ctx, id, cfg, "it stopped right after it was started")
		}
		if ierr != nil || time.Now().After(settled) {
			break
		}
	}
	var me *MetaDBError
	if errors.As(err, &me) {
		return err
	}
	return fmt.Errorf("reading the meta DB's password file in container %q: %w", cfg.Name, err)
}

// metaDBAddress is where this machine reaches the container's published
// port: the published address when it is a specific one, the advertised
// host for one published on every address (as for instances), and for the
// engine's loopback either the loopback itself (an engine on this
// machine) or, on an ssh:// engine, the loopback at the far end of an ssh
// connection (ssh -W). A tcp:// engine on another machine cannot reach its
// loopback from here.
func (b *Backend) metaDBAddress(c container.InspectResponse) (host string, dial func(context.Context, string, string) (net.Conn, error), err error) {
	name := strings.TrimPrefix(c.Name, "/")
	var bindings []nat.PortBinding
	if c.HostConfig != nil {
		bindings = c.HostConfig.PortBindings[pgPort]
	}
	if len(bindings) == 0 {
		return "", nil, &MetaDBError{Container: name, Summary: "port not published",
			Reason: fmt.Sprintf("container %s does not publish port %s, so the provider cannot reach the meta DB in it", name, pgPort),
			Advice: "It was not made by this provider as it is now; look at `docker inspect " + name + "`, or set metadb.host to use a meta DB server."}
	}
	hostIP := bindings[0].HostIP
	ip := net.ParseIP(hostIP)
	switch {
	case ip == nil || ip.IsUnspecified():
		return b.cfg.AdvertisedHost, nil, nil
	case !ip.IsLoopback():
		return hostIP, nil, nil
	case b.ssh != nil:
		return hostIP, b.ssh.forward, nil
	case b.dialNet == "unix" || (b.dialNet == "tcp" && isLocalHost(b.dialAddr)):
		return hostIP, nil, nil
	}
	return "", nil, &MetaDBError{Container: name, Summary: "unreachable",
		Reason: fmt.Sprintf("container %s publishes the meta DB on the engine's loopback (%s), which this machine cannot "+
			"reach: the engine at %s is on another machine", name, hostIP, b.engineAddr),
		Advice: "Use an ssh:// engine address (the provider then reaches the loopback through ssh), or set metadb.host to a " +
			"meta DB server. A meta DB container made with metadb.container_bind_address set to an address this machine " +
			"reaches (with a firewall in front) works too, but an existing container keeps the address it was made with."}
}

// isLocalHost reports whether the host of a host:port address is this
// machine.
func isLocalHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ips := []net.IP{net.ParseIP(host)}
	if ips[0] == nil {
		ips, _ = net.LookupIP(host)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, ip := range ips {
		if ip.IsLoopback() {
			return true
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return true
			}
		}
	}
	return false
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// metaDBLogin finds the password that the meta DB container's server
// takes: the kept one, or, on a container whose server still has its
// bootstrap password, a new one kept and set now.
type metaDBLogin struct {
	b         *Backend
	name, id  string
	file      string // the password file in the container
	target    pgsql.Target
	bootstrap string
	password  string // the kept password, "" while there is none
}

// credentialsScript reads the password file (read), or keeps the password
// on its standard input in it unless it holds one already (keep), and
// prints the one it holds. The file is written under another name and
// then hard-linked into place, which fails when the name exists, so of
// several runs keeping one at once exactly one wins and all of them print
// the winner's, and no run can see a partly written file. The file belongs
// to root, mode 0600: not even the server (which runs as postgres) reads
// it. The password is one line: read does not wait for the end of the
// input, which an ssh:// engine cannot signal.
const credentialsScript = `set -eu
f=$2
if [ "$1" = keep ]; then
	IFS= read -r new
	umask 077
	mkdir -p "${f%/*}"
	if [ ! -e "$f" ]; then
		printf '%s\n' "$new" >"$f.$$"
		ln "$f.$$" "$f" 2>/dev/null || true
		rm -f "$f.$$"
	fi
fi
if [ -e "$f" ]; then cat "$f"; fi
`

// credentials reads the password file, or with a non-empty password
// keeps that one unless the file holds one, and returns what the file
// holds ("" for none).
func (l *metaDBLogin) credentials(ctx context.Context, password string) (string, error) {
	mode := "read"
	if password != "" {
		mode = "keep"
	}
	ctx, cancel := context.WithTimeout(ctx, selfhosted.PsqlTimeout)
	defer cancel()
	out, code, err := l.b.execStdin(ctx, l.id, container.ExecOptions{
		Cmd:  []string{"sh", "-c", credentialsScript, "sh", mode, l.file},
		User: "0",
	}, password+"\n")
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", fmt.Errorf("sh exited with code %d: %s", code, selfhosted.Redact(strings.TrimSpace(out.stderr), password))
	}
	kept := strings.TrimSpace(out.stdout)
	if mode == "read" && kept == "" && strings.TrimSpace(out.stderr) != "" {
		return "", fmt.Errorf("reading %s: %s", l.file, strings.TrimSpace(out.stderr))
	}
	return kept, nil
}

// attempt is one readiness attempt: log in with the kept password; when
// the server refuses it (or none is kept yet), log in with the bootstrap
// password and set the kept one (keeping a new one first when there is
// none). Another run may do the same at the same moment: the kept password
// is the same for all, and a bootstrap login refused because another run
// just replaced it is followed by one more try of the kept one.
func (l *metaDBLogin) attempt(ctx context.Context) error {
	if l.password != "" {
		err := l.try(ctx, l.password)
		if err == nil || !pgsql.IsAuthFailure(err) {
			return err
		}
	}
	bt := l.target
	bt.Password = l.bootstrap
	cctx, cancel := context.WithTimeout(ctx, l.stepTimeout())
	conn, err := bt.ConnectOnce(cctx)
	cancel()
	if err != nil && !pgsql.IsAuthFailure(err) {
		return err
	}
	if err != nil {
		// Neither works, unless another run has just kept and set one.
		if l.password, err = l.credentials(ctx, ""); err != nil {
			return err
		}
		if l.password == "" {
			return &selfhosted.StopWaiting{Err: l.refused("it keeps no password file (" + l.file + ")")}
		}
		if err := l.try(ctx, l.password); err == nil || !pgsql.IsAuthFailure(err) {
			return err
		}
		return &selfhosted.StopWaiting{Err: l.refused("its server refuses the password kept in " + l.file)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if l.password == "" {
		if l.password, err = l.credentials(ctx, newMetaDBPassword()); err != nil {
			return err
		}
		if l.password == "" {
			return fmt.Errorf("the password file %s is still empty after keeping one", l.file)
		}
	}
	verifier, err := pgsql.ScramVerifier(l.password)
	if err != nil {
		return err
	}
	// A step of its own: keeping the password may have taken a while.
	actx, cancel := context.WithTimeout(ctx, l.stepTimeout())
	defer cancel()
	_, err = conn.Exec(actx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier))
	return err
}

// stepTimeout bounds each connect and statement of an attempt: the
// connect timeout, at least attemptTimeout. Unlike an instance's
// readiness, which gets a new container's few seconds, the meta DB's may
// meet a machine so loaded (load average 50 on 2 cores was seen) that a
// login through docker-proxy takes seconds; steps cut off shorter than
// that would keep failing until the wait's end.
func (l *metaDBLogin) stepTimeout() time.Duration {
	return max(attemptTimeout, l.target.ConnectTimeout)
}

// try logs in with password.
func (l *metaDBLogin) try(ctx context.Context, password string) error {
	t := l.target
	t.Password = password
	ctx, cancel := context.WithTimeout(ctx, l.stepTimeout())
	defer cancel()
	conn, err := t.ConnectOnce(ctx)
	if err == nil {
		_ = conn.Close(ctx)
	}
	return err
}

func (l *metaDBLogin) refused(what string) error {
	user, c := l.target.User, l.name
	return &MetaDBError{Container: c, Summary: "login refused",
		Reason: fmt.Sprintf("meta DB container %s does not let %q log in: %s, and its one-time bootstrap password no longer "+
			"works; it was left as it is and nothing new was created", c, user, what),
		Advice: fmt.Sprintf("Someone changed the role's password or the file. Set one to the other: read the kept one with "+
			"`docker exec %s cat %s` and set it with `docker exec -it %s psql -U %s -d %s -c '\\password %s'`. Or set "+
			"metadb.host to use a meta DB server.", c, l.file, c, user, l.target.Database, user)}
}

// newMetaDBPassword is 256 random bits, hex: no character that a shell,
// a connection string or a URI would need to quote.
func newMetaDBPassword() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err))
	}
	return hex.EncodeToString(b)
}
