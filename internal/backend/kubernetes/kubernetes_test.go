package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/backendtest"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Unit tests: no cluster needed.

func TestCheckSpec(t *testing.T) {
	b := &Backend{}
	for name, ok := range map[string]bool{
		"app":                      true,
		"ci-1234":                  true,
		strings.Repeat("a", 52):    true,
		strings.Repeat("a", 53):    false,
		"App":                      false,
		"ci_1234":                  false,
		"-x":                       false,
		"x.y":                      false,
		"":                         true, // unknown at plan time
		"ends-with-":               false,
		"9starts-with-a-digit-too": true,
	} {
		err := b.CheckSpec(backend.Spec{Name: name})
		var se *backend.SpecError
		if ok != (err == nil) || err != nil && (!errors.As(err, &se) || se.Attribute != "name") {
			t.Errorf("CheckSpec(%q) = %v; want ok=%v, else a SpecError on name", name, err, ok)
		}
	}
}

// kubeconfig writes a kubeconfig for an API server at server.
func kubeconfig(t *testing.T, server, namespace string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config")
	ns := ""
	if namespace != "" {
		ns = "\n    namespace: " + namespace
	}
	cfg := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: ` + server + `
contexts:
- name: x
  context:
    cluster: c
    user: u` + ns + `
current-context: x
users:
- name: u
  user:
    token: abc
`
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewIsLazyWithDefaults(t *testing.T) {
	// Nothing listens there: New must still succeed, as a plan must.
	b, err := New(Config{Kubeconfig: kubeconfig(t, "https://192.0.2.1:6443", "")})
	if err != nil {
		t.Fatal(err)
	}
	if b.namespace != "default" || b.cfg.Image != "postgres:17" || b.cfg.ServiceType != ServiceClusterIP || b.storage.String() != "1Gi" {
		t.Errorf("defaults not applied: namespace %q, %+v, storage %s", b.namespace, b.cfg, b.storage.String())
	}
	if got := b.resources.Requests.Memory().String(); got != DefaultRequestsMemory {
		t.Errorf("memory request %s", got)
	}
	if _, ok := b.resources.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit by default")
	}
	b, err = New(Config{Kubeconfig: kubeconfig(t, "https://192.0.2.1:6443", "team-a"), LimitsMemory: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if b.namespace != "team-a" {
		t.Errorf("namespace %q, want the context's team-a", b.namespace)
	}
	if _, ok := b.resources.Limits[corev1.ResourceMemory]; ok {
		t.Error(`limits_memory "0" still sets a limit`)
	}
}

func TestNewRejects(t *testing.T) {
	kc := kubeconfig(t, "https://192.0.2.1:6443", "")
	for what, cfg := range map[string]Config{
		"service type":    {Kubeconfig: kc, ServiceType: "ExternalName"},
		"storage size":    {Kubeconfig: kc, StorageSize: "lots"},
		"memory request":  {Kubeconfig: kc, RequestsMemory: "1 GB"},
		"namespace":       {Kubeconfig: kc, Namespace: "Team_A"},
		"missing file":    {Kubeconfig: filepath.Join(t.TempDir(), "none")},
		"unknown context": {Kubeconfig: kc, Context: "nope"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", what, cfg)
		}
	}
}

// Integration tests: a real cluster (.ci/testenv.sh's kubernetes part).

type env struct {
	b *Backend
}

func newEnv(t *testing.T, mod func(*Config)) env {
	t.Helper()
	kc, img := os.Getenv("POSTGRAAS_TEST_KUBECONFIG"), os.Getenv("POSTGRAAS_TEST_KUBE_IMAGE")
	if kc == "" || img == "" {
		msg := "POSTGRAAS_TEST_KUBECONFIG and POSTGRAAS_TEST_KUBE_IMAGE must be set (source the env file of .ci/testenv.sh up)"
		if os.Getenv("TF_ACC") != "" || os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cfg := Config{Kubeconfig: kc, Image: img, StorageClass: os.Getenv("POSTGRAAS_TEST_KUBE_STORAGE_CLASS"), ReadyPollInterval: 50 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return env{b: b}
}

// spec makes a unique instance and arranges for whatever carries its name
// to be removed when the test ends.
var (
	randHex    = backendtest.RandHex
	ctxFor     = backendtest.Ctx
	instanceOf = backendtest.InstanceOf
	connect    = backendtest.Connect
)

func (e env) spec(t *testing.T) backend.Spec {
	t.Helper()
	id, _ := rand.Int(rand.Reader, big.NewInt(1<<40))
	name := "kt-" + randHex(5)
	t.Cleanup(func() { e.sweep(t, name) })
	return backend.Spec{
		InstanceID: id.Int64() + 1,
		Proof:      backend.Proof{ID: id.Int64() + 1, Value: randHex(32)},
		Name:       name,
		DBName:     "app db",
		Username:   "app_user",
		Password:   "pw'\"@/:" + randHex(4),
	}
}

// sweep deletes every object with the name, proven or not, and waits.
func (e env) sweep(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bg := metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}
	cs, ns := e.b.cs, e.b.namespace
	_ = cs.AppsV1().StatefulSets(ns).Delete(ctx, name, bg)
	_ = cs.CoreV1().Pods(ns).Delete(ctx, podName(name), bg)
	_ = cs.CoreV1().Services(ns).Delete(ctx, name, bg)
	_ = cs.CoreV1().Secrets(ns).Delete(ctx, secretName(name), bg)
	_ = cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, claimName(name), bg)
	for _, o := range e.b.objects(name) {
		for {
			if _, err := o.get(ctx); apierrors.IsNotFound(err) {
				break
			} else if ctx.Err() != nil {
				t.Errorf("sweep: %s %q still there", o.kind, o.name)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (e env) create(t *testing.T, spec backend.Spec) backend.Created {
	t.Helper()
	c, err := e.b.Create(ctxFor(t, 3*time.Minute), spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return c
}

// left lists the objects with the instance's names that still exist.
func (e env) left(t *testing.T, name string) []string {
	t.Helper()
	var left []string
	for _, o := range e.b.objects(name) {
		if _, err := o.get(ctxFor(t, time.Minute)); err == nil {
			left = append(left, o.kind+" "+o.name)
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	return left
}

func TestCreateReadyOwnedAndNoPasswordInSpec(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	start := time.Now()
	c := e.create(t, spec)
	t.Logf("ready after %s at %s:%d (sslmode %s)", time.Since(start).Round(time.Millisecond), c.Host, c.Port, c.SSLMode)
	ctx := ctxFor(t, 2*time.Minute)
	// Ready on return: the first login, no retry.
	conn, err := connect(ctx, c, spec.DBName, spec.Password)
	if err != nil {
		t.Fatalf("login right after Create: %v", err)
	}
	var super bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil || !super {
		t.Errorf("instance user superuser=%v (%v)", super, err)
	}
	conn.Close(ctx)

	sts, err := e.b.cs.AppsV1().StatefulSets(e.b.namespace).Get(ctx, spec.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sts.UID) != c.ContainerID || !proven(sts.ObjectMeta, spec.Proof) {
		t.Errorf("StatefulSet UID %s (recorded %s), labels %v, annotations %v", sts.UID, c.ContainerID, sts.Labels, sts.Annotations)
	}
	raw, _ := json.Marshal(sts)
	if strings.Contains(string(raw), spec.Password) {
		t.Error("the StatefulSet holds the instance password")
	}
	// The bootstrap Secret is gone; the Service and claim are owned.
	if _, err := e.b.cs.CoreV1().Secrets(e.b.namespace).Get(ctx, secretName(spec.Name), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("bootstrap Secret still there after ready (%v)", err)
	}
	svc, err := e.b.cs.CoreV1().Services(e.b.namespace).Get(ctx, spec.Name, metav1.GetOptions{})
	if err != nil || len(svc.OwnerReferences) != 1 || svc.OwnerReferences[0].UID != sts.UID || !proven(svc.ObjectMeta, spec.Proof) {
		t.Errorf("Service %v: owners %v, annotations %v", err, svc.OwnerReferences, svc.Annotations)
	}
	pvc, err := e.b.cs.CoreV1().PersistentVolumeClaims(e.b.namespace).Get(ctx, claimName(spec.Name), metav1.GetOptions{})
	if err != nil || len(pvc.OwnerReferences) != 1 || pvc.OwnerReferences[0].UID != sts.UID || !proven(pvc.ObjectMeta, spec.Proof) {
		t.Errorf("claim %v: owners %v, annotations %v", err, pvc.OwnerReferences, pvc.Annotations)
	}
	st, err := e.b.Inspect(ctx, instanceOf(spec, c))
	if err != nil || !st.Exists || st.State != "running" {
		t.Errorf("Inspect = %+v, %v", st, err)
	}
	if err := e.b.Delete(ctx, instanceOf(spec, c), backend.Auth{Password: spec.Password}, false); err != nil {
		t.Fatal(err)
	}
	if left := e.left(t, spec.Name); len(left) > 0 {
		t.Errorf("left after Delete: %v", left)
	}
}

// An object with the instance's name that is not the instance's is a
// conflict on create, and neither Delete nor Purge touches it.
func TestForeignStatefulSetIsLeftAlone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	ctx := ctxFor(t, 3*time.Minute)
	foreign := e.b.statefulSet(spec, "not-pulled.invalid/x:1")
	foreign.Labels = map[string]string{"app": "theirs"}
	foreign.Annotations = nil
	foreign.Spec.Replicas = ptr.To[int32](0)
	made, err := e.b.cs.AppsV1().StatefulSets(e.b.namespace).Create(ctx, foreign, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.b.Create(ctx, spec)
	var ce *backend.ConflictError
	if !errors.As(err, &ce) || ce.Kind != "StatefulSet" {
		t.Fatalf("Create over a foreign StatefulSet: %v; want a conflict", err)
	}
	inst := backend.Instance{ID: spec.InstanceID, Name: spec.Name, DBName: spec.DBName, Username: spec.Username, Proof: spec.Proof}
	if err := e.b.Purge(ctx, inst); err != nil {
		t.Errorf("Purge: %v", err)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: spec.Password}, true); err != nil {
		t.Errorf("Delete: %v", err)
	}
	// A forged proof on someone else's object does not help either once
	// the row records the UID of the object the create made.
	inst.ContainerID = "00000000-0000-0000-0000-000000000000"
	if st, err := e.b.Inspect(ctx, inst); err != nil || st.Exists || len(st.Foreign) != 1 {
		t.Errorf("Inspect = %+v, %v; want one foreign object", st, err)
	}
	got, err := e.b.cs.AppsV1().StatefulSets(e.b.namespace).Get(ctx, spec.Name, metav1.GetOptions{})
	if err != nil || got.UID != made.UID || got.DeletionTimestamp != nil {
		t.Fatalf("foreign StatefulSet after Create, Purge and Delete: %v, %+v", err, got.ObjectMeta)
	}
	if _, err := e.b.cs.CoreV1().Secrets(e.b.namespace).Get(ctx, secretName(spec.Name), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the conflicting create left its Secret (%v)", err)
	}
}

func TestDeleteWithSessionsAndRotate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, 3*time.Minute)

	// Rotation with the password, then with the verifier only (exec).
	next := "next'pw" + randHex(3)
	v, _ := pgsql.ScramVerifier(next)
	if err := e.b.SetPassword(ctx, inst, backend.Auth{Password: spec.Password}, v); err != nil {
		t.Fatalf("SetPassword: %v", err)
	}
	if err := e.b.Authenticate(ctx, inst, backend.Auth{Password: spec.Password}); !errors.Is(err, backend.ErrWrongPassword) {
		t.Errorf("old password after rotation: %v; want ErrWrongPassword", err)
	}
	wo := "wo-" + randHex(4)
	wov, _ := pgsql.ScramVerifier(wo)
	if err := e.b.SetPassword(ctx, inst, backend.Auth{Verifier: v}, wov); err != nil {
		t.Fatalf("SetPassword by verifier: %v", err)
	}
	if err := e.b.Authenticate(ctx, inst, backend.Auth{Verifier: v}); !errors.Is(err, backend.ErrWrongPassword) {
		t.Errorf("stale verifier: %v; want ErrWrongPassword", err)
	}
	conn, err := connect(ctx, c, spec.DBName, wo)
	if err != nil {
		t.Fatalf("login with the password set by verifier: %v", err)
	}
	defer conn.Close(ctx)

	// A temporary login works and goes.
	l, err := e.b.OpenTempLogin(ctx, inst, time.Minute)
	if err != nil {
		t.Fatalf("OpenTempLogin: %v", err)
	}
	tc, err := pgsql.Target{Host: l.Host, Port: l.Port, Database: l.DBName, User: l.Username, Password: l.Password,
		SSLMode: "disable", ConnectTimeout: 5 * time.Second}.ConnectOnce(ctx)
	if err != nil {
		t.Fatalf("temporary login: %v", err)
	}
	tc.Close(ctx)
	if _, err := e.b.RenewTempLogin(ctx, inst, l.Role, 2*time.Minute); err != nil {
		t.Errorf("RenewTempLogin: %v", err)
	}
	if err := e.b.CloseTempLogin(ctx, inst, l.Role); err != nil {
		t.Errorf("CloseTempLogin: %v", err)
	}

	err = e.b.Delete(ctx, inst, backend.Auth{Password: wo}, false)
	var se *backend.SessionsError
	if !errors.As(err, &se) || se.Count != 1 {
		t.Fatalf("Delete with a session: %v; want a SessionsError of 1", err)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("the session did not survive the refused delete: %v", err)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: "wrong"}, true); !errors.Is(err, backend.ErrWrongPassword) {
		t.Fatalf("Delete with a wrong password: %v", err)
	}
	start := time.Now()
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: wo}, true); err != nil {
		t.Fatalf("forced Delete: %v", err)
	}
	t.Logf("forced delete took %s", time.Since(start).Round(time.Millisecond))
	if left := e.left(t, spec.Name); len(left) > 0 {
		t.Errorf("left after Delete: %v", left)
	}
	if err := e.b.Delete(ctx, inst, backend.Auth{Password: wo}, true); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

// A StatefulSet deleted out of band is drift; Purge clears what carries
// the proof (the claim the controller leaves), and the name is free again.
func TestDriftAndPurge(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	inst := instanceOf(spec, c)
	ctx := ctxFor(t, 3*time.Minute)
	orphan := metav1.DeletePropagationOrphan
	if err := e.b.cs.AppsV1().StatefulSets(e.b.namespace).Delete(ctx, spec.Name, metav1.DeleteOptions{PropagationPolicy: &orphan}); err != nil {
		t.Fatal(err)
	}
	for {
		st, err := e.b.Inspect(ctx, inst)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Exists {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := e.b.Purge(ctx, inst); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if left := e.left(t, spec.Name); len(left) > 0 {
		t.Errorf("left after Purge: %v", left)
	}
	spec.Proof.Value = randHex(32)
	c2 := e.create(t, spec)
	if c2.ContainerID == c.ContainerID {
		t.Error("the new StatefulSet has the old UID")
	}
}

// Two creates at once on the NodePort service type, each ready on return
// at the node's address. Five at once, through Terraform, is
// TestAccInstance_kubernetesFiveAtOnce's; each pod costs the 2-core CI
// machine an initdb, so this one keeps to the concurrency itself.
func TestConcurrentNodePort(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.ServiceType = ServiceNodePort })
	var wg sync.WaitGroup
	errs := make([]error, 2)
	start := time.Now()
	for n := range len(errs) {
		spec := e.spec(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctxFor(t, 4*time.Minute)
			c, err := e.b.Create(ctx, spec)
			if err == nil {
				err = e.loginAfterCreate(t, ctx, spec, c)
				if c.Host != os.Getenv("POSTGRAAS_TEST_KUBE_NODE_IP") && os.Getenv("POSTGRAAS_TEST_KUBE_NODE_IP") != "" {
					t.Errorf("NodePort instance at %s:%d; want the node's IP", c.Host, c.Port)
				}
			}
			errs[n] = err
		}()
	}
	wg.Wait()
	t.Logf("%d creates at once took %s", len(errs), time.Since(start).Round(time.Millisecond))
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// loginAfterCreate logs in right after a create. On a CI machine at load
// 39, one NodePort login was refused ("connection refused": kube-proxy had
// no endpoint) moments after the create's own login through the same port
// had worked; the cause is not known yet. Such a refusal is logged with the
// pod's state and retried for 15 s, so that the next run shows what the
// cluster was doing; the other tests keep the strict check.
func (e env) loginAfterCreate(t *testing.T, ctx context.Context, spec backend.Spec, c backend.Created) error {
	conn, err := connect(ctx, c, spec.DBName, spec.Password)
	if err == nil {
		return conn.Close(ctx)
	}
	state := "unknown"
	if sts, serr := e.b.cs.AppsV1().StatefulSets(e.b.namespace).Get(ctx, spec.Name, metav1.GetOptions{}); serr == nil {
		state = e.b.podState(ctx, sts)
	}
	t.Logf("%s: login right after create refused (%v); pod %s; retrying", spec.Name, err, state)
	refused := time.Now()
	for time.Since(refused) < 15*time.Second {
		time.Sleep(200 * time.Millisecond)
		if conn, err = connect(ctx, c, spec.DBName, spec.Password); err == nil {
			t.Logf("%s: login worked %s after the refusal", spec.Name, time.Since(refused).Round(time.Millisecond))
			return conn.Close(ctx)
		}
	}
	return err
}

// A pod that cannot start fails the create at once with what Kubernetes
// says, and leaves nothing.
func TestCreateMissingImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	spec.Image = "postgraas-test.invalid/none:1"
	_, err := e.b.Create(ctxFor(t, 3*time.Minute), spec)
	var se *backend.StartError
	if !errors.As(err, &se) {
		t.Fatalf("Create with a missing image: %v; want a StartError", err)
	}
	t.Logf("error: %v", err)
	if left := e.left(t, spec.Name); len(left) > 0 {
		t.Errorf("left after the failed create: %v", left)
	}
}

// The answer to the ALTER ROLE that sets the verifier can be lost (an
// attempt that stopped waiting while the server, loaded, committed it): the
// next attempt's bootstrap login is then refused, and the create must ask
// the server rather than fail (seen in CI). Here the instance's verifier is
// already set, as after such a lost answer, and the bootstrap secret is
// refused.
func TestPersonaliseAfterALostAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	c := e.create(t, spec)
	ctx := ctxFor(t, 2*time.Minute)
	verifier, err := pgsql.ScramVerifier(spec.Password)
	if err != nil {
		t.Fatal(err)
	}
	// The create stored a verifier of its own salt: store this one.
	if err := e.b.SetPassword(ctx, instanceOf(spec, c), backend.Auth{Password: spec.Password}, verifier); err != nil {
		t.Fatal(err)
	}
	none := selfhosted.Personalisation{}
	if err := e.b.personaliseAttempt(ctx, spec, "bootstrap-gone", verifier, &none)(ctx, c.Host, c.Port); !pgsql.IsAuthFailure(err) {
		t.Fatalf("an attempt that never sent its ALTER ROLE: %v; want the refusal", err)
	}
	sent := selfhosted.Personalisation{Sent: true}
	if err := e.b.personaliseAttempt(ctx, spec, "bootstrap-gone", verifier, &sent)(ctx, c.Host, c.Port); err != nil {
		t.Fatalf("an attempt after a lost answer: %v; want success", err)
	}
	if sent.SSL != "off" {
		t.Errorf("ssl setting %q after a lost answer, want off", sent.SSL)
	}
	other, _ := pgsql.ScramVerifier("not the password")
	if err := e.b.personaliseAttempt(ctx, spec, "bootstrap-gone", other, &sent)(ctx, c.Host, c.Port); !pgsql.IsAuthFailure(err) {
		t.Fatalf("an attempt whose verifier is not the server's: %v; want the refusal", err)
	}
}

// barePod creates the pod of spec's StatefulSet without the StatefulSet,
// with data from the given source and a scheduler no one runs, so that what
// a test writes into its status stays there.
func (e env) barePod(t *testing.T, ctx context.Context, spec backend.Spec, data corev1.VolumeSource) *corev1.Pod {
	t.Helper()
	sts := e.b.statefulSet(spec, e.b.cfg.Image)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: podName(spec.Name), Labels: sts.Spec.Template.Labels}, Spec: sts.Spec.Template.Spec}
	pod.Spec.SchedulerName = "postgraas-test-nobody"
	pod.Spec.Volumes = []corev1.Volume{{Name: volumeName, VolumeSource: data}}
	pod, err := e.b.cs.CoreV1().Pods(e.b.namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// A pod the scheduler found without its claim is not a failed create while
// the claim exists: the scheduler can meet the StatefulSet's pod before its
// cache has the claim the controller made first, and tries again (seen in
// CI as "persistentvolumeclaim ... not found", which failed a create).
// Only a claim the API does not have either is a failure. The scheduler
// re-reads at once on a real cluster, so the stale answer is written here
// by hand, on a bare pod of the StatefulSet's shape that names a scheduler
// no one runs (so that nothing overwrites it).
func TestUnschedulableUntilTheClaimExists(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	ctx := ctxFor(t, 2*time.Minute)
	pods := e.b.cs.CoreV1().Pods(e.b.namespace)
	sts := e.b.statefulSet(spec, e.b.cfg.Image)
	pod := e.barePod(t, ctx, spec, corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName(spec.Name)}})
	pod.Status.Conditions = []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: `0/1 nodes are available: persistentvolumeclaim "` + claimName(spec.Name) + `" not found. not found`,
	}}
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var se *backend.StartError
	if err := e.b.podFailed(ctx, spec.Name); !errors.As(err, &se) {
		t.Fatalf("podFailed with no claim = %v; want a StartError", err)
	}

	claim := sts.Spec.VolumeClaimTemplates[0]
	claim.Name = claimName(spec.Name)
	if _, err := e.b.cs.CoreV1().PersistentVolumeClaims(e.b.namespace).Create(ctx, &claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.b.podFailed(ctx, spec.Name); err != nil {
		t.Fatalf("podFailed with the claim made and the scheduler's answer stale = %v; want nil", err)
	}
}

// A container the kubelet could not configure because its secret cache
// lagged is not a failed create: "failed to sync secret cache" (seen in CI
// for a bootstrap Secret made right after one of the same name was
// deleted) and a bootstrap Secret the kubelet has not seen yet but the API
// has both mend themselves. A Secret the API does not have either, and any
// other configuration error, are failures. The kubelet's answers are
// written by hand on a bare pod no scheduler takes, as above.
func TestSecretCacheLagIsWaitedOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	spec := e.spec(t)
	ctx := ctxFor(t, 2*time.Minute)
	pods := e.b.cs.CoreV1().Pods(e.b.namespace)
	pod := e.barePod(t, ctx, spec, corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}})
	kubelet := func(message string) error {
		t.Helper()
		var err error
		pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: containerName, Image: e.b.cfg.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: message}}}}
		if pod, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return e.b.podFailed(ctx, spec.Name)
	}
	notFound := `secret "` + secretName(spec.Name) + `" not found`
	var se *backend.StartError
	if err := kubelet("failed to sync secret cache: timed out waiting for the condition"); err != nil {
		t.Errorf("podFailed with the secret cache out of sync = %v; want nil", err)
	}
	if err := kubelet(notFound); !errors.As(err, &se) {
		t.Errorf("podFailed with no bootstrap Secret anywhere = %v; want a StartError", err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName(spec.Name)}, StringData: map[string]string{"password": "x"}}
	if _, err := e.b.cs.CoreV1().Secrets(e.b.namespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubelet(notFound); err != nil {
		t.Errorf("podFailed with the bootstrap Secret made and the kubelet's answer stale = %v; want nil", err)
	}
	if err := kubelet(`couldn't find key password in Secret default/other`); !errors.As(err, &se) {
		t.Errorf("podFailed with another configuration error = %v; want a StartError", err)
	}
	// Past the grace, a kubelet that still cannot sync has another problem.
	old := pod.DeepCopy()
	old.CreationTimestamp = metav1.NewTime(time.Now().Add(-secretSyncGrace - time.Minute))
	if lag, err := e.b.secretCacheLag(ctx, old, spec.Name, "failed to sync secret cache: timed out waiting for the condition"); lag || err != nil {
		t.Errorf("secretCacheLag past the grace = %v, %v; want false", lag, err)
	}
}
