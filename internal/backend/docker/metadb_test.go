package docker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

func TestMetaDBLayout(t *testing.T) {
	for _, c := range []struct {
		name                     string
		volumes                  map[string]struct{}
		env                      []string
		mnt, pgdata, credentials string
	}{
		{"postgres:17 and the stand-in", map[string]struct{}{"/var/lib/postgresql/data": {}}, []string{"PGDATA=/var/lib/postgresql/data"},
			"/var/lib/postgresql/data", "/var/lib/postgresql/data/pgdata", "/var/lib/postgresql/data/postgraas/password"},
		{"postgres:18", map[string]struct{}{"/var/lib/postgresql": {}}, []string{"PGDATA=/var/lib/postgresql/18/docker"},
			"/var/lib/postgresql", "/var/lib/postgresql/18/docker", "/var/lib/postgresql/postgraas/password"},
		{"no volume, no PGDATA", nil, nil,
			"/var/lib/postgresql/data", "/var/lib/postgresql/data/pgdata", "/var/lib/postgresql/data/postgraas/password"},
		{"PGDATA in a subdirectory of the volume", map[string]struct{}{"/data/": {}, "/other": {}}, []string{"PGDATA=/data/pg/"},
			"/data", "/data/pg", "/data/postgraas/password"},
	} {
		mnt, pgdata, credentials := metaDBLayout(c.volumes, c.env)
		if mnt != c.mnt || pgdata != c.pgdata || credentials != c.credentials {
			t.Errorf("%s: got %s, %s, %s; want %s, %s, %s", c.name, mnt, pgdata, credentials, c.mnt, c.pgdata, c.credentials)
		}
	}
}

func TestMetaDBNamePattern(t *testing.T) {
	for name, ok := range map[string]bool{
		"postgraas-metadb": true, "a": true, "ci_meta.db-2": true, "-x": false, "": false, "a/b": false,
		"x" + strings.Repeat("y", 58): true, "x" + strings.Repeat("y", 59): false,
	} {
		if got := MetaDBNamePattern.MatchString(name); got != ok {
			t.Errorf("%q: matched %v, want %v", name, got, ok)
		}
	}
}

// metaDBTestLimit bounds what a test waits for a meta DB container; it
// only catches a hang: with other suites on the 2-core machine (load
// average 36), making one took over three minutes.
const metaDBTestLimit = 10 * time.Minute

// metaDBName is a meta DB of the test's own (the engine is shared), whose
// containers and volume the test removes when it ends: tests may remove
// what they made, the provider never does.
func metaDBName(t *testing.T, e env) string {
	t.Helper()
	name := "pgtest-metadb-" + randHex(5)
	t.Cleanup(func() { removeMetaDB(t, e, name) })
	return name
}

func removeMetaDB(t *testing.T, e env, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range metaDBContainers(t, e, name) {
		if err := e.b.remove(ctx, id); err != nil {
			t.Errorf("cleanup of meta DB container %s: %v", id, err)
		}
	}
	if err := e.b.remove(ctx, name); err != nil {
		t.Errorf("cleanup of container %s: %v", name, err)
	}
	if err := e.b.cli.VolumeRemove(ctx, name+"-data", true); err != nil && !cerrdefs.IsNotFound(err) {
		t.Errorf("cleanup of volume %s-data: %v", name, err)
	}
}

// metaDBContainers lists the IDs of the containers labelled as meta DB name.
func metaDBContainers(t *testing.T, e env, name string) []string {
	t.Helper()
	list, err := e.b.cli.ContainerList(ctxFor(t, 30*time.Second), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelMetaDB+"="+name))})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	return ids
}

func metaDBVolumes(t *testing.T, e env, name string) []string {
	t.Helper()
	list, err := e.b.cli.VolumeList(ctxFor(t, 30*time.Second), volume.ListOptions{
		Filters: filters.NewArgs(filters.Arg("label", LabelMetaDB+"="+name))})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range list.Volumes {
		names = append(names, v.Name)
	}
	return names
}

// metaDBExec runs a shell command in the container as root.
func metaDBExec(t *testing.T, e env, id, script string) string {
	t.Helper()
	out, code, err := e.b.execStdin(ctxFor(t, time.Minute), id, container.ExecOptions{Cmd: []string{"sh", "-c", script}, User: "0"}, "")
	if err != nil || code != 0 {
		t.Fatalf("exec %q: code %d, %v, %s", script, code, err, out.stderr)
	}
	return out.stdout
}

// sql runs statements on target and returns the first column of the last
// row of the last one.
func sql(t *testing.T, target pgsql.Target, stmts ...string) string {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	conn, err := target.Connect(ctx)
	if err != nil {
		t.Fatalf("login to the meta DB at %s: %v", target, err)
	}
	defer conn.Close(ctx)
	var v string
	for _, s := range stmts {
		rows, err := conn.Query(ctx, s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			if len(vals) > 0 {
				v, _ = vals[0].(string)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	return v
}

func TestMetaDBConcurrentRunsMakeOne(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	cfg := MetaDBConfig{Name: name}

	// Four runs on an engine without this meta DB, each with its own
	// client, as four terraform processes would be.
	const runs = 4
	targets := make([]pgsql.Target, runs)
	errs := make([]error, runs)
	var wg sync.WaitGroup
	start := make(chan struct{})
	began := time.Now()
	for i := range runs {
		b := newEnv(t, nil).b
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			targets[i], errs[i] = b.MetaDB(ctxFor(t, metaDBTestLimit), cfg)
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("%d concurrent runs had the meta DB ready after %s", runs, time.Since(began).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	ids := metaDBContainers(t, e, name)
	if len(ids) != 1 {
		t.Fatalf("%d containers labelled %s=%s, want 1: %v", len(ids), LabelMetaDB, name, ids)
	}
	if vols := metaDBVolumes(t, e, name); len(vols) != 1 || vols[0] != name+"-data" {
		t.Fatalf("volumes labelled %s=%s: %v, want [%s-data]", LabelMetaDB, name, vols, name)
	}
	for i, tg := range targets[1:] {
		if tg.Password != targets[0].Password || tg.Port != targets[0].Port || tg.Host != targets[0].Host {
			t.Errorf("run %d got another login (%s) than run 0 (%s), or another password", i+1, tg, targets[0])
		}
	}
	tg := targets[0]
	if tg.User != "postgraas" || tg.Database != "postgraas" || len(tg.Password) != 64 || tg.Host != "127.0.0.1" {
		t.Errorf("login %s with a password of %d characters", tg, len(tg.Password))
	}
	sql(t, tg, "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('row')")

	c, _ := e.inspect(t, ids[0])
	if c.Name != "/"+name || c.HostConfig.RestartPolicy.Name != container.RestartPolicyUnlessStopped {
		t.Errorf("container %s, restart policy %q", c.Name, c.HostConfig.RestartPolicy.Name)
	}
	if b := c.NetworkSettings.Ports[pgPort]; len(b) != 1 || b[0].HostIP != "127.0.0.1" {
		t.Errorf("port published on %+v, want the loopback only", b)
	}
	// The kept password shows nowhere in what the engine tells about the
	// container; the bootstrap password there no longer logs in.
	raw, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), tg.Password) {
		t.Error("docker inspect shows the meta DB password")
	}
	boot := tg
	boot.Password = envValue(c.Config.Env, "POSTGRES_PASSWORD")
	if err := passwordRefused(boot); err != nil {
		t.Errorf("bootstrap password: %v", err)
	}
	// Kept in the volume, root's only.
	if got := metaDBExec(t, e, ids[0], "stat -c '%U %a' "+c.Config.Labels[LabelMetaDBCredentials]); strings.TrimSpace(got) != "root 600" {
		t.Errorf("password file owner and mode %q, want root 600", got)
	}

	// A later run finds it, by its label, and logs in with the same password.
	again, err := newEnv(t, nil).b.MetaDB(ctxFor(t, metaDBTestLimit), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.Password != tg.Password || metaDBContainers(t, e, name)[0] != ids[0] {
		t.Error("a later run did not use the same container and password")
	}
	if v := sql(t, again, "SELECT v FROM kept"); v != "row" {
		t.Errorf("read %q back, want the row written before", v)
	}
}

// passwordRefused checks that the server refuses target's password.
func passwordRefused(target pgsql.Target) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := target.ConnectOnce(ctx)
	if err == nil {
		conn.Close(ctx)
		return errors.New("logs in")
	}
	if !pgsql.IsAuthFailure(err) {
		return err
	}
	return nil
}

// newMetaDB makes meta DB name and returns its login and container ID.
func newMetaDB(t *testing.T, e env, name string) (pgsql.Target, string) {
	t.Helper()
	tg, err := e.b.MetaDB(ctxFor(t, metaDBTestLimit), MetaDBConfig{Name: name})
	if err != nil {
		t.Fatalf("MetaDB: %v", err)
	}
	ids := metaDBContainers(t, e, name)
	if len(ids) != 1 {
		t.Fatalf("containers %v", ids)
	}
	return tg, ids[0]
}

func TestMetaDBStoppedIsStarted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	tg, id := newMetaDB(t, e, name)
	sql(t, tg, "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('row')")
	if err := e.b.cli.ContainerStop(ctxFor(t, time.Minute), id, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}

	again, err := e.b.MetaDB(ctxFor(t, metaDBTestLimit), MetaDBConfig{Name: name})
	if err != nil {
		t.Fatalf("MetaDB of a stopped meta DB container: %v", err)
	}
	if c, _ := e.inspect(t, id); !c.State.Running {
		t.Errorf("container %s is %s, want running", id, c.State.Status)
	}
	if ids := metaDBContainers(t, e, name); len(ids) != 1 || ids[0] != id {
		t.Errorf("containers %v, want only %s", ids, id)
	}
	if v := sql(t, again, "SELECT v FROM kept"); v != "row" {
		t.Errorf("read %q back, want the row written before it stopped", v)
	}
}

// wantMetaDBError checks that err is a *MetaDBError with that summary
// whose text or advice names want.
func wantMetaDBError(t *testing.T, err error, summary, want string) {
	t.Helper()
	var me *MetaDBError
	if !errors.As(err, &me) {
		t.Fatalf("got %v (%T), want a MetaDBError %q", err, err, summary)
	}
	if me.Summary != summary || !strings.Contains(me.Error()+" "+me.Advice, want) || me.Advice == "" {
		t.Errorf("got %q: %s (advice %q), want %q naming %q", me.Summary, me.Error(), me.Advice, summary, want)
	}
}

func TestMetaDBRefusingItsLoginIsAnError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	tg, id := newMetaDB(t, e, name)
	// Someone changes the role's password behind the provider's back.
	other, err := pgsql.ScramVerifier("changed-" + randHex(8))
	if err != nil {
		t.Fatal(err)
	}
	sql(t, tg, "ALTER ROLE postgraas PASSWORD "+pgsql.QuoteLiteral(other))

	start := time.Now()
	_, err = newEnv(t, nil).b.MetaDB(ctxFor(t, metaDBTestLimit), MetaDBConfig{Name: name})
	wantMetaDBError(t, err, "login refused", "refuses the password kept in")
	t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if strings.Contains(err.Error(), tg.Password) {
		t.Error("the error shows the kept password")
	}
	if ids := metaDBContainers(t, e, name); len(ids) != 1 || ids[0] != id {
		t.Errorf("containers %v, want only %s: nothing new may be made", ids, id)
	}
	if vols := metaDBVolumes(t, e, name); len(vols) != 1 {
		t.Errorf("volumes %v", vols)
	}
}

func TestMetaDBNameOrVolumeOfSomeoneElse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := ctxFor(t, metaDBTestLimit)

	// A container with the name but not the label.
	name := metaDBName(t, e)
	c, err := e.b.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Labels: map[string]string{"other": "x"}}, nil, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.b.MetaDB(ctx, MetaDBConfig{Name: name})
	wantMetaDBError(t, err, "name taken", "a container named")
	if err := e.b.CheckMetaDB(ctx, MetaDBConfig{Name: name}); err == nil {
		t.Error("CheckMetaDB found no conflict")
	}
	if got, ok := e.inspect(t, name); !ok || got.ID != c.ID || got.State.Running {
		t.Errorf("the other container was changed: %+v", got.State)
	}
	if _, err := e.b.cli.VolumeInspect(ctx, name+"-data"); !cerrdefs.IsNotFound(err) {
		t.Errorf("a volume was made for it (%v)", err)
	}

	// A volume with the name but not the label.
	name2 := metaDBName(t, e)
	if _, err := e.b.cli.VolumeCreate(ctx, volume.CreateOptions{Name: name2 + "-data"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.b.MetaDB(ctx, MetaDBConfig{Name: name2})
	wantMetaDBError(t, err, "name taken", "a volume named")
	if _, ok := e.inspect(t, name2); ok {
		t.Error("a container was made on someone else's volume")
	}
}

func TestMetaDBWithoutItsVolumeIsBroken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	ctx := ctxFor(t, metaDBTestLimit)
	// Labelled as the meta DB, but its data is not in the meta DB's volume.
	_, err := e.b.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Labels: map[string]string{
		LabelMetaDB: name, LabelMetaDBUser: "postgraas", LabelMetaDBDatabase: "postgraas",
		LabelMetaDBMount: "/var/lib/postgresql/data", LabelMetaDBCredentials: "/var/lib/postgresql/data/postgraas/password",
	}}, nil, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.b.MetaDB(ctx, MetaDBConfig{Name: name})
	wantMetaDBError(t, err, "broken", "is not the volume "+name+"-data")
	if err := e.b.CheckMetaDB(ctx, MetaDBConfig{Name: name}); err == nil {
		t.Error("CheckMetaDB found nothing wrong")
	}
	if ids := metaDBContainers(t, e, name); len(ids) != 1 {
		t.Errorf("containers %v", ids)
	}
	if c, _ := e.inspect(t, name); c.State.Running {
		t.Error("the broken container was started")
	}
	if vols := metaDBVolumes(t, e, name); len(vols) != 0 {
		t.Errorf("volumes %v were made", vols)
	}
}

// On an ssh:// engine the meta DB stays on the engine's loopback and is
// reached through ssh -W.
func TestMetaDBOverSSH(t *testing.T) {
	t.Parallel()
	host := sshHostOrSkip(t)
	e := newEnv(t, func(c *Config) { c.Host = host })
	name := metaDBName(t, e)
	tg, err := e.b.MetaDB(ctxFor(t, metaDBTestLimit), MetaDBConfig{Name: name})
	if err != nil {
		t.Fatalf("MetaDB over %s: %v", host, err)
	}
	if tg.Dial == nil || tg.Host != "127.0.0.1" {
		t.Fatalf("login %s (through ssh: %v), want the engine's loopback through ssh", tg, tg.Dial != nil)
	}
	if v := sql(t, tg, "SELECT current_user::text"); v != "postgraas" {
		t.Errorf("current_user %q", v)
	}
}

func TestMetaDBAddress(t *testing.T) {
	on := func(ip string) container.InspectResponse {
		return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{Name: "/m", HostConfig: &container.HostConfig{
			PortBindings: map[nat.Port][]nat.PortBinding{pgPort: {{HostIP: ip}}}}}}
	}
	ssh := &sshTarget{host: "h"}
	for _, c := range []struct {
		b         *Backend
		ip, host  string
		tunnel    bool
		summaryIf string
	}{
		{&Backend{dialNet: "unix"}, "127.0.0.1", "127.0.0.1", false, ""},
		{&Backend{dialNet: "tcp", dialAddr: "127.0.0.1:2375"}, "127.0.0.1", "127.0.0.1", false, ""},
		{&Backend{dialNet: "tcp", dialAddr: "192.0.2.7:2375"}, "127.0.0.1", "", false, "unreachable"},
		{&Backend{ssh: ssh}, "127.0.0.1", "127.0.0.1", true, ""},
		{&Backend{ssh: ssh, cfg: Config{AdvertisedHost: "h"}}, "", "h", false, ""},
		{&Backend{dialNet: "tcp", dialAddr: "192.0.2.7:2375", cfg: Config{AdvertisedHost: "192.0.2.7"}}, "0.0.0.0", "192.0.2.7", false, ""},
		{&Backend{dialNet: "tcp", dialAddr: "192.0.2.7:2375"}, "192.0.2.8", "192.0.2.8", false, ""},
	} {
		host, dial, err := c.b.metaDBAddress(on(c.ip))
		if c.summaryIf != "" {
			var me *MetaDBError
			if !errors.As(err, &me) || me.Summary != c.summaryIf {
				t.Errorf("%+v on %q: got %v, want %q", c.b, c.ip, err, c.summaryIf)
			}
			continue
		}
		if err != nil || host != c.host || (dial != nil) != c.tunnel {
			t.Errorf("%+v on %q: got %q (tunnel %v), %v; want %q (tunnel %v)", c.b, c.ip, host, dial != nil, err, c.host, c.tunnel)
		}
	}
}

func TestMetaDBPausedIsAnError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	_, id := newMetaDB(t, e, name)
	ctx := ctxFor(t, metaDBTestLimit)
	// The cgroup freezer can fail on a loaded machine ("unable to
	// freeze"); it works when tried again.
	var err error
	for range 10 {
		if err = e.b.cli.ContainerPause(ctx, id); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("docker pause, tried 10 times: %v", err)
	}
	// Unpaused before removal: a paused container may refuse it.
	t.Cleanup(func() { _ = e.b.cli.ContainerUnpause(context.Background(), id) })
	err = e.b.CheckMetaDB(ctx, MetaDBConfig{Name: name})
	wantMetaDBError(t, err, "paused", "docker unpause")
	_, err = newEnv(t, nil).b.MetaDB(ctx, MetaDBConfig{Name: name})
	wantMetaDBError(t, err, "paused", "docker unpause")
	if c, _ := e.inspect(t, id); !c.State.Paused {
		t.Error("the paused container was unpaused")
	}
}

// A server that cannot start any more (here: its data directory claims
// another major version, as after a change of image) is an error with its
// last log lines, and the container stays as it is.
func TestMetaDBThatCannotStartIsAnError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	_, id := newMetaDB(t, e, name)
	c, _ := e.inspect(t, id)
	pgdata := envValue(c.Config.Env, "PGDATA")
	metaDBExec(t, e, id, "echo 99 >"+pgdata+"/PG_VERSION")
	if err := e.b.cli.ContainerStop(ctxFor(t, time.Minute), id, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := newEnv(t, nil).b.MetaDB(ctxFor(t, metaDBTestLimit), MetaDBConfig{Name: name})
	wantMetaDBError(t, err, "did not start", "database files are incompatible")
	t.Logf("%v", err)
	if ids := metaDBContainers(t, e, name); len(ids) != 1 || ids[0] != id {
		t.Errorf("containers %v, want only %s", ids, id)
	}
	if vols := metaDBVolumes(t, e, name); len(vols) != 1 {
		t.Errorf("volumes %v", vols)
	}
}

// A meta DB container removed by hand, its volume kept: the next run makes
// a container on that volume, which has the data and the password.
func TestMetaDBKeptVolumeIsReused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	tg, id := newMetaDB(t, e, name)
	sql(t, tg, "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('row')")
	ctx := ctxFor(t, time.Minute)
	if err := e.b.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	again, id2 := newMetaDB(t, e, name)
	if id2 == id || again.Password != tg.Password {
		t.Errorf("container %s (was %s), same password: %v", id2, id, again.Password == tg.Password)
	}
	if v := sql(t, again, "SELECT v FROM kept"); v != "row" {
		t.Errorf("read %q back, want the row kept in the volume", v)
	}
}

// The data directory's place in a kept volume wins over the image's: an
// image that puts PGDATA elsewhere must meet the old data, not start empty
// beside it.
func TestMetaDBVolumeSaysWhereTheDataIs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name := metaDBName(t, e)
	ctx := ctxFor(t, metaDBTestLimit)
	if _, err := e.b.cli.VolumeCreate(ctx, volume.CreateOptions{Name: name + "-data",
		Labels: map[string]string{LabelMetaDB: name, LabelMetaDBPGData: "olddata"}}); err != nil {
		t.Fatal(err)
	}
	_, id := newMetaDB(t, e, name)
	c, _ := e.inspect(t, id)
	if got := envValue(c.Config.Env, "PGDATA"); got != "/var/lib/postgresql/data/olddata" {
		t.Errorf("PGDATA %q, want the volume's olddata", got)
	}

	bad := metaDBName(t, e)
	if _, err := e.b.cli.VolumeCreate(ctx, volume.CreateOptions{Name: bad + "-data",
		Labels: map[string]string{LabelMetaDB: bad, LabelMetaDBPGData: "../etc"}}); err != nil {
		t.Fatal(err)
	}
	_, err := e.b.MetaDB(ctx, MetaDBConfig{Name: bad})
	wantMetaDBError(t, err, "broken", "is not a directory in it")
}
