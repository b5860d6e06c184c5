package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/backendtest"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Unit tests: no engine needed.

func TestDefaultAdvertisedHost(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "localhost",
		"unix:///var/run/docker.sock": "localhost",
		"tcp://10.1.2.3:2376":         "10.1.2.3",
		"tcp://docker.example.com":    "docker.example.com",
		"tcp://[2001:db8::1]:2375":    "2001:db8::1",
		"ssh://me@build-host:2222":    "build-host",
		"npipe:////./pipe/docker":     "localhost",
	} {
		if got := DefaultAdvertisedHost(in); got != want {
			t.Errorf("DefaultAdvertisedHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewIsLazy(t *testing.T) {
	// Nothing listens there: New must still succeed, as a plan must.
	b, err := New(Config{Host: "tcp://192.0.2.1:2375"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.cfg.AdvertisedHost != "192.0.2.1" || b.cfg.Image != "postgres:17" || b.cfg.BindAddress != "0.0.0.0" {
		t.Errorf("defaults not applied: %+v", b.cfg)
	}
	if b.Kind() != backend.KindDocker {
		t.Errorf("Kind() = %q", b.Kind())
	}
}

func TestRemovalRaced(t *testing.T) {
	for msg, want := range map[string]bool{
		// dockerd 20.10, container exiting while a forced removal kills it.
		"Error response from daemon: Could not kill running container 0123abcd, cannot remove - Container 0123abcd is not running":                 true,
		"Error response from daemon: removal of container 0123abcd is already in progress":                                                         true,
		"Error response from daemon: You cannot remove a running container 0123abcd. Stop the container before attempting removal or force remove": false,
		"Error response from daemon: Could not kill running container 0123abcd, cannot remove - permission denied":                                 false,
		"Error response from daemon: No such container: 0123abcd":                                                                                  false,
	} {
		if got := removalRaced(errors.New(msg)); got != want {
			t.Errorf("removalRaced(%q) = %v, want %v", msg, got, want)
		}
	}
}

func TestDialHost(t *testing.T) {
	for bind, want := range map[string]string{"0.0.0.0": "adv", "::": "adv", "127.0.0.1": "127.0.0.1", "::1": "::1"} {
		b := &Backend{cfg: Config{BindAddress: bind, AdvertisedHost: "adv"}}
		if got := b.dialHost(); got != want {
			t.Errorf("bind %q: dialHost() = %q, want %q", bind, got, want)
		}
	}
}

// Integration tests: a real engine and a real image.

type env struct {
	b     *Backend
	image string
}

func newEnv(t *testing.T, mod func(*Config)) env {
	t.Helper()
	host, img := os.Getenv("DOCKER_HOST"), os.Getenv("POSTGRAAS_TEST_IMAGE")
	if host == "" || img == "" {
		msg := "DOCKER_HOST and POSTGRAAS_TEST_IMAGE must be set (source /tmp/postgraas-testenv/env.sh after .ci/testenv.sh up)"
		if os.Getenv("TF_ACC") != "" || os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cfg := Config{Host: host, Image: img}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return env{b: b, image: img}
}

// spec makes a unique instance and arranges for whatever carries its name
// to be removed with its volumes when the test ends.
var (
	randHex    = backendtest.RandHex
	ctxFor     = backendtest.Ctx
	instanceOf = backendtest.InstanceOf
	connect    = backendtest.Connect
)

func (e env) spec(t *testing.T) backend.Spec {
	t.Helper()
	id, _ := rand.Int(rand.Reader, big.NewInt(1<<40))
	name := "pgtest-" + randHex(6)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// remove: gone is fine, and it rides out removal races.
		if err := e.b.remove(ctx, name); err != nil {
			t.Errorf("cleanup of %s: %v", name, err)
		}
	})
	return backend.Spec{
		InstanceID: id.Int64() + 1,
		Proof:      backend.Proof{ID: id.Int64() + 1, Value: randHex(16)},
		Name:       name,
		DBName:     "app db",
		Username:   "app_user",
		// Quotes and URI delimiters must survive the env contract and DSNs.
		Password: "pw'\"@/:" + randHex(4),
	}
}

func (e env) create(t *testing.T, spec backend.Spec) backend.Created {
	t.Helper()
	c, err := e.b.Create(ctxFor(t, 2*time.Minute), spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return c
}

func (e env) inspect(t *testing.T, ref string) (container.InspectResponse, bool) {
	t.Helper()
	c, err := e.b.cli.ContainerInspect(ctxFor(t, 30*time.Second), ref)
	if cerrdefs.IsNotFound(err) {
		return c, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, true
}

func (e env) status(t *testing.T, inst backend.Instance) backend.Status {
	t.Helper()
	st, err := e.b.Inspect(ctxFor(t, 30*time.Second), inst)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	return st
}

// made records what a Create made, read through the backend's hook before
// a failure removes it. Other processes may use the same engine, so leak
// checks look only at these objects, never at totals.
type made struct {
	mu         sync.Mutex
	containers []string
	volumes    []string
}

func (e env) watch(t *testing.T) *made {
	m := &made{}
	e.b.created = func(id string) {
		c, err := e.b.cli.ContainerInspect(context.Background(), id)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.containers = append(m.containers, id)
		if err != nil {
			t.Errorf("inspecting new container: %v", err)
			return
		}
		for _, mt := range c.Mounts {
			if mt.Type == "volume" {
				m.volumes = append(m.volumes, mt.Name)
			}
		}
	}
	return m
}

// assertNothingLeft checks a failed create left no container and no volume.
func (e env) assertNothingLeft(t *testing.T, name string, m *made) {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	if _, ok := e.inspect(t, name); ok {
		t.Errorf("container %s left behind", name)
	}
	list, err := e.b.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelName+"="+name))})
	if err != nil || len(list) > 0 {
		t.Errorf("labelled containers left: %d (%v)", len(list), err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range m.containers {
		if _, ok := e.inspect(t, id); ok {
			t.Errorf("container %s left behind", id)
		}
	}
	for _, v := range m.volumes {
		if _, err := e.b.cli.VolumeInspect(ctx, v); !cerrdefs.IsNotFound(err) {
			t.Errorf("volume %s left behind (%v)", v, err)
		}
	}
}

func TestCreateLoginLabelsAndPort(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	start := time.Now()
	c := e.create(t, spec)
	t.Logf("create to ready: %v", time.Since(start))

	if want := DefaultAdvertisedHost(os.Getenv("DOCKER_HOST")); c.Host != want {
		t.Errorf("Host = %q, want %q", c.Host, want)
	}
	if c.Username != spec.Username || c.Image != e.image || c.ContainerID == "" || c.Port == 0 {
		t.Errorf("Created = %+v", c)
	}

	// No retry: Create returned, so the instance takes logins now.
	ctx := ctxFor(t, time.Minute)
	conn, err := connect(ctx, c, spec.DBName, spec.Password)
	if err != nil {
		t.Fatalf("login right after Create: %v", err)
	}
	defer conn.Close(ctx)
	var got string
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ($1)", "hello"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&got); err != nil || got != "hello" {
		t.Fatalf("read back %q, %v", got, err)
	}

	ci, _ := e.inspect(t, c.ContainerID)
	wantLabels := map[string]string{
		LabelInstance:   "true",
		LabelInstanceID: strconv.FormatInt(spec.InstanceID, 10),
		LabelName:       spec.Name,
		LabelImage:      e.image,
	}
	for k, v := range wantLabels {
		if ci.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, ci.Config.Labels[k], v)
		}
	}
	if port, err := hostPort(ci); err != nil || port != c.Port {
		t.Errorf("published port %d (%v), Created.Port %d", port, err, c.Port)
	}
	if ci.HostConfig.RestartPolicy.Name != container.RestartPolicyUnlessStopped {
		t.Errorf("restart policy %q", ci.HostConfig.RestartPolicy.Name)
	}
	if st := e.status(t, instanceOf(spec, c)); !st.Exists || st.State != "running" {
		t.Errorf("Inspect = %+v", st)
	}
	found := false
	list, err := e.b.ListContainers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		found = found || s.ID == c.ContainerID
	}
	if !found {
		t.Error("ListContainers misses the new container")
	}
}

func TestCreateConflictLeavesForeignContainer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	ctx := ctxFor(t, 2*time.Minute)
	foreign, err := e.b.cli.ContainerCreate(ctx, &container.Config{
		Image: e.image,
		Env:   []string{"POSTGRES_PASSWORD=other"},
	}, nil, nil, nil, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.cli.ContainerStart(ctx, foreign.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}

	_, err = e.b.Create(ctx, spec)
	var ce *backend.ConflictError
	if !errors.As(err, &ce) || ce.Kind != "container" || ce.Name != spec.Name {
		t.Fatalf("want container ConflictError, got %v", err)
	}
	after, ok := e.inspect(t, spec.Name)
	if !ok || after.ID != foreign.ID || !after.State.Running {
		t.Fatalf("foreign container touched: exists=%v id=%s state=%+v", ok, after.ID, after.State)
	}
	if after.Config.Labels[LabelInstance] != "" {
		t.Error("foreign container got labels")
	}
	// Purge by name must not remove a container that is not ours either.
	if err := e.b.Purge(ctx, backend.Instance{ID: spec.InstanceID, Name: spec.Name}); err == nil {
		t.Error("Purge by name removed an unlabelled container")
	}
	if _, ok := e.inspect(t, foreign.ID); !ok {
		t.Fatal("Purge removed the foreign container")
	}
}

func TestConcurrentCreates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.spec(t), e.spec(t)
	same := b
	same.InstanceID++ // same name as b, another row

	var wg sync.WaitGroup
	specs := []backend.Spec{a, b, same}
	created := make([]backend.Created, len(specs))
	errs := make([]error, len(specs))
	ctx := ctxFor(t, 2*time.Minute)
	for i, s := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			created[i], errs[i] = e.b.Create(ctx, s)
		}()
	}
	wg.Wait()
	if errs[0] != nil {
		t.Fatalf("create a: %v", errs[0])
	}
	// Exactly one of the two with the same name wins; the loser must not
	// have removed the winner.
	var ce *backend.ConflictError
	var winner backend.Created
	switch {
	case errs[1] == nil && errors.As(errs[2], &ce):
		winner = created[1]
	case errs[2] == nil && errors.As(errs[1], &ce):
		winner = created[2]
	default:
		t.Fatalf("same-name creates: %v / %v", errs[1], errs[2])
	}
	for _, x := range []struct {
		c  backend.Created
		pw string
	}{{created[0], a.Password}, {winner, b.Password}} {
		conn, err := connect(ctx, x.c, a.DBName, x.pw)
		if err != nil {
			t.Fatalf("login to %s: %v", x.c.ContainerID[:12], err)
		}
		conn.Close(ctx)
	}
}

func TestCreateMissingImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	spec.Image = "postgraas-test/does-not-exist:" + randHex(4)
	m := e.watch(t)
	_, err := e.b.Create(ctxFor(t, 2*time.Minute), spec)
	if err == nil || !strings.Contains(err.Error(), "is not available locally and could not be pulled") || !strings.Contains(err.Error(), spec.Image) {
		t.Fatalf("want a clear image error, got %v", err)
	}
	t.Logf("error: %v", err)
	e.assertNothingLeft(t, spec.Name, m)
}

func TestCreateStartFails(t *testing.T) {
	t.Parallel()
	// 192.0.2.1 (TEST-NET-1) is on no interface here: publishing fails at start.
	e := newEnv(t, func(c *Config) { c.BindAddress = "192.0.2.1" })
	spec := e.spec(t)
	m := e.watch(t)
	_, err := e.b.Create(ctxFor(t, 2*time.Minute), spec)
	if err == nil || !strings.Contains(err.Error(), "did not become ready") {
		t.Fatalf("want a start failure, got %v", err)
	}
	if strings.Contains(err.Error(), spec.Password) {
		t.Error("error contains the password")
	}
	t.Logf("error: %v", err)
	e.assertNothingLeft(t, spec.Name, m)
	if len(m.volumes) == 0 {
		t.Error("saw no volume: the leak check proved nothing")
	}
}

func TestCreateTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	// The deadline hits before anything exists, while starting, and while
	// waiting for the first login. How long those take depends on the
	// machine: a fixed 2 s, meant for the wait, was beaten by a whole
	// create on a fast one. So the last deadline is half of a create
	// measured here, halved again (twice at most) while creates beat it.
	start := time.Now()
	e.create(t, e.spec(t))
	whole := time.Since(start)
	deadlines := []time.Duration{time.Millisecond, 300 * time.Millisecond, whole / 2}
	for k := 0; k < len(deadlines); k++ {
		d := deadlines[k]
		spec := e.spec(t)
		m := e.watch(t)
		_, err := e.b.Create(ctxFor(t, d), spec)
		if err == nil {
			if k == len(deadlines)-1 && len(deadlines) < 5 {
				t.Logf("%v: create succeeded (a whole one took %v here); trying %v", d, whole.Round(time.Millisecond), d/2)
				deadlines = append(deadlines, d/2)
				continue
			}
			t.Fatalf("%v: create succeeded", d)
		}
		t.Logf("%v: %v", d.Round(time.Millisecond), err)
		e.assertNothingLeft(t, spec.Name, m)
	}
}

func TestDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, 2*time.Minute)

	err := e.b.Delete(ctx, inst, backend.Auth{Password: "wrong"}, false)
	if !errors.Is(err, backend.ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if ci, ok := e.inspect(t, c.ContainerID); !ok || !ci.State.Running {
		t.Fatal("container gone or stopped after a refused delete")
	}

	other, err := connect(ctx, c, "postgres", spec.Password) // another database counts too
	if err != nil {
		t.Fatal(err)
	}
	err = e.b.Delete(ctx, inst, backend.Auth{Password: spec.Password}, false)
	var se *backend.SessionsError
	if !errors.As(err, &se) || se.Count != 1 || se.DBName != spec.DBName {
		t.Fatalf("want SessionsError for 1 session, got %v", err)
	}
	ci, ok := e.inspect(t, c.ContainerID)
	if !ok {
		t.Fatal("container removed despite sessions")
	}
	var vols []string
	for _, m := range ci.Mounts {
		if m.Type == "volume" {
			vols = append(vols, m.Name)
		}
	}
	if len(vols) == 0 {
		t.Fatal("the image declares no volume: the volume check would prove nothing")
	}

	if err := e.b.Delete(ctx, inst, backend.Auth{Password: spec.Password}, true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	other.Close(ctx)
	if _, ok := e.inspect(t, c.ContainerID); ok {
		t.Fatal("container still there")
	}
	for _, v := range vols {
		if _, err := e.b.cli.VolumeInspect(ctx, v); !cerrdefs.IsNotFound(err) {
			t.Errorf("volume %s: want not found, got %v", v, err)
		}
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: spec.Password}, false); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if st := e.status(t, inst); st.Exists {
		t.Errorf("Inspect after delete: %+v", st)
	}
	if err := e.b.Purge(ctx, inst); err != nil {
		t.Errorf("Purge of nothing: %v", err)
	}
}

func TestStoppedContainer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, 2*time.Minute)
	if err := e.b.cli.ContainerStop(ctx, c.ContainerID, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(t, inst); !st.Exists || st.State != "exited" {
		t.Fatalf("Inspect of stopped container: %+v", st)
	}

	// Delete starts it to check the password, and leaves it stopped when
	// the password is wrong.
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: "wrong"}, false); !errors.Is(err, backend.ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if st := e.status(t, inst); !st.Exists || st.State != "exited" {
		t.Fatalf("after refused delete: %+v", st)
	}
	// RotatePassword also starts it and stops it again.
	newPW := "rotated-" + randHex(4)
	if err := rotate(ctx, e.b, inst, spec.Password, newPW); err != nil {
		t.Fatalf("rotate on stopped container: %v", err)
	}
	if st := e.status(t, inst); st.State != "exited" {
		t.Fatalf("after rotate: %+v", st)
	}
	start := time.Now()
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: newPW}, false); err != nil {
		t.Fatalf("delete of stopped container: %v", err)
	}
	t.Logf("delete of a stopped container took %v", time.Since(start))
	if st := e.status(t, inst); st.Exists {
		t.Fatalf("after delete: %+v", st)
	}
}

func TestInspectAfterOutOfBandRemoval(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, time.Minute)
	if err := e.b.cli.ContainerRemove(ctx, c.ContainerID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(t, inst); st.Exists {
		t.Fatalf("Inspect: %+v", st)
	}
	inst.ContainerID = "" // by name too
	if st := e.status(t, inst); st.Exists {
		t.Fatalf("Inspect by name: %+v", st)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: spec.Password}, false); err != nil {
		t.Errorf("Delete of a removed container: %v", err)
	}
	if err := rotate(ctx, e.b, inst, spec.Password, "x"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("SetPassword of a removed container: %v", err)
	}
}

func TestRotatePassword(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, 2*time.Minute)

	if err := rotate(ctx, e.b, inst, "wrong", "x"); !errors.Is(err, backend.ErrWrongPassword) {
		t.Fatalf("rotate with wrong old password: %v", err)
	}
	newPW := "new'pw\\" + randHex(4)
	if err := rotate(ctx, e.b, inst, spec.Password, newPW); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if _, err := connect(ctx, c, spec.DBName, spec.Password); !pgsql.IsAuthFailure(err) {
		t.Errorf("old password: want auth failure, got %v", err)
	}
	conn, err := connect(ctx, c, spec.DBName, newPW)
	if err != nil {
		t.Fatalf("new password: %v", err)
	}
	conn.Close(ctx)
	// Nobody with engine access finds a password in the container's
	// config, before or after the rotation: it holds a bootstrap secret
	// that no longer logs in.
	e.assertNoSecretInConfig(t, c.ContainerID, spec.Password, newPW)
	// Purge (no auth) removes it by ID.
	if err := e.b.Purge(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.inspect(t, c.ContainerID); ok {
		t.Error("Purge left the container")
	}
}

// rotate sets a new password, logging in with the old one.
func rotate(ctx context.Context, b *Backend, inst backend.Instance, oldPW, newPW string) error {
	v, err := pgsql.ScramVerifier(newPW)
	if err != nil {
		return err
	}
	return b.SetPassword(ctx, inst, backend.Auth{Password: oldPW}, v)
}

// assertNoSecretInConfig fails when the container's configuration (what
// `docker inspect` shows) contains any of the secrets, and checks that the
// bootstrap password it does hold is useless.
func (e env) assertNoSecretInConfig(t *testing.T, id string, secrets ...string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	raw, err := e.b.cli.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if bytes.Contains(js, []byte(s)) {
			t.Errorf("docker inspect of %s shows a password", id)
		}
	}
	for _, kv := range raw.Config.Env {
		if pw, ok := strings.CutPrefix(kv, "POSTGRES_PASSWORD="); ok {
			port, _ := hostPort(raw)
			_, err := connect(ctx, backend.Created{Host: "127.0.0.1", Port: port}, "postgres", pw)
			if !pgsql.IsAuthFailure(err) {
				t.Errorf("the bootstrap secret in the container's config still logs in (%v)", err)
			}
		}
	}
}

// TestWriteOnlyVerifier: without a password (write-only mode), the verifier
// the provider stored is compared with the server's from inside the
// container, a rotation sets one from inside, and an out-of-band change
// makes destroy refuse.
func TestWriteOnlyVerifier(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	v, err := pgsql.ScramVerifier(spec.Password)
	if err != nil {
		t.Fatal(err)
	}
	spec.Verifier = v
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, 2*time.Minute)
	e.assertNoSecretInConfig(t, c.ContainerID, spec.Password)

	if err := e.b.Authenticate(ctx, inst, backend.Auth{Verifier: v}); err != nil {
		t.Fatalf("verifier auth: %v", err)
	}
	other, _ := pgsql.ScramVerifier(spec.Password)
	if err := e.b.Authenticate(ctx, inst, backend.Auth{Verifier: other}); !errors.Is(err, backend.ErrWrongPassword) {
		t.Fatalf("another verifier: %v", err)
	}
	newPW := "wo-" + randHex(6)
	nv, _ := pgsql.ScramVerifier(newPW)
	if err := e.b.SetPassword(ctx, inst, backend.Auth{Verifier: v}, nv); err != nil {
		t.Fatalf("set password from inside: %v", err)
	}
	conn, err := connect(ctx, c, spec.DBName, newPW)
	if err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	if _, err := conn.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD 'out of band'"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := e.b.Delete(ctx, inst, backend.Auth{Verifier: nv}, false); !errors.Is(err, backend.ErrWrongPassword) {
		t.Fatalf("delete after an out-of-band change: %v", err)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: "out of band"}, false); err != nil {
		t.Fatalf("delete with the accepted password: %v", err)
	}
}

func TestCollapseRepeats(t *testing.T) {
	logs := "init line\n" +
		"2026-11-26 18:32:39.282 UTC [78] FATAL:  database \"d\" does not exist\n" +
		"2026-11-26 18:32:39.319 UTC [79] FATAL:  database \"d\" does not exist\n" +
		"2026-11-26 18:32:39.353 UTC [80] FATAL:  database \"d\" does not exist\n" +
		"last line"
	want := "init line\n2026-11-26 18:32:39.282 UTC [78] FATAL:  database \"d\" does not exist\n  (the line above 3 times)\nlast line"
	if got := collapseRepeats(logs, 30); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := collapseRepeats(logs, 2); got != "  (the line above 3 times)\nlast line" {
		t.Errorf("cut to 2 lines: %q", got)
	}
}
